"""End to end through launch.py, as a researcher runs it, into a temporary MLflow store; and the
documented messages for a bad config value, a missing or corrupt dataset, and a NaN loss."""

from __future__ import annotations

import hashlib
import json
import math
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import SMALL_RUN, run_launch, search_runs

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("algo", ["td3_bc", "edac"])
def test_short_run_is_tracked_in_mlflow(algo, tmp_path, minari_root):
    extra = ["algo.num_critics=3"] if algo == "edac" else []
    result = run_launch([f"algo={algo}", *SMALL_RUN, "updates=300", "eval.every=150", *extra],
                        tmp_path, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = search_runs(tmp_path)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["tags.mlflow.runName"] == f"{algo}-none-tests-hopper-random-v0-s0"
    assert run["tags.algo"] == algo and run["tags.pretrain"] == "none"
    assert run["tags.network"] == "small" and run["tags.seed"] == "0"
    assert run["params.algo"] == algo and run["params.pretrain"] == "none"  # choices as params too
    assert run["params.batch_size"] == "256" and run["params.network.width"] == "64"
    assert run["params.algo._target_"].startswith("offline_rl.algo.")
    score = run["metrics.eval/normalized_score_mean"]
    assert math.isfinite(score)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(run["run_id"], "eval/normalized_score_mean")
    assert [m.step for m in history] == [150, 300]
    losses = client.get_metric_history(run["run_id"], "offline_rl/critic_loss")
    assert [m.step for m in losses] == [50, 100, 150, 200, 250, 300]
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"config.yaml", "checkpoint.pt"} <= artifacts
    # the experiment opens on the runs table in MLflow 3's UI; the dataset is a dataset input
    experiment = client.get_experiment_by_name("offline_rl")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = client.get_run(run["run_id"]).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    data_file = minari_root / "tests/hopper/random-v0/data/main_data.hdf5"
    assert dataset.name == "tests/hopper/random-v0"
    assert dataset.digest == hashlib.sha256(data_file.read_bytes()).hexdigest()[:10]
    assert run["tags.dataset_digest"] == dataset.digest  # a column of the exported results too
    assert json.loads(dataset.source)["uri"] == str(data_file)
    profile = json.loads(dataset.profile)
    from offline_rl.dataset.minari_source import read_minari_dataset

    data = read_minari_dataset("tests/hopper/random-v0")
    behaviour = 100 * (data.episode_returns().mean() + 20) / 320  # ref scores -20 / 300
    assert profile["transitions"] == len(data) and profile["episodes"] == 12
    assert profile["behaviour_normalized_score"] == pytest.approx(behaviour, abs=1e-3)
    assert inputs[0].tags[0].key == "mlflow.data.context" and inputs[0].tags[0].value == "training"
    # the run ends by saying how it went, where it is recorded, and the link that opens it
    summary = result.stdout.splitlines()
    assert f"Finished: {algo}-none-tests-hopper-random-v0-s0 (FINISHED), dataset tests/hopper/" \
           f"random-v0 (digest {dataset.digest})" in summary
    assert f"  final normalised score   {score:>6.1f}   (2 evaluation episodes at update 300)" in summary
    assert f"  behaviour policy         {behaviour:>6.1f}   (the dataset's own episodes, same " \
           f"scale: 0 = random, 100 = the expert)" in summary
    assert f"  MLflow run {run['run_id']} in sqlite:///{tmp_path / 'mlflow.db'}" in summary
    assert any(line.endswith(f"open http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}"
                             f"/runs/{run['run_id']}?workflowType=machine_learning")
               for line in summary)
    assert run["metrics.dataset/behaviour_score"] == pytest.approx(behaviour)
    found = client.search_runs([experiment.experiment_id],
                               "dataset.name = 'tests/hopper/random-v0'")
    assert [r.info.run_id for r in found] == [run["run_id"]]
    # the store lives where the config says, not in Hydra's per-run folder
    assert (tmp_path / "mlflow.db").exists()


def test_bad_config_value_names_key_value_and_allowed(tmp_path, minari_root):
    result = run_launch([*SMALL_RUN, "algo.tau=1.5"], tmp_path, minari_root)
    assert result.returncode == 2
    assert "algo.tau=1.5 is not allowed: expected a number in (0.0, 1.0]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # rejected before anything was created


def test_unknown_group_option_lists_the_available_ones(tmp_path, minari_root):
    result = run_launch(["algo=td4"], tmp_path, minari_root)
    assert result.returncode == 2
    assert "error: algo=td4: 'algo' has no option 'td4'; available: bc, cql, edac" in result.stderr
    assert "td3_bc" in result.stderr and "Traceback" not in result.stderr


def test_missing_official_dataset_fails_fast_offline(tmp_path, minari_root):
    start = time.monotonic()
    result = run_launch(["dataset=hopper-medium", "progress=false"], tmp_path, minari_root)
    elapsed = time.monotonic() - start
    assert result.returncode == 2
    assert elapsed < 30
    message = result.stderr
    assert "mujoco/hopper/medium-v0" in message
    assert str(minari_root) in message  # the path searched
    assert "dataset=hopper-medium-local" in message  # what to do instead
    assert "Traceback" not in message


def test_corrupt_dataset_file_is_reported(tmp_path, minari_root):
    import shutil

    from conftest import make_random_dataset

    make_random_dataset("tests/hopper/corrupt-v0", episodes=2)
    data_file = minari_root / "tests/hopper/corrupt-v0/data/main_data.hdf5"
    data_file.write_bytes(data_file.read_bytes()[:500])
    try:
        result = run_launch(["dataset=minari", "dataset.dataset_id=tests/hopper/corrupt-v0",
                             "network=small", "progress=false"], tmp_path, minari_root)
    finally:
        shutil.rmtree(minari_root / "tests/hopper/corrupt-v0")
    assert result.returncode == 2
    assert "tests/hopper/corrupt-v0" in result.stderr and "corrupt or truncated" in result.stderr


def test_nan_loss_fails_the_run_with_the_loss_and_step(tmp_path, minari_root):
    # a learning rate of 1e30 blows the critic up at once (a NaN in a dataset is refused earlier,
    # when it is read: tests/test_robustness.py)
    result = run_launch(["dataset=minari", "dataset.dataset_id=tests/hopper/random-v0", "network=small",
                         "updates=100", "log_every=20", "eval.episodes=0", "progress=false",
                         "algo.critic_lr=1e30"], tmp_path, minari_root)
    assert result.returncode == 2
    assert "loss 'actor_loss' became non-finite (NaN or inf) at update step 1" in result.stderr
    run = search_runs(tmp_path).iloc[0]
    assert run["status"] == "FAILED"
    assert "actor_loss" in run["tags.error"]


def test_an_existing_experiment_is_marked_model_training(tmp_path, new_store):
    """A store made before the mark (or by hand) gets it when the next run starts."""
    from offline_rl.tracker import EXPERIMENT_KIND_TAG, MODEL_TRAINING, MlflowTracker

    new_store(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("offline_rl")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment_by_name("offline_rl").tags
    MlflowTracker(store_dir=str(tmp_path)).ensure_store()
    assert client.get_experiment_by_name("offline_rl").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
