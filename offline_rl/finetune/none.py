"""No online fine-tuning: the run ends after offline RL."""

from __future__ import annotations


class NoFinetuning:
    def check(self, algo) -> None:
        """Nothing to check."""

    def phases(self, algo, replay, data, cfg) -> list:
        return []
