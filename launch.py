"""Hydra entry point: ``python launch.py algo=edac pretrain=none dataset=hopper-medium-local``.

``python launch.py --help`` lists the config groups and their options; ``--cfg job`` prints the
composed config. A user's mistake -- an unknown key or group option (also through ``+key=``), a bad
config value, a missing or malformed dataset, a run already running in another process, a tracking
server that does not answer, a NaN loss -- ends the run with one message (exit status 2), not a
traceback. ``HYDRA_FULL_ERROR=1`` shows Hydra's full report of a command-line mistake instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

# the checkout's root: where the default MLflow store lives, whatever the working directory
os.environ.setdefault("OFFLINE_RL_ROOT", str(Path(__file__).resolve().parent))

import offline_rl.config  # noqa: E402,F401  (registers the config resolvers)
from offline_rl.errors import OfflineRLError  # noqa: E402

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from offline_rl.job import JobFailed, job_context
    from offline_rl.training.run import train

    try:
        result = train(cfg)
    except OfflineRLError as exc:
        job = job_context()
        if job.sweep is not None:  # a sweep's job: its own line; the sweep goes on (JobFailed)
            print(f"error: [{job.label()}] {exc}", file=sys.stderr, flush=True)
            raise JobFailed(str(exc)) from None
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    return result.get("eval/normalized_score_mean")


def run() -> None:
    """``main`` with Hydra's errors raised to us (HYDRA_FULL_ERROR=1 makes Hydra raise instead of
    printing them) and reported as one line, exit status 2."""
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    full_report = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        offline_rl.config.check_overrides(get_args_parser().parse_args().overrides, CONF)
        main()
    except (HydraException, OmegaConfBaseException, OfflineRLError) as exc:
        if full_report:
            raise
        message = (str(exc) if isinstance(exc, OfflineRLError)
                   else offline_rl.config.hydra_error_message(exc))
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: a run that had begun wrote its checkpoint first
        print("interrupted (Ctrl-C): a run that had started kept its checkpoint; the same command "
              "continues it", file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    run()
