"""A hostile user's probe (issue 24), one test per finding: a killed store creation, one failing
job in a sweep, a batch size the kernel would have enforced, malformed datasets, values validation
let through, the store's disk, a generation killed after publishing, signals in quick succession,
runs left RUNNING. Real processes and real signals where the finding is about them."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import forked
from conftest import (ROOT, SMALL_RUN, launch_command, launch_env, make_random_dataset, run_launch,
                      run_sweep, search_runs)

BASE = [*SMALL_RUN, "threads=1", "batch_size=32", "eval.episodes=1"]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# ----- 1. a killed store creation ---------------------------------------------------------------


def _half_made_store(path: Path) -> None:
    """What killing MLflow in the middle of creating a sqlite store leaves: the migration
    started (some tables, a ``_alembic_tmp_`` copy) and never finished."""
    with sqlite3.connect(path) as db:
        db.execute("create table experiments (experiment_id integer primary key, name text)")
        db.execute("create table runs (run_uuid text primary key)")
        db.execute("create table _alembic_tmp_tags (key text, value text)")


@pytest.mark.slow
def test_a_store_killed_while_it_was_created_is_never_left_half_made(tmp_path, minari_root):
    store = tmp_path / "st"
    proc = forked.start(launch_command([*BASE, "updates=2000"], store), ROOT, launch_env(minari_root),
                        stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(store.glob("mlflow.db.creating-*")) and not (store / "mlflow.db").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of building the store
        proc.wait(timeout=30)
    finally:
        forked.close(proc)
    assert not (store / "mlflow.db").exists() or sqlite3.connect(store / "mlflow.db").execute(
        "select count(*) from alembic_version").fetchone()
    again = run_launch([*BASE, "updates=20"], store, minari_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(search_runs(store)) == 1


@pytest.mark.slow  # starts a process
def test_a_half_made_store_without_runs_is_rebuilt_and_one_with_runs_is_refused(tmp_path, minari_root):
    store = tmp_path / "st"
    store.mkdir()
    _half_made_store(store / "mlflow.db")
    result = run_launch([*BASE, "updates=20"], store, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was left half-made" in result.stderr and list(store.glob("mlflow.db.broken-*"))
    assert len(search_runs(store)) == 1

    other = tmp_path / "other"
    other.mkdir()
    _half_made_store(other / "mlflow.db")
    with sqlite3.connect(other / "mlflow.db") as db:
        db.execute("insert into runs values ('r1')")
    refused = run_launch([*BASE, "updates=20"], other, minari_root)
    assert refused.returncode == 2
    assert "holds 1 run(s) but its schema migration was interrupted" in one_line(refused.stderr)


# ----- 3. batch sizes the memory check must see -------------------------------------------------


@pytest.mark.slow  # starts a process
def test_a_finetuning_batch_size_that_cannot_fit_is_refused_before_anything_is_allocated(tmp_path, minari_root):
    result = run_launch([*BASE, "finetune=td3", "finetune.env_steps=50000000",
                         "finetune.batch_size=100000000", "updates=50"], tmp_path, minari_root)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "update steps on batches of 100,000,000" in line and "finetune.batch_size" in line
    # what an ordinary run needs passes the same check
    from offline_rl.limits import update_bytes_per_sample
    from test_resume import composed

    cfg = composed(tmp_path, "algo=edac", "algo.num_critics=50")
    assert 256 * update_bytes_per_sample(cfg) < 1e9  # EDAC N=50, 3x256: well under 1 GB


# ----- 4. malformed datasets ------------------------------------------------------------------


def _stderr():
    import contextlib
    import io

    buffer = io.StringIO()

    @contextlib.contextmanager
    def capture():
        with contextlib.redirect_stderr(buffer):
            yield buffer
    return capture()


def _episodes_dataset(dataset_id: str, episodes: list[dict]):
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, seed=i, observations=ep["observations"], actions=ep["actions"],
                             rewards=ep["rewards"], terminations=ep["terminations"],
                             truncations=ep["truncations"]) for i, ep in enumerate(episodes)]
    return minari.create_dataset_from_buffers(dataset_id, buffers, env="Hopper-v5", eval_env="Hopper-v5",
                                              algorithm_name="tests", author="tests",
                                              author_email="tests@example.org", description="test",
                                              ref_min_score=-20.0, ref_max_score=300.0)


def _episode(steps: int, observations: int | None = None) -> dict:
    rng = np.random.default_rng(steps)
    n = steps + 1 if observations is None else observations
    return {"observations": rng.normal(size=(n, 11)), "actions": rng.uniform(-1, 1, (steps, 3)).astype(np.float32),
            "rewards": rng.normal(size=steps), "terminations": np.zeros(steps, bool),
            "truncations": np.r_[np.zeros(max(steps - 1, 0), bool), [True]][:steps]}


def test_malformed_datasets_are_named_and_short_episodes_handled(minari_root):
    from offline_rl.dataset.minari_source import read_minari_dataset
    from offline_rl.errors import DatasetError

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _episodes_dataset("tests/hopper/short-obs-v0", [_episode(20), _episode(348, observations=348)])
        _episodes_dataset("tests/hopper/empty-v0", [])
        _episodes_dataset("tests/hopper/tiny-v0", [_episode(1), _episode(5)])
    with pytest.raises(DatasetError, match=r"episode 1 has 348 observations for its 348 rewards"):
        read_minari_dataset("tests/hopper/short-obs-v0")
    with pytest.raises(DatasetError, match=r"is empty: it holds no transitions"):
        read_minari_dataset("tests/hopper/empty-v0")
    # length 1: one whole transition (s, a, r, s'), kept like any other episode
    data = read_minari_dataset("tests/hopper/tiny-v0")
    assert len(data) == 1 + 5 and data.timeouts.sum() == 2
    # length 0 (a reset, no step; Minari's writer refuses them, other sources may not): no
    # transition to learn from, left out with a warning
    from offline_rl.dataset.episodes import flatten_episodes

    with _stderr() as err:
        data = flatten_episodes([_episode(0), _episode(3)], dataset_id="d")
    assert len(data) == 3 and "left out 1 episode(s) of length 0" in err.getvalue()


@pytest.mark.slow  # starts a process
def test_a_malformed_dataset_stops_launch_in_one_line(tmp_path, minari_root):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _episodes_dataset("tests/hopper/short-obs-launch-v0", [_episode(30, observations=30)])
    result = run_launch([*[a for a in BASE if not a.startswith("dataset.dataset_id")],
                         "dataset.dataset_id=tests/hopper/short-obs-launch-v0", "updates=10"],
                        tmp_path, minari_root)
    assert result.returncode == 2
    assert "episode 0 has 30 observations for its 30 rewards" in one_line(result.stderr)


# ----- 5. values that validation let through ------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("seed=99999999999", "seed=99999999999 is not allowed: expected an integer in [0, 4294967295]"),
    ("algo.alpha=inf", "algo.alpha=inf is not allowed: expected a finite number >= 0.0"),
    ("algo.actor_lr=inf", "algo.actor_lr=inf is not allowed: expected a finite number > 0"),
    ("eval=5", "eval=5 is not allowed: eval is a group of settings (eval.episodes, eval.every, "
               "eval.seed); set one of them, e.g. eval.episodes=5"),
])
def test_values_validation_let_through_are_refused_in_one_line(override, message):
    from offline_rl.config import validate
    from offline_rl.errors import ConfigError
    from test_resume import composed

    with pytest.raises(ConfigError) as error:
        validate(composed(Path("/tmp"), override))
    assert message in str(error.value) and "has no validation rule" not in str(error.value)


# ----- 2. one failing job in a sweep ----------------------------------------------------------


@pytest.mark.slow
def test_one_failing_job_does_not_bring_down_the_sweep(tmp_path, minari_root, new_store):
    """Local launcher, two jobs at a time: jobs that fail at run time (non-finite losses) and at
    dataset load end as FAILED child runs carrying their line; the healthy jobs beside them run
    to their end; the parent lists the failures; exit status 2; the same command again runs only
    what did not finish."""
    new_store(tmp_path)
    args = ["-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", "updates=300", "eval.every=0",
            "algo.critic_lr=0.0003,1e30",
            "dataset.dataset_id=tests/hopper/random-v0,tests/hopper/no-such-dataset-v0",
            *[a for a in BASE if not a.startswith("dataset.dataset_id")]]
    result = run_sweep(args, tmp_path, minari_root)
    assert result.returncode == 2, result.stderr[-3000:]
    runs = search_runs(tmp_path)
    parent = runs[runs["tags.sweep.role"] == "parent"].iloc[0]
    children = runs[runs["tags.sweep.role"] != "parent"]
    status = {(r["tags.algo.critic_lr"], r["tags.dataset.dataset_id"]): r["status"]
              for _, r in children.iterrows()}
    assert status == {("0.0003", "tests/hopper/random-v0"): "FINISHED",
                      ("1e+30", "tests/hopper/random-v0"): "FAILED",
                      ("0.0003", "tests/hopper/no-such-dataset-v0"): "FAILED",
                      ("1e+30", "tests/hopper/no-such-dataset-v0"): "FAILED"}
    failed = children[children["status"] == "FAILED"]
    assert all("non-finite" in e or "no-such-dataset" in e for e in failed["tags.error"])
    assert parent["status"] == "FAILED" and parent["tags.failed_jobs"].count("\n") == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert any(line.startswith("error: [algo.critic_lr=1e+30,dataset.dataset_id=tests/hopper/random-v0]")
               and "non-finite" in line for line in lines)
    assert lines[-1].startswith("error: sweep ") and "3 of 4 job(s) failed, the others ran" in lines[-1]
    assert "Traceback" not in result.stderr

    again = run_sweep(args, tmp_path, minari_root)
    assert again.returncode == 2
    assert "already finished: algo.critic_lr=0.0003,dataset.dataset_id=tests/hopper/random-v0" in again.stderr
    children = search_runs(tmp_path)
    children = children[children["tags.sweep.role"] != "parent"]
    # the finished job was not run again; the two that failed at dataset load updated their
    # FAILED child; the one that failed at run time made a second attempt (a new run: an attempt's
    # metrics are its own), also FAILED
    assert (children["status"] == "FINISHED").sum() == 1 and len(children) == 5


# ----- 6. the store's disk ----------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, size)``: a folder on a tmpfs of that size (root only: skipped elsewhere)."""
    import shutil

    mounted = []

    def mount(name: str, size: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                capture_output=True).returncode:
            pytest.skip("needs root to mount a tmpfs (a real full / read-only disk)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_a_full_store_disk_spools_and_the_same_command_delivers_once_there_is_room(tmp_path, minari_root, tmpfs):
    from mlflow.tracking import MlflowClient

    store = tmpfs("store", "1200k")  # a fresh store takes ~950 kB: the run's metrics fill it
    args = [*BASE, "updates=2000", "log_every=2", "eval.every=500", f"checkpoint.dir={tmp_path / 'ck'}",
            "tracker.wait_for_server_s=1", "tracker.retry_every_s=1"]
    result = run_launch(args, store, minari_root)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "does not take writes" in result.stderr and "training continues" in result.stderr
    line = one_line(result.stderr)
    assert "kept in" in line and "tracking-spool.jsonl" in line and "run the same command again" in line
    spool = list((tmp_path / "ck").glob("*/tracking-spool.jsonl"))
    assert len(spool) == 1 and spool[0].stat().st_size > 0
    subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)  # room again
    again = run_launch(args, store, minari_root)
    assert again.returncode == 0, again.stderr[-3000:]
    # the spool (the final status among its records) is delivered first; then the run has finished
    assert "delivered" in again.stderr and "already finished" in again.stderr
    run = search_runs(store).iloc[0]
    assert run["status"] == "FINISHED"
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(run["run_id"], "offline_rl/critic_loss")]
    assert steps == list(range(2, 2001, 2))  # every logged step, once: nothing lost
    assert client.list_artifacts(run["run_id"])  # the final checkpoint and config too


@pytest.mark.slow  # starts a process
def test_a_read_only_store_stops_before_training_in_one_line(tmp_path, minari_root, tmpfs, new_store):
    store = tmpfs("ro", "20m")
    new_store(store)
    subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
    command = [sys.executable, str(ROOT / "launch.py"), f"tracker.store_dir={store}",
               f"hydra.run.dir={tmp_path / 'hydra'}", *BASE, "updates=20", f"checkpoint.dir={tmp_path / 'ck'}"]
    result = forked.run(command, ROOT, launch_env(minari_root), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_line(result.stderr)
    assert "does not take writes" in line and "read" in line.lower()


# ----- 7. a generation killed right after publishing ---------------------------------------------


@pytest.mark.slow
def test_a_generation_killed_after_publishing_finishes_its_bookkeeping_on_the_same_command(tmp_path, monkeypatch):
    """The process dies between the rename of the datasets into place and its bookkeeping
    (simulated: its final status call raises SystemExit, as a kill at that point leaves it). The
    same command then marks the behaviour run FINISHED, removes the checkpoints and succeeds."""
    from mlflow.tracking import MlflowClient

    from offline_rl.generate.__main__ import main
    from offline_rl.tracker import MlflowTracker
    from test_generate import TINY_ARGS

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    real_finish = MlflowTracker.finish

    def die_at_the_end(self, status="FINISHED", error=None):
        if status == "FINISHED":
            raise SystemExit(137)
        return real_finish(self, status, error)

    monkeypatch.setattr(MlflowTracker, "finish", die_at_the_end)
    with pytest.raises(SystemExit):
        main(TINY_ARGS)
    monkeypatch.setattr(MlflowTracker, "finish", real_finish)
    assert list((tmp_path / "minari").glob(".generate/*/step-*.pt"))  # left behind
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("datasets").experiment_id])
    assert [r.info.status for r in runs] == ["RUNNING"]

    assert main(TINY_ARGS) == 0  # the same command: no "already exist"
    runs = client.search_runs([client.get_experiment_by_name("datasets").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] and "local/hopper/medium-v0" in runs[0].data.tags["datasets"]
    assert not list((tmp_path / "minari").glob(".generate/*/*.pt"))


# ----- 8. signals, the small cases --------------------------------------------------------------


def _launch_and_wait_for_the_loop(args, tmp_path, minari_root):
    checkpoints = tmp_path / "ck"
    command = [sys.executable, str(ROOT / "launch.py"), f"tracker.store_dir={tmp_path}",
               f"hydra.run.dir={tmp_path}/hydra", f"checkpoint.dir={checkpoints}", *args]
    child = subprocess.Popen(command, cwd=ROOT, env=launch_env(minari_root), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not list(checkpoints.rglob("step-*.pt")):  # the update loop runs once this exists
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()[-2000:]
        time.sleep(0.05)
    return child, checkpoints


@pytest.mark.slow
def test_two_ctrl_c_within_10_ms_still_checkpoint_and_end_the_run(tmp_path, minari_root, new_store):
    new_store(tmp_path)
    child, checkpoints = _launch_and_wait_for_the_loop(
        [*BASE, "updates=1000000", "checkpoint.every=50", "eval.every=100000",
         "compile=eager"],  # 1M updates would compile (compile=auto): ~20 s of Inductor, not tested here
        tmp_path, minari_root)
    os.kill(child.pid, signal.SIGINT)
    time.sleep(0.005)
    os.kill(child.pid, signal.SIGINT)  # the same press, twice
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "interrupted (Ctrl-C): the run kept its checkpoint" in err
    kept = int(re.search(r"interrupted at update step (\d+): \w+; checkpoint written to ", err).group(1))
    steps = sorted(int(p.stem.split("-")[1]) for p in checkpoints.rglob("step-*.pt"))
    assert steps[-1] == kept  # the signal's own checkpoint, the newest one
    run = search_runs(tmp_path).iloc[0]
    assert run["status"] == "KILLED"  # not left RUNNING


@pytest.mark.slow
def test_ctrl_c_during_start_up_says_nothing_was_trained(tmp_path, minari_root):
    # 10^6 updates: the run cannot end before the Ctrl-C comes. With 100 it once did, in a
    # fresh-clone CI of 2026-12-05 (exit 0, empty stderr: a finished run writes to stdout only),
    # the test process having woken late from its sleep on the loaded cores
    command = [sys.executable, str(ROOT / "launch.py"), f"tracker.store_dir={tmp_path}",
               f"hydra.run.dir={tmp_path}/hydra", *BASE, "updates=1000000"]
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=ROOT, env=launch_env(minari_root), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.5)  # importing torch, composing the config: before any run exists
    os.kill(child.pid, signal.SIGINT)
    late = time.monotonic() - started > 4  # woken late: the run may have begun by now
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, (child.returncode, out[-1500:], err[-1500:])
    last = err.strip().splitlines()[-1]
    if late and last != NOTHING_RECORDED:  # then Ctrl-C stopped the run itself, and says so
        assert "interrupted" in last and "the same command" in last, last
        return
    assert last == NOTHING_RECORDED


NOTHING_RECORDED = ("interrupted (Ctrl-C) before the run started: nothing was trained or recorded "
                    "for it; the same command starts it")


def test_sigterm_on_a_full_checkpoint_disk_does_not_claim_a_checkpoint(tmp_path, minari_root, new_store,
                                                                      monkeypatch, capfd):
    from conftest import interrupt_at_sample
    from offline_rl.errors import DiskFullError
    from offline_rl.training.checkpoint import CheckpointDir
    from offline_rl.run import train
    from test_resume import composed

    real_save, calls = CheckpointDir.save, {"n": 0}

    def save(self, state, step):
        calls["n"] += 1
        if calls["n"] > 1:  # the first periodic checkpoint fits, then the disk is full
            raise DiskFullError(f"no space left for checkpoints in {self.path}")
        return real_save(self, state, step)

    monkeypatch.setattr(CheckpointDir, "save", save)
    interrupt_at_sample(monkeypatch, 35)
    with pytest.raises(SystemExit) as stopped:
        train(composed(new_store(tmp_path), "updates=100", "checkpoint.every=20", "eval.episodes=1",
                       "threads=1", "batch_size=32"))
    assert stopped.value.code == 128 + signal.SIGTERM
    err = capfd.readouterr().err
    assert "checkpoint written" not in err
    assert ("no checkpoint could be written for it (see the warning above): the same command "
            "continues from its checkpoint of update step 20") in err


# ----- 9. runs left RUNNING ---------------------------------------------------------------------


def _kill_once_the_run_exists(command, tmp_path, minari_root) -> str:
    """Start ``command``, kill -9 it once its MLflow run exists and its checkpoint folder names it
    in run.json (the dataset is described and logged next, then 300 updates with evaluations:
    seconds, no checkpoint yet); the run id left RUNNING."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    known = set(search_runs(tmp_path)["run_id"]) if client.get_experiment_by_name("offline_rl") else set()
    named = {p.read_text() for p in (tmp_path / "ck").glob("*/run.json")}
    child = forked.start(command, ROOT, launch_env(minari_root), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (client.get_experiment_by_name("offline_rl")
                   and set(search_runs(tmp_path)["run_id"]) - known
                   and {p.read_text() for p in (tmp_path / "ck").glob("*/run.json")} - named):
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()[-2000:]
            time.sleep(0.1)
        child.kill()
        child.wait(timeout=60)
    finally:
        forked.close(child)
    runs = search_runs(tmp_path).set_index("run_id")
    (ghost,) = set(runs.index) - known
    assert runs.loc[ghost, "status"] == "RUNNING"
    return ghost


@pytest.mark.slow
def test_runs_killed_before_their_first_checkpoint_are_continued_or_marked_killed(
        tmp_path, minari_root, new_store):
    """kill -9 leaves its MLflow run RUNNING (nothing runs to end it). The same command continues
    that run (its checkpoint folder names it); one that starts afresh (resume=never) marks the
    ghost KILLED, saying why, instead of leaving it RUNNING forever beside the new run."""
    new_store(tmp_path)
    args = [*BASE, "updates=300", "checkpoint.every=1000000", f"checkpoint.dir={tmp_path / 'ck'}"]
    command = [sys.executable, str(ROOT / "launch.py"), f"tracker.store_dir={tmp_path}",
               f"hydra.run.dir={tmp_path}/hydra", *args]
    ghost = _kill_once_the_run_exists(command, tmp_path, minari_root)
    again = run_launch(args, tmp_path, minari_root)
    assert again.returncode == 0, again.stderr[-2000:]
    runs = search_runs(tmp_path)
    assert runs[["run_id", "status"]].values.tolist() == [[ghost, "FINISHED"]]  # the same run

    ghost = _kill_once_the_run_exists([*command, "rerun=true"], tmp_path, minari_root)
    fresh = run_launch([*args, "rerun=true", "resume=never"], tmp_path, minari_root)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert f"marked the MLflow run {ghost} KILLED" in fresh.stderr
    runs = search_runs(tmp_path).set_index("run_id")
    assert runs.loc[ghost, "status"] == "KILLED" and "kill -9" in runs.loc[ghost, "tags.killed"]
    assert sorted(runs["status"]) == ["FINISHED", "FINISHED", "KILLED"]
