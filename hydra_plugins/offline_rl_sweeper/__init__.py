"""Hydra plugin: the ``offline_rl`` sweeper (conf/hydra/sweeper/offline_rl.yaml, the default of
conf/config.yaml). Hydra only instantiates plugins from the ``hydra_plugins`` namespace package, so
the class lives here; its behaviour is ``offline_rl.sweep.SweepLogic``. This folder is found
because launch.py's folder (the checkout) is on ``sys.path``; SLURM jobs get it via PYTHONPATH
(the slurm launcher preset's setup lines). Composing a config (single runs, tests) needs only the
YAML, not this module."""

from typing import Dict, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from offline_rl.sweep import SweepLogic


class OfflineRLSweeper(SweepLogic, BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 name: Optional[str] = None, skip_incompatible: bool = False,
                 dry_run: bool = False, progress_every_s: float = 60.0) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.name, self.skip_incompatible, self.dry_run = name, bool(skip_incompatible), bool(dry_run)
        self.progress_every_s = float(progress_every_s)

