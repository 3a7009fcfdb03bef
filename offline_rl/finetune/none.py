"""No online fine-tuning: the run ends after offline RL."""

from __future__ import annotations


class NoFinetuning:
    from_run = None
    agent = None

    def check(self, algo) -> None:
        """Nothing to check."""

    def phases(self, algo, replay, data, seed: int) -> list:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""
