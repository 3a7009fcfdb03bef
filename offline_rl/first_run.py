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

from offline_rl.job import split_override
from offline_rl.metric_names import SCORE
from offline_rl.report import summary_lines
from offline_rl.tracking_ui import compose_config, tracker_uri

ROOT = Path(__file__).resolve().parents[1]
BEHAVIOUR = "dataset/behaviour_score"
# ~10 minutes on this 2-core CPU once the datasets exist (README "Two commands"): pre-training
# stops at its plateau (well under its 50k cap), then UPDATES compiled TD3+BC updates
UPDATES = 100_000
EVAL_EVERY, EPISODES = 10_000, 10
# summary=false: launch.py's own end-of-run lines; this prints them (offline_rl.report) and more
OVERRIDES = ["algo=td3_bc", "pretrain=ac", "dataset=hopper-medium-local", f"updates={UPDATES}",
             f"eval.every={EVAL_EVERY}", f"eval.episodes={EPISODES}", "summary=false"]


def plan(extra: list[str]) -> str:
    """What will run, with the user's overrides applied (``ARGS="updates=300"`` says 300). A
    mistake in them is launch.py's to report (one line): the plan then only lists them."""
    overrides = merged(extra)
    try:
        cfg = compose_config(overrides)
        int(cfg.updates), int(cfg.eval.every), int(cfg.eval.episodes)
    except Exception:  # noqa: BLE001 -- launch.py reports it next, in one line
        return f"make run: the paper's method with your overrides: {' '.join(extra)}"
    algo, pretrain = choice(overrides, "algo"), choice(overrides, "pretrain")
    what = ("TD3+BC with Algorithm 1 pre-training (pretrain=ac: BC actor + Monte-Carlo critic until "
            "their losses plateau, at most 50k updates)" if (algo, pretrain) == ("td3_bc", "ac") else
            f"{cfg.algo._target_.rsplit('.', 1)[-1]} with pretrain={pretrain}")
    evaluated = ("not evaluated" if not cfg.eval.episodes else
                 f"evaluated every {int(cfg.eval.every):,} updates ({int(cfg.eval.episodes)} episodes)"
                 if cfg.eval.every else f"evaluated at the end ({int(cfg.eval.episodes)} episodes)")
    dataset = cfg.dataset.get("dataset_id") or choice(overrides, "dataset")
    return (f"make run: {what}, then {int(cfg.updates):,} offline RL updates on {dataset}, "
            f"{evaluated}."
            + (" About 10 minutes on a 2-core CPU once the dataset exists." if not extra else
               f"\n  overrides: {' '.join(extra)}"))


def choice(overrides: list[str], group: str) -> str:
    return dict(split_override(o) for o in overrides).get(group, "?")


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


def summary(client, run, uri: str, episodes: int) -> str:
    """The run's end-of-run lines (offline_rl.report, as launch.py prints them), read back from
    the store, then what to look at next."""
    history = client.get_metric_history(run.info.run_id, SCORE)
    datasets = [d.dataset for d in run.inputs.dataset_inputs]
    lines = summary_lines(
        name=run.info.run_name, status=run.info.status,
        dataset=f"{datasets[0].name} (digest {datasets[0].digest})" if datasets else "?",
        score=run.data.metrics.get(SCORE), step=max((m.step for m in history), default=None),
        episodes=episodes, behaviour=run.data.metrics.get(BEHAVIOUR), run_id=run.info.run_id,
        tracking_uri=uri, experiment_id=run.info.experiment_id)
    return "\n".join([
        *lines, "", "Look at it:",
        f"  .venv/bin/python -m analysis curves --filter \"attributes.run_id = "
        f"'{run.info.run_id}'\" --out results/first_run",
        "  make test          the test suite; README.md for sweeps and the paper's statistics"])


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
        print("make run: interrupted; the same command continues the run (from its checkpoint, when "
              "it had written one)", file=sys.stderr, flush=True)
        return INTERRUPTED[code]
    if code != 0:
        return code
    cfg = compose_config(overrides)
    uri = tracker_uri(cfg)
    client, run = latest_run(uri, since_ms)
    if run is None:
        print(f"no MLflow run started in {uri} (tracker=none?)", file=sys.stderr)
        return 0
    print(summary(client, run, uri, int(cfg.eval.episodes)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a signal that arrived after launch.py had ended: said above
        sys.exit(130)
