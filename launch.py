"""Hydra entry point: ``python launch.py algo=edac pretrain=none dataset=hopper-medium-local``.

``python launch.py --help`` lists the config groups and their options; ``--cfg job`` prints the
composed config. A user's mistake -- an unknown key or group option (also through ``+key=``), a bad
config value, a missing or malformed dataset, a run already running in another process, a tracking
server that does not answer, a NaN loss -- ends the run with one message (exit status 2), not a
traceback. ``HYDRA_FULL_ERROR=1`` shows Hydra's full report of a command-line mistake instead.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

NOTHING_RECORDED = ("interrupted (Ctrl-C) before the run started: nothing was trained or recorded "
                    "for it; the same command starts it")


def _interrupted_while_importing(signum, frame):
    print(NOTHING_RECORDED, file=sys.stderr, flush=True)
    raise SystemExit(130)


if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    # Ctrl-C while the imports below load torch (seconds): one line too (a background job that
    # ignores SIGINT keeps ignoring it)
    signal.signal(signal.SIGINT, _interrupted_while_importing)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

# the checkout's root: where the default MLflow store lives, whatever the working directory
os.environ.setdefault("OFFLINE_RL_ROOT", str(Path(__file__).resolve().parent))

import offline_rl.config  # noqa: E402,F401  (registers the config resolvers)
from offline_rl.errors import OfflineRLError  # noqa: E402
from offline_rl.metric_names import SCORE  # noqa: E402

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from offline_rl.job import JobFailed, job_context
    from offline_rl.run import train

    try:
        result = train(cfg)
    except OfflineRLError as exc:
        job = job_context()
        if job.sweep is not None:  # a sweep's job: its own line; the sweep goes on (JobFailed)
            print(f"error: [{job.label()}] {exc}", file=sys.stderr, flush=True)
            raise JobFailed(str(exc)) from None
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    return result.get(SCORE)


def run() -> None:
    """``main`` with Hydra's errors raised to us (HYDRA_FULL_ERROR=1 makes Hydra raise instead of
    printing them) and reported as one line, exit status 2."""
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # from here: KeyboardInterrupt below
        signal.signal(signal.SIGINT, signal.default_int_handler)
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
    except KeyboardInterrupt as exc:  # Ctrl-C: what was kept (offline_rl.errors.Stopped)
        from offline_rl.tracker import runs_started

        print(getattr(exc, "message", None) or (NOTHING_RECORDED if not runs_started() else
              "interrupted (Ctrl-C) outside a run's update loop: what finished is kept; the same "
              "command continues (finished runs are skipped, the others resume from their "
              "checkpoints)"), file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    run()
