"""Experiment tracking. MLflow by default: a sqlite store at one fixed place per checkout, or a
server when ``MLFLOW_TRACKING_URI`` (or ``tracker.tracking_uri``) names one.

A resumed run (``start(run_id=...)``) continues the same MLflow run: metrics it already holds (a
step at or below the last one stored for that key: logged between the checkpoint and the crash)
are not written twice, so every metric's history stays one value per step."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces); tagged as a
# model-training experiment it opens on the runs table
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
MAX_PARAMS_PER_CALL = 100
MAX_METRICS_PER_CALL = 1000
MAX_PARAM_LENGTH = 6000


def default_store_dir() -> Path:
    """The checkout's sqlite store folder: ``$OFFLINE_RL_ROOT/mlflow`` (launch.py sets it to the
    checkout), else ``./mlflow``."""
    return Path(os.environ.get("OFFLINE_RL_ROOT", ".")) / "mlflow"
def mark_model_training(client, experiment) -> None:
    """Tag an experiment (created before the tag existed, or by hand) as model training."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


class NullTracker:
    """Tracks nothing (``tracker=none``): for quick debugging runs."""

    run_id: str | None = None
    tracking_uri = None

    def ensure_store(self) -> None: ...
    def start(self, run_name: str, params: dict, tags: dict, run_id: str | None = None,
              parent_run_id: str | None = None) -> str | None:
        return None
    def run_status(self, run_id: str) -> str | None:
        return None
    def child_statuses(self, parent_run_id: str) -> list[str]:
        return []
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def download_artifact(self, run_id: str, name: str, dst: str | Path) -> Path:
        raise FileNotFoundError("tracker=none keeps no runs: give a checkpoint file path instead "
                                "of an MLflow run id")
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_dataset(self, record) -> None: ...
    def flush(self) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def finish(self, status: str = "FINISHED", error: str | None = None) -> None: ...


class MlflowTracker:
    """Metrics are buffered and written with ``log_batch``; one call per flush, not per metric."""

    def __init__(self, experiment: str = "offline_rl", tracking_uri: str | None = None,
                 store_dir: str | None = None):
        self.experiment = experiment
        if tracking_uri:
            self.tracking_uri, self.artifact_location = tracking_uri, None
        else:
            store = Path(store_dir or "mlflow").resolve()
            self.tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
            self.artifact_location = (store / "artifacts").as_uri()
            self._store_dir = store
        self.run_id: str | None = None
        self._buffer: list = []
        self._logged_steps: dict[str, int] = {}  # resumed run: last step stored per metric
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def ensure_store(self) -> str:
        """Create the store and the experiment (once, before any job starts: sqlite migrations
        break when several processes create a fresh store at the same time)."""
        if self.artifact_location is not None:
            self._store_dir.mkdir(parents=True, exist_ok=True)
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            mark_model_training(self.client, experiment)
            return experiment.experiment_id
        try:
            experiment_id = self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_location,
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
            return experiment_id
        except Exception:  # created meanwhile by another process
            experiment = self.client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            mark_model_training(self.client, experiment)
            return experiment.experiment_id

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, Any],
              run_id: str | None = None, parent_run_id: str | None = None) -> str:
        """Start a new run, or continue ``run_id`` (a resumed job keeps its run: status back to
        RUNNING, params it lacks added, metrics already stored not logged again)."""
        experiment_id = self.ensure_store()
        all_tags = {str(k): str(v)[:5000] for k, v in tags.items()}
        all_tags["mlflow.runName"] = run_name
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            run = self.client.get_run(run_id)
            self._log_params({k: v for k, v in params.items() if str(k) not in run.data.params})
            self.set_tags(all_tags)
            self._logged_steps = self._stored_steps(run)
            return run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        self._logged_steps = {}
        self._log_params(params)
        return self.run_id

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS_PER_CALL])

    def _stored_steps(self, run) -> dict[str, int]:
        """The last step stored for each metric of ``run`` (one history query per key)."""
        steps = {}
        for key in run.data.metrics:
            history = self.client.get_metric_history(run.info.run_id, key)
            if history:
                steps[key] = max(m.step for m in history)
        return steps

    def run_status(self, run_id: str) -> str | None:
        """The run's status (RUNNING, FINISHED, ...), or None when the store has no such run."""
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return None
        if run.info.lifecycle_stage == "deleted":
            return None
        return run.info.status

    def child_statuses(self, parent_run_id: str) -> list[str]:
        experiment_id = self.ensure_store()
        runs = self.client.search_runs([experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                       max_results=10000)
        return [r.info.status for r in runs]

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(step)
        stored = self._logged_steps
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items()
                            if not stored or step > stored.get(k, -1))
        if len(self._buffer) >= MAX_METRICS_PER_CALL:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_METRICS_PER_CALL], self._buffer[MAX_METRICS_PER_CALL:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(str(k), str(v)[:5000]) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, record) -> None:
        """The run's dataset as an MLflow dataset input (the runs table's Dataset column, and
        ``dataset.name`` / ``dataset.digest`` in run searches): the Minari id as its name, the
        data file's digest, the file as its source, size and behaviour score as its profile.
        The behaviour policy's normalised score is also a metric (``dataset/behaviour_score``).
        Logging the same dataset again (a resumed run) adds nothing."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        if record.source == "in-memory":
            source = CodeDatasetSource({"dataset": record.dataset_id})
        else:
            with warnings.catch_warnings():  # MLflow registers its local source class twice and
                warnings.simplefilter("ignore")  # warns that a path "can be interpreted" as both
                source = resolve_dataset_source(record.source)
        fields = MetaDataset(source, name=record.dataset_id, digest=record.digest).to_dict()
        dataset = Dataset(name=fields["name"], digest=fields["digest"],
                          source_type=fields["source_type"], source=fields["source"],
                          profile=json.dumps(record.profile))
        run = self.client.get_run(self.run_id)
        if not any(d.dataset.name == dataset.name and d.dataset.digest == dataset.digest
                   for d in run.inputs.dataset_inputs):
            self.client.log_inputs(self.run_id, [DatasetInput(
                dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
        if record.behaviour_score is not None:  # a resumed run skips it when already stored
            self.log_metrics({"dataset/behaviour_score": record.behaviour_score}, 0)

    def download_artifact(self, run_id: str, name: str, dst: str | Path) -> Path:
        """Run ``run_id``'s artifact ``name`` into the folder ``dst``; FileNotFoundError naming
        what is missing (no such run in this store, or no such artifact)."""
        if self.run_status(run_id) is None:
            raise FileNotFoundError(f"no MLflow run {run_id!r} in the store {self.tracking_uri}")
        try:
            return Path(self.client.download_artifacts(run_id, name, str(dst)))
        except Exception as exc:
            raise FileNotFoundError(f"MLflow run {run_id} has no artifact {name!r} (a run that "
                                    f"did not finish has none): {type(exc).__name__}") from None

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.run_id is None:
            return
        self.flush()
        if error:
            self.set_tags({"error": error})
        self.client.set_terminated(self.run_id, status=status)
