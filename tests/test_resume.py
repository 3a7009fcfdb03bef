"""Checkpoints and resuming: rotation and a corrupt latest checkpoint; a run stopped by a signal at
an arbitrary update and resumed ends with exactly the weights (and metric values) of an
uninterrupted run; kill -9 of launch.py, then the same command again, continues the same MLflow run
with one value per metric step."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from conftest import (interrupt_at_sample, ROOT, SMALL_RUN, launched, metric_steps, run_launch, search_runs,
                      wait_for_checkpoint)
from offline_rl.errors import CheckpointError
from offline_rl.training.checkpoint import CheckpointDir

# ----- the checkpoint folder ------------------------------------------------------------------


def test_a_metric_window_written_before_packed_metrics_resumes_with_the_same_means():
    """Checkpoints written before 2720c5f kept the window as per-key running sums; a run (or a
    dataset's behaviour run) checkpointed then continues, and its next log point reads the means the
    old code would have logged: (1 + 2 + 3) / 3, 5 / 1; a loss that had become NaN at step 7
    still stops the run naming step 7."""
    from offline_rl.errors import NonFiniteLossError
    from offline_rl.training.metrics import MetricWindow

    old = {"sums": {"critic_loss": torch.tensor(6.0), "actor_loss": torch.tensor(5.0), "q_mean": torch.tensor(-3.0)},
           "counts": {"critic_loss": 3, "actor_loss": 1, "q_mean": 3},
           "first_bad": {"critic_loss": torch.tensor(-1), "actor_loss": torch.tensor(-1)}}
    window = MetricWindow()
    window.load_state_dict(old)
    window.add({"critic_loss": torch.tensor(10.0), "q_mean": torch.tensor(1.0)}, step=4)
    assert window.read("offline") == pytest.approx({"critic_loss": 4.0, "actor_loss": 5.0, "q_mean": -0.5})

    bad = {"sums": {"critic_loss": torch.tensor(float("nan"))}, "counts": {"critic_loss": 9},
           "first_bad": {"critic_loss": torch.tensor(7)}}
    window.load_state_dict(bad)
    with pytest.raises(NonFiniteLossError, match="at update step 7 in phase 'offline'"):
        window.read("offline")



def test_checkpoints_rotate_and_a_corrupt_latest_falls_back_reported(tmp_path):
    folder = CheckpointDir(tmp_path / "run", identity="abc", keep=2)
    base = {"run_id": "r", "algo": {"w": torch.ones(3)}, "replay": {}, "trainer": {}, "rng": {}}
    for step in (10, 20, 30):
        folder.save({**base, "global_step": step}, step)
    assert [p.name for p in folder.files()] == ["step-000000000030.pt", "step-000000000020.pt"]
    # plain tensors and containers only: loads with weights_only=True
    assert torch.load(folder.files()[0], weights_only=True)["global_step"] == 30

    latest = folder.files()[0]
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    reports = []
    state, path = folder.load_latest(reports.append)
    assert state["global_step"] == 20 and path.name == "step-000000000020.pt"
    assert len(reports) == 1 and "truncated or corrupt" in reports[0] and latest.name in reports[0]

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        folder.load_latest(reports.append)

    folder.save({**base, "global_step": 40}, 40)
    other = CheckpointDir(tmp_path / "run", identity="xyz", keep=2)  # another config's folder
    with pytest.raises(CheckpointError, match="another run configuration"):
        other.load_latest(lambda m: None)
    folder.clear()
    assert folder.files() == [] and folder.load_latest(reports.append) is None


# ----- resuming gives the uninterrupted run's weights -------------------------------------------


def small_run(*overrides: str) -> list[str]:
    """SMALL_RUN with some of its values replaced."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [a for a in SMALL_RUN if a.split("=", 1)[0] not in keys] + list(overrides)


def composed(store: Path, *overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*small_run(*overrides), f"tracker.store_dir={store}"])


def final_state(store: Path) -> tuple[str, dict]:
    runs = search_runs(store)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    local = client.download_artifacts(run["run_id"], "checkpoint.pt", str(store / "download"))
    return run["run_id"], torch.load(local, weights_only=True)


def assert_same_tensors(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a} != {b}"


# this machine is shared (2 cores): one torch thread, small batches
SHARED_MACHINE = ["threads=1", "batch_size=32"]

CASES = {
    # hard pre-training stopped at its loss plateau (the Convergence history is checkpointed),
    # interrupted during pre-training, between two log points
    "td3_bc-ac": (["algo=td3_bc", "pretrain=ac", "pretrain.steps=80", "pretrain.window=10",
                   "pretrain.tolerance=0.5", "updates=40"], 2 * 27),
    # soft pre-training: interrupted in the critic phase, after the soft returns were computed
    "edac-soft": (["algo=edac", "algo.num_critics=2", "pretrain=soft", "pretrain.steps=20",
                   "pretrain.until=null", "updates=20"], 1 * 20 + 1 * 7),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("corrupt_latest", [False, True], ids=["", "corrupt-latest"])
def test_resume_after_signal_gives_the_uninterrupted_weights(case, corrupt_latest, tmp_path,
                                                              minari_root, monkeypatch, new_store):
    from offline_rl.run import train

    overrides, interrupt_at = CASES[case]
    if corrupt_latest and case != "td3_bc-ac":
        pytest.skip("one case is enough for the corrupt checkpoint")
    common = [*overrides, "eval.episodes=1", "eval.every=30", "log_every=5", "checkpoint.every=12",
              *SHARED_MACHINE]
    train(composed(new_store(tmp_path / "straight"), *common))
    straight_id, straight = final_state(tmp_path / "straight")

    store = new_store(tmp_path / "resumed")
    restore = interrupt_at_sample(monkeypatch, interrupt_at)  # SIGTERM mid-run, as scancel sends it
    with pytest.raises(SystemExit) as stopped:
        train(composed(store, *common))
    assert stopped.value.code == 128 + signal.SIGTERM
    restore()
    killed = search_runs(store).iloc[0]
    assert killed["status"] == "KILLED" and "SIGTERM" in killed["tags.interrupted"]
    files = list((store / "checkpoints").glob("*/step-*.pt"))
    steps = sorted(int(f.stem.split("-")[1]) for f in files)
    assert steps[-1] % 12 != 0  # the signal's own checkpoint, between two periodic ones
    if corrupt_latest:
        latest = max(files, key=lambda f: int(f.stem.split("-")[1]))
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])

    train(composed(store, *common))
    resumed_id, resumed = final_state(store)
    run = search_runs(store).iloc[0]
    assert int(run["tags.resumed_from_step"]) == (steps[-2] if corrupt_latest else steps[-1])
    if corrupt_latest:
        assert "truncated or corrupt" in run["tags.checkpoint_corrupt"]
    assert resumed["global_step"] == straight["global_step"]
    assert_same_tensors(straight["algo"], resumed["algo"], "algo")
    assert_same_tensors(straight["replay"], resumed["replay"], "replay")

    # the same metric values at the same steps, each step once
    a = MlflowClient(f"sqlite:///{tmp_path / 'straight' / 'mlflow.db'}")
    b = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    # compile/* describe the process that ran last (which step functions it compiled or ran
    # eagerly, and how long compiling took), not the training: left out of the comparison
    def training_metrics(client, run_id):
        return sorted(k for k in client.get_run(run_id).data.metrics if not k.startswith("compile/"))

    keys = training_metrics(a, straight_id)
    assert keys == training_metrics(b, resumed_id)
    for key in keys:
        want = sorted((m.step, m.value) for m in a.get_metric_history(straight_id, key))
        got = sorted((m.step, m.value) for m in b.get_metric_history(resumed_id, key))
        assert got == want, key
    assert not list((store / "checkpoints").glob("*/*"))  # a finished run's checkpoints are gone


# ----- kill -9, then the same command ---------------------------------------------------------


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_the_same_run(tmp_path, minari_root, new_store):
    new_store(tmp_path)
    # long enough that a fast machine cannot finish between the first checkpoint and the kill
    args = small_run("updates=1500", "log_every=50", "eval.every=500", "eval.episodes=1",
                     "checkpoint.every=50", *SHARED_MACHINE)
    with launched(args, tmp_path, minari_root) as proc:
        wait_for_checkpoint(proc, tmp_path)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed = search_runs(tmp_path)
    assert len(killed) == 1 and killed.iloc[0]["status"] == "RUNNING"
    run_id = killed.iloc[0]["run_id"]

    result = run_launch(args, tmp_path, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"MLflow run {run_id}" in result.stderr  # "resuming from ... (update step k, MLflow run ...)"
    runs = search_runs(tmp_path)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["run_id"] == run_id and run["status"] == "FINISHED"
    assert int(run["tags.resumed_from_step"]) % 50 == 0
    losses = metric_steps(tmp_path, run_id, "offline_rl/critic_loss")
    assert losses == sorted(set(losses))  # strictly increasing: no step logged twice
    assert losses == list(range(50, 1501, 50))  # and none missing
    assert metric_steps(tmp_path, run_id, "eval/return_mean") == [500, 1000, 1500]


# ----- a finished run continued to a larger budget ------------------------------------------------


def test_a_finished_run_continues_to_a_larger_budget_as_the_same_run(tmp_path, minari_root, new_store):
    """updates=60, finished; then continue_from=<its run id> updates=120: the same MLflow run, its
    metrics up to 60 unchanged, and the weights of a run that did 120 updates straight."""
    from offline_rl.errors import ConfigError
    from offline_rl.run import train

    common = ["algo=td3_bc", "eval.episodes=1", "eval.every=30", "log_every=10",
              "checkpoint.every=0", *SHARED_MACHINE]
    train(composed(new_store(tmp_path / "straight"), *common, "updates=120"))
    _, straight = final_state(tmp_path / "straight")

    store = new_store(tmp_path / "continued")
    train(composed(store, *common, "updates=60"))
    run_id, _ = final_state(store)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    before = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
              for k in ("eval/normalized_score_mean", "offline_rl/critic_loss")}
    with pytest.raises(ConfigError, match="only updates may differ.*seed=0 there, 1 here"):
        train(composed(store, *common, "updates=120", "seed=1", f"continue_from={run_id}"))
    with pytest.raises(ConfigError, match="already did updates=60"):
        train(composed(store, *common, "updates=40", f"continue_from={run_id}"))
    train(composed(store, *common, "updates=120", f"continue_from={run_id}"))
    same_id, continued = final_state(store)  # one run in the store, FINISHED
    assert same_id == run_id
    run = client.get_run(run_id)
    assert run.data.tags["updates"] == "120" and "continued to 120" in run.data.tags["continued"]
    for key, points in before.items():
        history = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        assert history[:len(points)] == points  # up to the old budget: unchanged
        assert [s for s, _ in history] == sorted({s for s, _ in history})  # each step once
        assert history[-1][0] == 120
    assert continued["global_step"] == straight["global_step"] == 120
    assert_same_tensors(straight["algo"], continued["algo"], "algo")


def test_a_continued_run_continues_again_and_a_continuation_killed_early_starts_again(
        tmp_path, minari_root, new_store, monkeypatch):
    """60 -> 120 -> 150 updates: the second continuation starts from 120 (the run's param still
    says 60); a continuation that died before its first checkpoint (its run left RUNNING, as a
    kill -9 leaves it) is started again by its own command, to the budget it asked for."""
    from offline_rl.errors import ConfigError
    from offline_rl.run import Run, train

    common = ["algo=td3_bc", "eval.episodes=0", "log_every=10", "checkpoint.every=0", *SHARED_MACHINE]
    store = new_store(tmp_path / "store")
    train(composed(store, *common, "updates=60"))
    run_id, _ = final_state(store)
    train(composed(store, *common, "updates=120", f"continue_from={run_id}"))

    def killed(self):  # dies once its run is tracked, before any checkpoint, ending nothing
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(Run, "execute", killed)
        with pytest.raises(RuntimeError, match="killed"):
            train(composed(store, *common, "updates=150", f"continue_from={run_id}"))
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "RUNNING"
    train(composed(store, *common, "updates=150", f"continue_from={run_id}"))
    same_id, state = final_state(store)
    assert same_id == run_id and state["global_step"] == 150 and state["updates"] == 150
    assert client.get_run(run_id).data.tags["phase_plan"] == '{"offline_rl": 150}'  # progress's total
    losses = [m.step for m in client.get_metric_history(run_id, "offline_rl/critic_loss")]
    assert losses == list(range(10, 151, 10))  # each step once, to 150
    with pytest.raises(ConfigError, match="already did updates=150"):
        train(composed(store, *common, "updates=140", f"continue_from={run_id}"))
    # a continuation that crashed in its first update (FAILED, its folder cleared): the same
    with monkeypatch.context() as patch:
        patch.setattr(Run, "offline_update", killed)
        with pytest.raises(RuntimeError, match="killed"):
            train(composed(store, *common, "updates=170", f"continue_from={run_id}"))
    assert client.get_run(run_id).info.status == "FAILED"
    train(composed(store, *common, "updates=170", f"continue_from={run_id}"))
    assert final_state(store)[1]["global_step"] == 170
    # with online fine-tuning after the offline phase (already run): refused, before anything starts
    with pytest.raises(ConfigError, match="also fine-tunes online after it, a phase that already ran"):
        train(composed(store, *common, "updates=200", "finetune=td3", "finetune.env_steps=10",
                       f"continue_from={run_id}"))


def test_checkpoints_left_by_a_finished_run_are_cleared_not_resumed(tmp_path, minari_root, new_store,
                                                                     monkeypatch, capsys):
    """A process stopped between finishing its run and clearing its checkpoints (or whose FINISHED
    reached the store from its spool later) leaves them behind: the same command clears them
    when it says 'already finished', and rerun=true starts a new run instead of resuming the
    finished one from them."""
    from offline_rl.run import train
    from offline_rl.training.checkpoint import CheckpointDir

    common = ["algo=td3_bc", "eval.episodes=0", "log_every=10", "checkpoint.every=20", "updates=60",
              *SHARED_MACHINE]
    store = new_store(tmp_path / "store")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")

    def finished_leaving_checkpoints(before, *extra):
        with monkeypatch.context() as patch:
            patch.setattr(CheckpointDir, "clear", lambda self: None)
            train(composed(store, *common, *extra))
        (run_id,) = set(search_runs(store)["run_id"]) - before
        run = client.get_run(run_id)
        folder = Path(run.data.tags["checkpoint_dir"])
        assert run.info.status == "FINISHED" and list(folder.glob("step-*.pt"))
        return run_id, folder

    first, folder = finished_leaving_checkpoints(set())
    train(composed(store, *common))  # the same command: nothing to do, and the leftovers go
    assert "already finished" in capsys.readouterr().err
    assert not list(folder.glob("step-*.pt")) and not (folder / "run.json").exists()

    second, folder = finished_leaving_checkpoints({first}, "rerun=true")
    train(composed(store, *common, "rerun=true"))
    assert f"their MLflow run {second} has FINISHED" in capsys.readouterr().err
    runs = search_runs(store)
    assert len(runs) == 3 and set(runs["status"]) == {"FINISHED"}
    third = (set(runs["run_id"]) - {first, second}).pop()
    for run_id in (second, third):  # each its own 60 updates, from scratch, each step once
        steps = [m.step for m in client.get_metric_history(run_id, "offline_rl/critic_loss")]
        assert steps == list(range(10, 61, 10))


def test_a_checkpoint_that_does_not_fit_this_code_is_one_line_not_a_traceback(tmp_path, minari_root,
                                                                              monkeypatch, new_store):
    """A checkpoint written by another version (here: a critic layer of another width) stops the
    run with a CheckpointError naming the file and what to do; resume=never starts afresh."""
    from offline_rl.run import train

    common = ["algo=td3_bc", "eval.episodes=0", "log_every=10", "checkpoint.every=20", "updates=60",
              *SHARED_MACHINE]
    store = new_store(tmp_path / "store")
    restore = interrupt_at_sample(monkeypatch, 30)
    with pytest.raises(SystemExit):
        train(composed(store, *common))
    restore()
    latest = max((store / "checkpoints").glob("*/step-*.pt"), key=lambda f: int(f.stem.split("-")[1]))
    state = torch.load(latest, weights_only=True)
    critic = state["algo"]["critic"]
    key = next(k for k, v in critic.items() if v.dim() == 3)  # [critics, in, out] weights
    critic[key] = torch.zeros(*critic[key].shape[:-1], critic[key].shape[-1] + 1)
    torch.save(state, latest)
    import re

    with pytest.raises(CheckpointError, match=rf"checkpoint {re.escape(str(latest))} does not fit this "
                                              rf"run \(RuntimeError: .*size mismatch for .*resume=never"):
        train(composed(store, *common))
    train(composed(store, *common, "resume=never"))
    runs = search_runs(store)
    assert sorted(runs["status"]) == ["FINISHED", "KILLED"]


def test_the_budget_a_checkpoint_without_it_was_written_at():
    """Checkpoints from before they recorded their budget: a FINISHED run's updates tag (a continued
    run's), a continuation that did not finish: where its 'continued' tag says it started, else the
    param (the first budget)."""
    from offline_rl.run import budget_before

    continued = {"updates": "150", "continued": "finished at 1,200 offline updates, continued to 1,500 (continue_from)"}
    assert budget_before("FINISHED", {"updates": "600"}, {"updates": "1200"}) == "1200"
    assert budget_before("RUNNING", {"updates": "600"}, continued) == "1200"
    assert budget_before("FAILED", {"updates": "600"}, continued) == "1200"
    assert budget_before("FINISHED", {"updates": "600"}, {}) == "600"


def test_a_store_uri_with_a_trailing_slash_is_the_same_store(tmp_path):
    """store_key (the checkpoint folder's name) ignores a trailing '/': so does the check of which
    store a folder's checkpoints were written for (it cleared them and started afresh)."""
    from offline_rl.training.checkpoint import CheckpointDir
    from offline_rl.training.lifecycle import resume_decision

    class Store:
        tracking_uri = "http://127.0.0.1:5000"

        def run_status(self, run_id):
            return "RUNNING"

    folder = CheckpointDir(tmp_path / "run", "abc")
    folder.write_info({"run_id": "r1", "tracking_uri": "http://127.0.0.1:5000/"})
    assert resume_decision(folder, Store()) == (True, "r1")
    assert folder.read_info() is not None  # kept


def test_a_dataset_regenerated_under_its_name_is_neither_resumed_onto_nor_pooled(
        tmp_path, minari_root, new_store, monkeypatch):
    """The same name, another data file (a regenerated local dataset): checkpoints written on the
    old file are not continued on the new one, a run finished on the old file is not skipped as
    if it answered for the new one, nor continued to a larger budget on it -- each one
    DatasetError naming both digests; resume=never / rerun=true start a new run, the old kept."""
    import shutil
    import warnings

    from conftest import make_random_dataset
    from offline_rl.dataset.record import current_digest
    from offline_rl.errors import DatasetError
    from offline_rl.run import train

    dataset_id = "tests/hopper/regenerated-v0"

    def generate(seed: int) -> str:
        shutil.rmtree(minari_root / dataset_id, ignore_errors=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_random_dataset(dataset_id, episodes=12, seed=seed)
        return current_digest(dataset_id)

    common = ["algo=td3_bc", "eval.episodes=0", "log_every=10", "checkpoint.every=20", "updates=60",
              f"dataset.dataset_id={dataset_id}", *SHARED_MACHINE]
    store = new_store(tmp_path / "store")
    first = generate(0)
    restore = interrupt_at_sample(monkeypatch, 30)
    with pytest.raises(SystemExit):
        train(composed(store, *common))
    restore()
    written = sorted((store / "checkpoints").glob("*/step-*.pt"))  # steps 20 and 30 (the signal)
    assert len(written) == 2
    second = generate(1)
    assert second != first
    with pytest.raises(DatasetError, match=rf"the checkpoint .*step-000000000030.pt was trained on "
                                           rf"{dataset_id} with data digest {first}; .* now has digest "
                                           rf"{second} .*resume=never, which removes these checkpoints"):
        train(composed(store, *common))
    assert sorted((store / "checkpoints").glob("*/step-*.pt")) == written  # kept: nothing lost
    train(composed(store, *common, "resume=never"))
    runs = search_runs(store)
    finished = runs[runs["status"] == "FINISHED"]
    assert len(finished) == 1 and finished.iloc[0]["tags.dataset_digest"] == second

    generate(0)  # the old file back under the name: the run finished on the second one
    with pytest.raises(DatasetError, match=rf"finished, but was trained on {dataset_id} with data "
                                           rf"digest {second}; .* now has digest {first} .*rerun=true"):
        train(composed(store, *common))
    with pytest.raises(DatasetError, match=rf"continue_from=.*that run was trained on .*digest {second}"
                                           r".*start a new run here with no continue_from"):
        train(composed(store, *common, "updates=80", f"continue_from={finished.iloc[0]['run_id']}"))
    train(composed(store, *common, "rerun=true"))
    runs = search_runs(store)
    assert sorted(runs["tags.dataset_digest"][runs["status"] == "FINISHED"]) == sorted([first, second])

    # a sweep started again after its data were regenerated: a finished job is not skipped, and a
    # job that never ran does not start on the new file under the old runs' parent (rerun=true
    # would not help: a new run would still be that parent's child; another sweep name would)
    import offline_rl.run as run_module
    from offline_rl.job import JobContext

    sweep_store = new_store(tmp_path / "sweep")
    client = MlflowClient(f"sqlite:///{sweep_store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("offline_rl") or client.get_experiment(
        client.create_experiment("offline_rl"))
    parent = client.create_run(experiment.experiment_id, run_name="regenerated").info.run_id
    seed = {"now": 0}
    monkeypatch.setattr(run_module, "job_context", lambda: JobContext(
        sweep="regenerated", parent_run_id=parent, axes=["seed"], overrides=[f"seed={seed['now']}"]))
    train(composed(sweep_store, *common, "seed=0"))  # on the first file
    generate(1)
    with pytest.raises(DatasetError, match=r"seed=0 \(MLflow run .*\) finished, but was trained on .*"
                                           rf"digest {first}; .* now has digest {second}.*put the old "
                                           r"data back, or start the sweep under another name "
                                           r"\(hydra.sweeper.name=.*\)$"):
        train(composed(sweep_store, *common, "seed=0"))
    seed["now"] = 1
    with pytest.raises(DatasetError, match=rf"this sweep's runs \(parent run {parent}\) were trained "
                                           rf"on {dataset_id} with data digest {first}; .* now has "
                                           rf"digest {second} .*: this job's run would be pooled"):
        train(composed(sweep_store, *common, "seed=1"))
    children = search_runs(sweep_store)
    children = children[children["run_id"] != parent]
    assert list(children["tags.dataset_digest"]) == [first]  # no run of the new file beside it
