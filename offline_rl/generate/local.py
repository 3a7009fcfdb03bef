"""The ``_target_`` of the ``*-local`` dataset configs: this project's own datasets, generated on
first use (``offline_rl.generate.datasets``) and read like any Minari dataset."""

from __future__ import annotations

from typing import Any, Mapping

from offline_rl.dataset.episodes import OfflineData
from offline_rl.dataset.levels import LEVELS
from offline_rl.dataset.minari_source import read_minari_dataset
from offline_rl.errors import ConfigError
from offline_rl.generate.datasets import ensure_local_dataset
from offline_rl.options import Rule, declares, one_of, text


@declares({"env_id": text("a Gymnasium environment id"), "level": one_of(*LEVELS),
           "generator": Rule(lambda v: isinstance(v, dict), "a mapping of generator settings")})
def load_local(env_id: str, level: str, generator: Mapping[str, Any] | None = None) -> OfflineData:
    """``local/<env>/<level>-v0``, generated (all levels, one behaviour run) if missing.

    ``generator`` overrides the ``GeneratorConfig`` defaults of the environment (e.g.
    ``{"env_steps": 50000}``); an existing dataset generated with other settings raises
    DatasetError saying what differs.
    """
    overrides = {str(k): v for k, v in (generator or {}).items()}
    if "env_id" in overrides:
        raise ConfigError("the dataset config's env_id chooses the environment; remove env_id from "
                          "its generator settings")
    dataset_id = ensure_local_dataset(env_id, level, **overrides)
    return read_minari_dataset(dataset_id)
