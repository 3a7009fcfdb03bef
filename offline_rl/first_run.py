"""``make run``: the paper's method on the local Hopper medium dataset, then where to look.

TD3+BC with Algorithm 1 pre-training (``pretrain=ac``: BC actor and Monte-Carlo critic until
the supervised losses plateau, at most 50k updates) and ``UPDATES`` offline RL updates, run
through ``launch.py`` like any run, into this checkout's MLflow store. At the end it prints the
final normalised score next to the behaviour policy's (the dataset's own episodes on the same
scale), the MLflow run, and the commands to look at it. Extra arguments are passed to launch.py
as overrides (``make run ARGS="seed=1"``, ``python -m offline_rl.first_run seed=1``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORE = "eval/normalized_score_mean"
BEHAVIOUR = "dataset/behaviour_score"
# ~10 minutes on this 2-core CPU once the datasets exist (README "Two commands"): pre-training
# stops at its plateau (well under its 50k cap), then UPDATES compiled TD3+BC updates
UPDATES = 100_000
OVERRIDES = ["algo=td3_bc", "pretrain=ac", "dataset=hopper-medium-local", f"updates={UPDATES}",
             "eval.every=10000"]


def plan(extra: list[str]) -> str:
    return ("make run: TD3+BC with Algorithm 1 pre-training (pretrain=ac: BC actor + Monte-Carlo "
            "critic until their losses plateau, at most 50k updates), then "
            f"{UPDATES:,} offline RL updates on hopper-medium-local, evaluated every 10k updates "
            "(10 episodes). About 10 minutes on a 2-core CPU once the dataset exists."
            + (f"\n  overrides: {' '.join(extra)}" if extra else ""))


def tracker_uri(overrides: list[str]) -> str:
    """The tracking URI launch.py uses with these overrides (the same tracker config)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return instantiate(cfg.tracker).tracking_uri


def latest_run(uri: str, since_ms: int):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("offline_rl")
    if experiment is None:
        return client, None
    runs = client.search_runs([experiment.experiment_id],
                              f"attributes.start_time >= {since_ms}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return client, (runs[0] if runs else None)


def summary(client, run, uri: str) -> str:
    score = run.data.metrics.get(SCORE)
    behaviour = run.data.metrics.get(BEHAVIOUR)
    history = client.get_metric_history(run.info.run_id, SCORE)
    step = max((m.step for m in history), default=None)
    datasets = [d.dataset for d in run.inputs.dataset_inputs]
    dataset = f"{datasets[0].name} (digest {datasets[0].digest})" if datasets else "?"
    url = (f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/"
           f"{run.info.run_id}?workflowType=machine_learning")
    fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        "",
        f"Finished: {run.info.run_name} ({run.info.status}), dataset {dataset}",
        f"  final normalised score   {fmt(score):>6}   (10 evaluation episodes at update "
        f"{step:,})" if step is not None else f"  final normalised score   {fmt(score):>6}",
        f"  behaviour policy         {fmt(behaviour):>6}   (the dataset's own episodes, same scale: "
        f"0 = random, 100 = the expert)",
        f"  MLflow run {run.info.run_id} in {uri}",
        "",
        "Look at it:",
        f"  make mlflow-ui     then open {url}",
        f"  .venv/bin/python -m analysis curves --filter \"attributes.run_id = "
        f"'{run.info.run_id}'\" --out results/first_run",
        "  make test          the test suite; README.md for sweeps and the paper's statistics",
    ]
    return "\n".join(lines)


def merged(extra: list[str]) -> list[str]:
    """OVERRIDES, less the keys the user sets (Hydra rejects a key given twice), then ``extra``."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in extra if "=" in o}
    return [o for o in OVERRIDES if o.split("=", 1)[0] not in keys] + extra


# launch.py's exit status when a signal stopped it after its checkpoint (128 + N; -N: killed
# by the signal before it could handle it) -> make run's
INTERRUPTED = {130: 130, -signal.SIGINT: 130, 143: 143, -signal.SIGTERM: 143}


def stopped(child: subprocess.Popen) -> int:
    """Ctrl-C: the terminal sent SIGINT to launch.py too, which writes a checkpoint at the end of
    its current update and stops. A child that did not get it (only this process was signalled)
    is asked with SIGTERM, which does the same. Returns launch.py's exit status."""
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:  # a second Ctrl-C reaches launch.py itself: it stops at once
            continue


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    overrides = merged(extra)
    print(plan(extra), flush=True)
    os.environ.setdefault("OFFLINE_RL_ROOT", str(ROOT))
    since_ms = int(time.time() * 1000)
    child = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *overrides], cwd=ROOT)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        code = stopped(child)
    if code in INTERRUPTED:  # also when only launch.py saw the signal, or saw it first
        print("make run: interrupted; its checkpoint is kept, and the same command continues the run",
              file=sys.stderr, flush=True)
        return INTERRUPTED[code]
    if code != 0:
        return code
    uri = tracker_uri(overrides)
    client, run = latest_run(uri, since_ms)
    if run is None:
        print(f"no MLflow run started in {uri} (tracker=none?)", file=sys.stderr)
        return 0
    print(summary(client, run, uri))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a signal that arrived after launch.py had ended: said above
        sys.exit(130)
