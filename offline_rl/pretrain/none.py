"""No pre-training: offline RL from randomly initialised networks (the paper's baseline)."""

from __future__ import annotations


class NoPretraining:
    bootstrap_timeouts = False

    def check(self, algo) -> None:
        """Every algorithm can train from scratch."""

    def phases(self, algo, replay, batch_size: int) -> list:
        return []
