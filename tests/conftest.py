"""Shared fixtures: small real Minari datasets made inside the tests, a temporary MLflow store,
and a helper that runs launch.py as a researcher would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the tests in parallel workers (pytest-xdist), one per core: one thread each,
    # for the workers and the processes they start (OpenMP threads spin: two 2-thread torch
    # processes on 2 cores each run far slower than at half speed); set before numpy and torch load
    for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_threads] = "1"

import gymnasium as gym
import numpy as np
import pytest

import forked

ROOT = Path(__file__).resolve().parents[1]

# ----- the fast tier stays fast: what a test does decides its marks ------------------------------
# `make test-fast` (-m "not slow and not compiles") is the edit-test loop. A test that starts a
# process and is not marked slow, or compiles an update step (torch.compile: Inductor, seconds per
# graph) and is not marked compiles, fails, naming the mark it needs.
_popen_init = subprocess.Popen.__init__


def _counted_popen_init(self, *args, **kwargs):
    _popen_init(self, *args, **kwargs)  # a command that cannot start raises: nothing started
    frame, exempt = sys._getframe(1), False
    while frame is not None and not exempt:
        # Inductor's compiler processes are compiling; a module's first import may start one
        # (glfw checks its library with `python -c`, platform.platform() runs `uname -p`): which
        # test imports it first depends on the order the tests ran in
        exempt = (frame.f_globals.get("__name__", "").startswith("torch.")
                  or frame.f_code.co_filename.startswith("<frozen importlib"))
        frame = frame.f_back
    forked.started += not exempt


subprocess.Popen.__init__ = _counted_popen_init


def _graphs_compiled() -> int:
    if "torch._dynamo" not in sys.modules:  # nothing imported Dynamo: nothing was compiled
        return 0
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    started, compiled = forked.started, _graphs_compiled()
    result = yield  # a test that failed raises here: its own failure is the one to read
    marks = {mark.name for mark in item.iter_markers()}
    missing = [mark for mark, did in (("slow", forked.started > started),
                                      ("compiles", _graphs_compiled() > compiled))
               if did and mark not in marks]
    if missing:
        what = {"slow": "starts a process", "compiles": "compiles update steps (torch.compile)"}
        pytest.fail(f"{item.nodeid} {' and '.join(what[m] for m in missing)}: mark it "
                    f"{', '.join('@pytest.mark.' + m for m in missing)} (the fast tier, "
                    f"-m \"not slow and not compiles\", leaves it out)", pytrace=False)
    return result


def make_random_dataset(dataset_id: str, episodes: int = 12, seed: int = 0,
                        env_id: str = "Hopper-v5", nan_reward: bool = False,
                        max_steps: int | None = None):
    """A real Minari dataset of uniform-random episodes in a real MuJoCo env (Hopper's end in
    ~10-60 steps), written with Minari's own create_dataset_from_buffers."""
    import minari
    from minari.data_collector import EpisodeBuffer

    env = gym.make(env_id, max_episode_steps=max_steps) if max_steps else gym.make(env_id)
    env.action_space.seed(seed)
    buffers = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        while True:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
            if terminated or truncated:
                break
        rewards = np.asarray(rewards, dtype=np.float64)
        if nan_reward:
            rewards[:] = np.nan
        buffers.append(EpisodeBuffer(id=ep, seed=seed + ep, observations=np.asarray(observations),
                                     actions=np.asarray(actions, dtype=np.float32), rewards=rewards,
                                     terminations=np.asarray(terms), truncations=np.asarray(truncs)))
    return minari.create_dataset_from_buffers(
        dataset_id, buffers, env=env_id, eval_env=env_id, algorithm_name="uniform-random",
        author="tests", author_email="tests@example.org", description="test data",
        ref_min_score=-20.0, ref_max_score=300.0)


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_random_dataset("tests/hopper/random-v0", episodes=12)
        make_random_dataset("tests/hopper/nan-v0", episodes=3, nan_reward=True)
    yield root
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


# conf/debug/smoke.yaml (small networks, 300 updates, ...) on the tests' generated dataset
SMALL_RUN = ["debug=smoke", "dataset=minari", "dataset.dataset_id=tests/hopper/random-v0"]


def run_launch(args: list[str], store: Path, minari_root: Path, timeout: float = 300,
               extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root), "HYDRA_FULL_ERROR": "0",
           **(extra_env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, str(ROOT / "launch.py"), *flags, f"tracker.store_dir={store}",
           f"hydra.run.dir={store}/hydra/${{now:%H-%M-%S-%f}}", *overrides]
    return forked.run(cmd, ROOT, env, timeout)  # as subprocess.run, without the imports each time


def search_runs(store: Path):
    """All runs of the store's offline_rl experiment, oldest first, as mlflow.search_runs gives."""
    from mlflow.tracking import MlflowClient

    import mlflow

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("offline_rl")
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        return mlflow.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    finally:
        mlflow.set_tracking_uri(None)


# ----- fixtures for sweeps, SLURM and resuming ---------------------------------------------------

LOCAL_SLURM = ROOT / "scripts" / "local_slurm.sh"


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node SLURM cluster of scripts/local_slurm.sh (CI starts it before the tests). When it
    is not up, the fixture tries to start it (and then stops it after the tests); where it cannot
    start (not root, no Debian packages, ...), tests that need it skip with the reason."""
    import shutil

    def status() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(LOCAL_SLURM), "status"], capture_output=True, text=True,
                              timeout=60)

    if not LOCAL_SLURM.exists():
        pytest.skip(f"SLURM: {LOCAL_SLURM} is missing")
    started = False
    if status().returncode != 0:
        if os.environ.get("OFFLINE_RL_TEST_START_SLURM", "1") == "0":
            pytest.skip("SLURM is not up (scripts/local_slurm.sh status) and "
                        "OFFLINE_RL_TEST_START_SLURM=0")
        try:
            start = subprocess.run(["bash", str(LOCAL_SLURM), "start"], capture_output=True,
                                   text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip("SLURM: scripts/local_slurm.sh start did not finish in 600 s")
        if start.returncode != 0:
            pytest.skip("SLURM cannot start here (scripts/local_slurm.sh start): "
                        + (start.stderr or start.stdout).strip()[-800:])
        started = True
    if shutil.which("sbatch") is None or shutil.which("sacct") is None:
        pytest.skip("SLURM: sbatch/sacct not on PATH")
    yield LOCAL_SLURM
    if started:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop"], capture_output=True, text=True, timeout=300)


def launch_command(args: list[str], store: Path, sweep: bool = False) -> list[str]:
    """The command run_launch runs (launch.py, a store in ``store``); for a multirun, the sweep's
    folders go under ``store/sweep``."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    folder = [f"hydra.sweep.dir={store}/sweep"] if sweep else [
        f"hydra.run.dir={store}/hydra/${{now:%H-%M-%S-%f}}"]
    return [sys.executable, str(ROOT / "launch.py"), *flags, f"tracker.store_dir={store}", *folder,
            *overrides]


def launch_env(minari_root: Path, extra_env: dict | None = None) -> dict:
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root), "HYDRA_FULL_ERROR": "0",
           **(extra_env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_sweep(args: list[str], store: Path, minari_root: Path, timeout: float = 600,
              extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """A multirun through launch.py with its sweep folder and MLflow store in ``store``; the sweep's
    own process forked as ``run_launch``'s are (its jobs start as the launcher starts them)."""
    return forked.run(launch_command(args, store, sweep=True), ROOT, launch_env(minari_root, extra_env),
                      timeout)


@contextlib.contextmanager
def launched(args: list[str], store: Path, minari_root: Path):
    """launch.py running in the background as ``run_launch`` would run it (forked; stdout and
    stderr readable, ``pid`` to signal); killed (-9) on the way out if it still runs."""
    proc = forked.start(launch_command(args, store), ROOT, launch_env(minari_root), stdout=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        forked.close(proc)


def wait_for_checkpoint(proc: subprocess.Popen, store: Path, timeout: float = 240) -> None:
    """Until the launch.py process ``proc`` has written a checkpoint under ``store``; its output
    (stdout then stderr, what of them it keeps) in the failure if it ends first."""
    deadline = time.monotonic() + timeout
    while not list(store.glob("checkpoints/*/step-*.pt")):
        assert proc.poll() is None, "".join(s.read() for s in (proc.stdout, proc.stderr) if s)[-3000:]
        assert time.monotonic() < deadline, f"no checkpoint within {timeout:.0f} s"
        time.sleep(0.02)


def metric_steps(store: Path, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty, migrated MLflow sqlite store, made once (creating one costs ~6 s)."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def new_store(mlflow_template):
    """``new_store(folder)``: ``folder`` holding a copy of the empty store, ready for a run."""
    import shutil

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(mlflow_template, folder / "mlflow.db")
        return folder

    return make


def on_sample(monkeypatch, change: Callable) -> Callable[[], None]:
    """``change(n, batch) -> batch`` sees the n-th batch (from 1) any replay draws, by ``sample``
    or through a phase's ``sampler``, before the step does. Returns what puts both back."""
    from offline_rl.dataset.replay import ReplayBuffer

    sample, sampler, calls = ReplayBuffer.sample, ReplayBuffer.sampler, {"n": 0}

    def changed(batch):
        calls["n"] += 1
        return change(calls["n"], batch)

    def sample_hook(self, batch_size):
        return changed(sample(self, batch_size))

    def sampler_hook(self, batch_size):
        draw = sampler(self, batch_size)
        return lambda: changed(draw())

    monkeypatch.setattr(ReplayBuffer, "sample", sample_hook)
    monkeypatch.setattr(ReplayBuffer, "sampler", sampler_hook)

    def restore() -> None:
        monkeypatch.setattr(ReplayBuffer, "sample", sample)
        monkeypatch.setattr(ReplayBuffer, "sampler", sampler)

    return restore


def interrupt_at_sample(monkeypatch, n: int, signum: int = signal.SIGTERM) -> Callable[[], None]:
    """Send ``signum`` to this process at the n-th replay batch (mid-run, as scancel does).
    Returns what stops it."""

    def interrupt(count, batch):
        if count == n:
            os.kill(os.getpid(), signum)
        return batch

    return on_sample(monkeypatch, interrupt)
