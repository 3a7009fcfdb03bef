"""Runs that survive their users (issue 15): one process per run, checkpoints tied to their store,
a tracking server lost and found again, datasets checked before anything trains on them, no
resuming into a known failure, limits that depend on the data, a full disk, and a user's mistakes
on the command line -- each one clear line and exit status 2, nothing recorded lost or shared."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import forked
from conftest import (interrupt_at_sample, on_sample, ROOT, SMALL_RUN, launched, metric_steps, run_launch, search_runs,
                      wait_for_checkpoint)
from offline_rl.errors import CheckpointError, DatasetError, NonFiniteLossError
from offline_rl.training.checkpoint import CheckpointDir, load_checkpoint

SHARED_MACHINE = ["threads=1", "batch_size=32"]  # a shared 2-core machine


def small_run(*overrides: str) -> list[str]:
    keys = {o.split("=", 1)[0] for o in overrides}
    return [a for a in [*SMALL_RUN, *SHARED_MACHINE] if a.split("=", 1)[0] not in keys] + list(overrides)


def composed(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=small_run(*overrides))


def one_line(stderr: str) -> str:
    """The error line of a run that failed; there must be exactly one, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----- 1. one process per run ----------------------------------------------------------------


@pytest.mark.slow
def test_a_second_process_on_the_same_run_is_refused_and_a_dead_holder_never_blocks(
        tmp_path, minari_root, new_store):
    new_store(tmp_path)
    args = small_run("updates=600", "log_every=50", "eval.every=300", "eval.episodes=1",
                     "checkpoint.every=50", "compile=eager")
    with launched(args, tmp_path, minari_root) as first:
        wait_for_checkpoint(first, tmp_path, timeout=300)
        os.kill(first.pid, signal.SIGSTOP)  # it holds the run, however long the second one takes
        second = run_launch(args, tmp_path, minari_root)
        assert second.returncode == 2
        line = one_line(second.stderr)
        assert "is already running" in line and f"process {first.pid} on {socket.gethostname()}" in line
        assert len(search_runs(tmp_path)) == 1  # the second one created nothing
        os.kill(first.pid, signal.SIGKILL)  # its lock dies with it
        first.wait(timeout=30)

    third = run_launch(args, tmp_path, minari_root)  # the same command continues the same run
    assert third.returncode == 0, third.stderr[-3000:]
    runs = search_runs(tmp_path)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    run_id = runs.iloc[0]["run_id"]
    assert metric_steps(tmp_path, run_id, "offline_rl/critic_loss") == list(range(50, 601, 50))
    assert metric_steps(tmp_path, run_id, "eval/return_mean") == [300, 600]
    assert not list(tmp_path.glob("checkpoints/*"))  # finished: folder and lock file gone


@pytest.mark.slow  # starts a process
def test_a_fresh_sqlite_store_created_by_several_processes_at_once(tmp_path):
    """Three processes create one fresh store at the same moment (MLflow's migrations crash
    without the lock beside the database: 'duplicate column name')."""
    go = tmp_path / "go"
    code = ("import sys, time, pathlib\n"
            "from offline_rl.tracker import MlflowTracker\n"
            "import mlflow.store.tracking.sqlalchemy_store\n"
            "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.01)\n"
            "print(MlflowTracker(store_dir=sys.argv[2]).ensure_store())\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(go), str(tmp_path / "store")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        time.sleep(3)
        go.touch()
        results = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0] * 3, [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1  # one experiment, the same for all
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()].count("offline_rl") == 1


# ----- 2. checkpoints belong to their store --------------------------------------------------


def test_checkpoints_resume_only_into_the_store_and_run_they_were_written_for(
        tmp_path, minari_root, monkeypatch, new_store):
    from offline_rl.run import train

    shared = tmp_path / "checkpoints"  # one checkpoint folder for both stores, as with a server URI
    stores = {name: new_store(tmp_path / name) for name in ("A", "B")}

    def command(store: str):
        return composed("updates=60", "log_every=10", "eval.every=30", "eval.episodes=1",
                        "checkpoint.every=20", "compile=eager", f"checkpoint.dir={shared}",
                        f"tracker.tracking_uri=sqlite:///{stores[store] / 'mlflow.db'}")

    interrupt_at_sample(monkeypatch, 45)
    with pytest.raises(SystemExit):
        train(command("A"))  # stopped at update 45 in store A
    monkeypatch.undo()
    a_killed = search_runs(stores["A"]).iloc[0]
    assert a_killed["status"] == "KILLED"

    train(command("B"))  # the same command against store B: a run of its own, from the start
    b = search_runs(stores["B"])
    assert len(b) == 1 and b.iloc[0]["status"] == "FINISHED"
    assert "tags.resumed_from_step" not in b.columns or b["tags.resumed_from_step"].isna().all()
    b_id = b.iloc[0]["run_id"]
    assert metric_steps(stores["B"], b_id, "phase_start/offline_rl") == [0]
    assert metric_steps(stores["B"], b_id, "eval/return_mean") == [30, 60]
    assert b.iloc[0]["tags.phase"] == "offline_rl"

    train(command("A"))  # A's checkpoints were left alone: A continues where it stopped
    a = search_runs(stores["A"])
    assert len(a) == 1 and a.iloc[0]["status"] == "FINISHED"
    assert int(a.iloc[0]["tags.resumed_from_step"]) == 45
    assert metric_steps(stores["A"], a_killed["run_id"], "offline_rl/critic_loss") == [10, 20, 30, 40, 50, 60]


def test_a_checkpoint_folder_of_another_store_is_not_resumed(tmp_path, capfd):
    from offline_rl.tracker import NullTracker
    from offline_rl.training.lifecycle import resume_decision

    folder = CheckpointDir(tmp_path / "run", identity="abc")
    folder.write_info({"run_id": "r1", "identity": "abc", "tracking_uri": "sqlite:////elsewhere.db"})
    folder.save({"run_id": "r1", "global_step": 5, "algo": {}, "replay": {}, "trainer": {}, "rng": {}}, 5)
    assert resume_decision(folder, NullTracker()) == (False, None)
    assert "written for the MLflow store sqlite:////elsewhere.db" in capfd.readouterr().err
    assert folder.files() == []


# ----- 3. a tracking server that does not answer ---------------------------------------------


@pytest.mark.slow  # starts a process
def test_an_unreachable_tracking_server_at_start_fails_in_seconds(tmp_path, minari_root, monkeypatch):
    from offline_rl.errors import TrackerUnreachableError
    from offline_rl.tracker import HTTP_LIMITS, MlflowTracker

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for key in HTTP_LIMITS:  # our bounds, not whatever this process inherited
        monkeypatch.delenv(key, raising=False)
    start = time.monotonic()
    with pytest.raises(TrackerUnreachableError, match="does not answer"):
        MlflowTracker(tracking_uri=uri).ensure_store()
    assert time.monotonic() - start < 30  # MLflow's own retries alone took 255 s

    result = run_launch([*small_run("updates=20"), f"tracker.tracking_uri={uri}"], tmp_path,
                        minari_root)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"the MLflow tracking server {uri} does not answer" in line and "refused" in line
    assert result.stderr.strip() == line  # nor urllib3's retry warnings


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` on loopback (its own process group), answering /health."""
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / f"server-{time.monotonic_ns()}.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination",
         str(folder / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    log.close()
    return server


def wait_until_answering(port: int, server: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, "the mlflow server exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"mlflow server not answering within {timeout} s"
            time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)  # uvicorn's worker too
    server.wait(timeout=60)


@pytest.mark.slow
def test_a_server_killed_mid_run_gets_every_metric_once_it_is_back(tmp_path, minari_root):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    folder = tmp_path / "server"
    server = start_mlflow_server(folder, port)
    restarted = None
    try:
        wait_until_answering(port, server)
        args = [*small_run("updates=1000", "log_every=50", "eval.every=500", "eval.episodes=1",
                           "checkpoint.every=50", "compile=eager"), f"tracker.tracking_uri={uri}",
                "tracker.retry_every_s=1", "tracker.wait_for_server_s=900"]
        with launched(args, tmp_path, minari_root) as run:
            wait_for_checkpoint(run, tmp_path, timeout=300)  # metrics up to step 50 delivered
            stop_server(server)  # killed mid-run
            assert run.poll() is None, "the run ended before the server was killed"
            restarted = start_mlflow_server(folder, port)  # back after its 30-45 s start
            _, stderr = run.communicate(timeout=1200)
        assert run.returncode == 0, stderr[-3000:]
        assert f"the MLflow server {uri} does not answer" in stderr
        assert f"the MLflow server {uri} answers again: delivered" in stderr
        wait_until_answering(port, restarted)
        client = MlflowClient(uri)
        [found] = client.search_runs([client.get_experiment_by_name("offline_rl").experiment_id])
        assert found.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(found.info.run_id, "offline_rl/critic_loss")]
        assert sorted(steps) == list(range(50, 1001, 50))  # every step, once
        evals = [m.step for m in client.get_metric_history(found.info.run_id, "eval/return_mean")]
        assert sorted(evals) == [500, 1000]
        assert {a.path for a in client.list_artifacts(found.info.run_id)} >= {"config.yaml", "checkpoint.pt"}
        assert not list(tmp_path.glob("checkpoints/*"))  # spool delivered, folder removed
    finally:
        stop_server(server)
        if restarted is not None:
            stop_server(restarted)


# ----- 4. datasets checked before anything trains on them -------------------------------------


def bad_copy(minari_root: Path, name: str, edit) -> str:
    """A copy of the valid tests/hopper/random-v0 dataset, one field edited with h5py."""
    import h5py

    dataset_id = f"tests/hopper/{name}-v0"
    target = minari_root / dataset_id
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(minari_root / "tests/hopper/random-v0", target)
    metadata = target / "data" / "metadata.json"
    metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "dataset_id": dataset_id}))
    with h5py.File(target / "data" / "main_data.hdf5", "r+") as f:
        for index, episode in enumerate(sorted(f, key=lambda n: int(n.split("_")[-1]))):
            for field in list(f[episode]):
                new = edit(index, field, f[episode][field][()])
                if new is not None:
                    del f[episode][field]
                    f[episode].create_dataset(field, data=new)
    return dataset_id


def set_at(episode: int, field: str, where, value):
    """An edit: in ``episode``'s ``field``, the element at ``where`` becomes ``value``."""
    def edit(index, name, values):
        if index != episode or name != field:
            return None
        values = values.copy()
        values[where] = value
        return values
    return edit


def widen(field: str):
    """An edit: one more column in every episode's ``field``."""
    return lambda index, name, values: (np.concatenate([values, values[:, :1]], axis=1)
                                        if name == field else None)


BAD_DATASETS = {
    # name: (edit, what the message says)
    "nan-observation": (set_at(2, "observations", (5, 3), np.nan),
                        "observations hold a non-finite value (nan) at transition"),
    "inf-reward": (set_at(1, "rewards", 4, np.inf), "rewards hold a non-finite value (inf) at transition"),
    "huge-observation": (set_at(3, "observations", (2, 0), 1e30), "observations hold 1e+30, beyond any sane magnitude"),
    "action-out-of-bounds": (set_at(0, "actions", (7, 1), 5.0), "actions hold 5, outside the environment's bounds [-1, 1]"),
    "wide-actions": (widen("actions"), "actions have 4 values each but its environment Hopper-v5 has 3"),
    "wide-observations": (widen("observations"), "observations have 12 values each but its environment Hopper-v5 has 11"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATASETS))
def test_a_bad_dataset_is_refused_as_it_is_read(name, minari_root):
    from offline_rl.dataset.minari_source import read_minari_dataset

    edit, message = BAD_DATASETS[name]
    dataset_id = bad_copy(minari_root, name, edit)
    try:
        with pytest.raises(DatasetError) as info:
            read_minari_dataset(dataset_id)
    finally:
        shutil.rmtree(minari_root / dataset_id)
    text = str(info.value)
    assert text.startswith(f"dataset '{dataset_id}'") and message in text and "\n" not in text
    assert "nothing was trained" in text


def test_the_first_bad_transition_is_named_with_its_episode_and_step(minari_root):
    from offline_rl.dataset.minari_source import read_minari_dataset

    data = read_minari_dataset("tests/hopper/random-v0")
    episode_2 = int(np.flatnonzero(data.episode_ends)[1]) + 1  # its first transition
    dataset_id = bad_copy(minari_root, "nan-late", set_at(2, "observations", (5, 3), np.nan))
    try:
        with pytest.raises(DatasetError) as info:
            read_minari_dataset(dataset_id)
    finally:
        shutil.rmtree(minari_root / dataset_id)
    # observation 5 of episode 2 is the observation of its transition 5 (and the next one of 4)
    assert f"observations hold a non-finite value (nan) at transition {episode_2 + 5} (episode 2, " \
           f"step 5, element 3)" in str(info.value)


@pytest.mark.slow
def test_a_bad_dataset_stops_launch_before_any_update(tmp_path, minari_root):
    # tests/hopper/nan-v0: every reward NaN (conftest); it used to train, then fail on the loss
    result = run_launch(small_run("dataset.dataset_id=tests/hopper/nan-v0", "updates=50"), tmp_path,
                        minari_root)
    assert result.returncode == 2
    assert ("error: dataset 'tests/hopper/nan-v0' (" in one_line(result.stderr)
            and "rewards hold a non-finite value (nan) at transition 0 (episode 0, step 0)"
            in one_line(result.stderr))
    assert len(search_runs(tmp_path)) == 0  # no run was started


# ----- 5. a run that failed on non-finite values ------------------------------------------------


def test_a_run_that_failed_on_non_finite_values_is_not_resumed_into_the_same_failure(
        tmp_path, minari_root, monkeypatch, new_store):
    from offline_rl.run import train

    store = new_store(tmp_path)
    command = composed("updates=60", "log_every=10", "eval.episodes=0", "checkpoint.every=20",
                       "compile=eager", f"tracker.store_dir={store}")
    def poisoned(count, batch):  # rewards turn NaN after update 25 (a checkpoint at 20)
        return batch._replace(rewards=batch.rewards * float("nan")) if count > 25 else batch

    on_sample(monkeypatch, poisoned)
    with pytest.raises(NonFiniteLossError, match="became non-finite"):
        train(command)
    monkeypatch.undo()
    failed = search_runs(store).iloc[0]
    assert failed["status"] == "FAILED"

    with pytest.raises(NonFiniteLossError) as info:  # the same command again, data "fixed"
        train(command)
    text = str(info.value)
    assert f"MLflow run {failed['run_id']}" in text and "resume=never" in text
    assert len(search_runs(store)) == 1  # nothing resumed, nothing new

    train(composed("updates=60", "log_every=10", "eval.episodes=0", "checkpoint.every=20",
                   "compile=eager", f"tracker.store_dir={store}", "resume=never"))
    runs = search_runs(store)
    assert sorted(runs["status"]) == ["FAILED", "FINISHED"]


# ----- 6. limits that depend on the data -----------------------------------------------------


@pytest.mark.slow
def test_a_batch_larger_than_the_dataset_fails_before_any_update(tmp_path, minari_root):
    result = run_launch(small_run("batch_size=100000000", "updates=50"), tmp_path, minari_root)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "batch_size=100000000 is larger than the dataset 'tests/hopper/random-v0' (348 transitions)" in line
    assert len(search_runs(tmp_path)) == 0


def test_a_replay_that_does_not_fit_in_memory_fails_before_it_is_allocated(minari_root):
    from offline_rl.dataset.minari_source import read_minari_dataset
    from offline_rl.errors import ConfigError
    from offline_rl.limits import check_data_limits, free_memory

    data = read_minari_dataset("tests/hopper/random-v0")
    cpu = torch.device("cpu")
    check_data_limits(composed("finetune=td3"), data, cpu)  # 200k online transitions fit
    steps = free_memory(cpu) // 50  # rows of 4 * (2 * 11 + 3 + 3) + 1 = 113 bytes: twice the memory
    with pytest.raises(ConfigError) as info:
        check_data_limits(composed("finetune=td3", f"finetune.env_steps={steps}",
                                   f"finetune.max_replay_size={steps}"), data, cpu)
    replay_gb = (348 + steps) * 113 / 1e9  # rows of 113 bytes (above)
    assert (f"the replay (348 transitions of 'tests/hopper/random-v0' and {steps:,} for fine-tuning: "
            f"{replay_gb:.1f} GB)") in str(info.value) and "is free" in str(info.value)


# ----- 7. a full disk ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A folder on a 450 kB tmpfs (room for one small checkpoint, not two) where it can be
    mounted (root); else a folder whose second checkpoint write fails with ENOSPC."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=450k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0 if shutil.which("mount") else False
    if not mounted:
        import offline_rl.training.checkpoint as checkpoint

        real, calls = os.fsync, {"n": 0}

        def fsync(fd):
            if "step-" in os.readlink(f"/proc/self/fd/{fd}"):  # a checkpoint, not run.json
                calls["n"] += 1
                if calls["n"] > 1:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd)

        monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    print(f"full disk: {'a 450 kB tmpfs' if mounted else 'simulated ENOSPC'} at {folder}")
    yield folder
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_warns_keeps_training_and_the_resumed_run_clears_stale_tags(
        tmp_path, small_disk, minari_root, monkeypatch, new_store, capfd):
    from offline_rl.run import train

    store = new_store(tmp_path / "store")
    command = composed("updates=60", "log_every=10", "eval.every=30", "eval.episodes=1",
                       "checkpoint.every=20", "compile=eager", f"tracker.store_dir={store}",
                       f"checkpoint.dir={small_disk}")
    interrupt_at_sample(monkeypatch, 50)  # after the checkpoint of 20 and the failed one of 40
    with pytest.raises(SystemExit):
        train(command)
    monkeypatch.undo()
    err = capfd.readouterr().err
    assert "no space left for checkpoints in" in err and str(small_disk) in err
    assert "the checkpoint of update step 40 was not written, the checkpoint of update step 20 is kept" in err
    assert "Errno 28" not in err and "inline_container" not in err
    killed = search_runs(store).iloc[0]
    assert killed["status"] == "KILLED" and "SIGTERM" in killed["tags.interrupted"]

    train(command)  # resumes from step 20 (the signal's checkpoint could not be written either)
    run = search_runs(store).iloc[0]
    assert run["status"] == "FINISHED" and int(run["tags.resumed_from_step"]) == 20
    assert pd_missing(run, "tags.interrupted") and pd_missing(run, "tags.error")  # stale: removed
    assert "update step" in run["tags.checkpoint_disk_full"]
    assert metric_steps(store, run["run_id"], "offline_rl/critic_loss") == [10, 20, 30, 40, 50, 60]


def pd_missing(row, key: str) -> bool:
    return key not in row.index or row[key] is None or row[key] != row[key]


# ----- 8. a user's mistakes on the command line ----------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["updats=10"], "error: unknown config key 'updats'"),
    (["algo=td3bc"], "error: algo=td3bc: 'algo' has no option 'td3bc'; available: bc, cql, edac"),
    (["+updats=10"], "error: +updats=10: '+' adds keys the config does not define"),
    (["++updats=10"], "error: ++updats=10: '++' adds keys the config does not define"),
    (["-m", "updats=10,11"], "error: unknown config key 'updats'"),
    (["--cfg", "job", "algo=td3bc"], "error: algo=td3bc: 'algo' has no option 'td3bc'"),
])
@pytest.mark.slow  # starts a process
def test_hydra_level_mistakes_give_one_line_and_exit_status_2(args, message, tmp_path):
    # were the mistake let through, a missing dataset would end the run at once
    fallback = ["dataset=minari", "dataset.dataset_id=tests/none/missing-v0",
                "dataset.download_if_missing=false"]
    result = forked.run([sys.executable, str(ROOT / "launch.py"), *args, *fallback,
                         f"tracker.store_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/sweep",
                         f"hydra.run.dir={tmp_path}/run"], ROOT, {**os.environ, "HYDRA_FULL_ERROR": "0"},
                        timeout=300, fork=args != ["updats=10"])  # one real start: its import-time output too
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(message)
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "mlflow.db").exists()


def test_a_pickle_in_place_of_a_checkpoint_is_refused_in_one_plain_line(tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "step-000000000010.pt"
    torch.save({"format": 1, "payload": Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path} is not a checkpoint this project wrote (refused to unpickle)"
    assert not marker.exists()


def test_two_runs_starting_together_both_get_their_dataset_input(tmp_path, minari_root, new_store):
    """Two runs of a sweep starting at once race to insert the experiment's dataset row; the
    loser's insert violates its unique key (seen in the 2x2 SLURM sweep). Its run then links to
    the row the winner wrote, instead of failing."""
    from mlflow.exceptions import MlflowException

    from offline_rl.dataset.minari_source import read_minari_dataset
    from offline_rl.dataset.record import describe
    from offline_rl.tracker import MlflowTracker

    store = new_store(tmp_path)
    record = describe(read_minari_dataset("tests/hopper/random-v0"))
    winner, loser = (MlflowTracker(store_dir=str(store)) for _ in range(2))
    winner.start("a", {}, {})
    loser.start("b", {}, {})
    real, calls = loser.client.log_inputs, []

    def racing(run_id, datasets):
        calls.append(run_id)
        if len(calls) == 1:  # the winner inserts the row between the loser's check and insert
            winner.log_dataset(record)
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, datasets.name, datasets.digest")
        return real(run_id, datasets)

    loser.client.log_inputs = racing
    loser.log_dataset(record)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    for tracker in (winner, loser):
        [dataset_input] = client.get_run(tracker.run_id).inputs.dataset_inputs
        assert dataset_input.dataset.name == "tests/hopper/random-v0"
    assert len(calls) == 2
    for tracker in (winner, loser):
        tracker.finish("FINISHED")
