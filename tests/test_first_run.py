"""`make run`'s glue (offline_rl/first_run.py) on a tiny dataset: it runs launch.py with the
paper's method and prints the final score next to the behaviour policy's, the MLflow run and
where to look; `make mlflow-ui`'s link opens the runs table."""

from __future__ import annotations

import pytest

from offline_rl import first_run
from offline_rl.tracking_ui import runs_link

pytestmark = pytest.mark.slow


def test_user_overrides_replace_the_defaults():
    merged = first_run.merged(["updates=200", "seed=1"])
    assert "updates=200" in merged and f"updates={first_run.UPDATES}" not in merged
    assert merged[:3] == ["algo=td3_bc", "pretrain=ac", "dataset=hopper-medium-local"]
    assert merged[-1] == "seed=1"


def test_make_run_prints_scores_run_and_where_to_look(tmp_path, minari_root, capsys):
    code = first_run.main(["dataset=minari", "dataset.dataset_id=tests/hopper/random-v0",
                           "network=small", "updates=200", "eval.every=100", "eval.episodes=2",
                           "pretrain.steps=100", "pretrain.until=null", "progress=false",
                           "threads=1", "batch_size=64", f"tracker.store_dir={tmp_path}",
                           f"hydra.run.dir={tmp_path}/hydra"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("make run: TD3+BC with Algorithm 1 pre-training")
    assert "Finished: td3_bc-ac-tests-hopper-random-v0-s0 (FINISHED)" in out
    assert "tests/hopper/random-v0 (digest " in out
    score_line = next(l for l in out.splitlines() if "final normalised score" in l)
    behaviour_line = next(l for l in out.splitlines() if "behaviour policy" in l)
    assert "at update 300" in score_line  # 100 pre-training + 200 offline RL updates
    float(score_line.split()[3]), float(behaviour_line.split()[2])
    assert "make mlflow-ui" in out and "?workflowType=machine_learning" in out
    assert "python -m analysis curves --filter \"attributes.run_id = '" in out

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = MlflowClient(uri).get_experiment_by_name("offline_rl")
    assert runs_link(uri, "127.0.0.1", 5000) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
        f"?workflowType=machine_learning")
    assert runs_link(f"sqlite:///{tmp_path / 'absent.db'}", "127.0.0.1", 5000).endswith(
        "#/experiments?workflowType=machine_learning")


def test_ctrl_c_stops_make_run_in_one_line_and_the_run_continues_later(tmp_path, minari_root):
    """Ctrl-C in a terminal signals the whole process group: launch.py checkpoints and stops,
    make run's glue says so in one line (no traceback) and exits 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    checkpoints = tmp_path / "checkpoints"
    args = ["dataset=minari", "dataset.dataset_id=tests/hopper/random-v0", "network=small",
            "updates=1000000", "eval.every=100000", "eval.episodes=1", "pretrain=none",
            "checkpoint.every=50",
            "compile=eager", "progress=false", "threads=1", "batch_size=64",
            f"checkpoint.dir={checkpoints}", f"tracker.store_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/hydra"]
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root)}
    child = subprocess.Popen([sys.executable, "-m", "offline_rl.first_run", *args], env=env,
                             cwd=first_run.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True,
                             # as in a terminal: a shell's background job (CI) starts with SIGINT
                             # ignored, and Python then installs no KeyboardInterrupt handler
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    # the update loop runs (and handles signals) once its first periodic checkpoint exists
    while not list(checkpoints.rglob("step-*.pt")) and child.poll() is None:
        assert time.monotonic() < deadline, "launch.py did not start its update loop"
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C does
    out, err = child.communicate(timeout=240)
    assert child.returncode == 130, err
    assert "Traceback" not in err, err
    assert "interrupted (Ctrl-C): the run kept its checkpoint" in err  # launch.py
    assert err.strip().splitlines()[-1] == ("make run: interrupted; the same command continues the "
                                            "run (from its checkpoint, when it had written one)")
    assert list(checkpoints.rglob("step-*.pt"))  # kept for the same command to continue


def test_the_plan_says_what_the_overrides_make_of_it(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = first_run.plan([])
    assert "100,000 offline RL updates on hopper-medium-local, evaluated every 10,000 updates " \
           "(10 episodes). About 10 minutes" in default
    small = first_run.plan(["updates=300", "eval.episodes=2"])
    assert "then 300 offline RL updates" in small and "(2 episodes)" in small
    assert "10 minutes" not in small and small.endswith("overrides: updates=300 eval.episodes=2")
    assert "EDAC with pretrain=soft" in first_run.plan(["algo=edac", "pretrain=soft"])


def test_the_ui_serves_the_store_the_runs_use_and_artifacts_live_beside_it(tmp_path, monkeypatch,
                                                                          capsys):
    from offline_rl import tracking_ui
    from offline_rl.tracker import MlflowTracker

    served = []
    monkeypatch.setattr(tracking_ui.os, "execv", lambda exe, argv: served.append(argv))
    monkeypatch.setenv("OFFLINE_RL_ROOT", str(tmp_path))  # what main() would default, kept to the test
    store = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")  # as the README tells users
    assert tracking_ui.main([]) == 0
    argv = served[-1]
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{store}"
    assert MlflowTracker(tracking_uri=f"sqlite:///{store}").artifact_location == \
        (tmp_path / "elsewhere" / "artifacts").as_uri()  # not ./mlruns of the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_ui.main(["5001", f"tracker.store_dir={tmp_path / 'st'}"]) == 0
    argv = served[-1]
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'st' / 'mlflow.db'}"
    assert argv[argv.index("--port") + 1] == "5001"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_ui.main([]) == 0 and len(served) == 2  # a server is its own UI: nothing started
    assert "the runs are on the MLflow server http://tracking.example:5000: open " \
           "http://tracking.example:5000/#/experiments" in capsys.readouterr().out
