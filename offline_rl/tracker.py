"""Experiment tracking. MLflow by default: a sqlite store at one fixed place per checkout, or a
server when ``MLFLOW_TRACKING_URI`` (or ``tracker.tracking_uri``) names one.

A resumed run (``start(run_id=...)``) continues the same MLflow run: metrics it already holds (a
step at or below the last one stored for that key: logged between the checkpoint and the crash)
are not written twice, so every metric's history stays one value per step.

A server that does not answer when a run starts fails it within seconds (``ensure_store``: one
message naming the URI). Lost during a run, it never stops training: with a spool attached
(``use_spool``, beside the run's checkpoints) what the run logs is kept on disk, with a warning, and
delivered in order when the server answers again (tried every ``retry_every_s``, backing off), at
the end of the run (waiting up to ``wait_for_server_s`` for it, then setting the final status), or
when the same command runs again. MLflow's own HTTP retries are bounded (``HTTP_LIMITS``) so a
call to a dead server costs seconds, not minutes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from offline_rl.errors import TrackerUnreachableError
from offline_rl.locks import FileLock
from offline_rl.options import non_negative, optional, positive_number, text
from offline_rl.spool import Spool, is_unreachable, reason

# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces); tagged as a
# model-training experiment it opens on the runs table
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
MAX_PARAMS_PER_CALL = 100
MAX_METRICS_PER_CALL = 1000
MAX_PARAM_LENGTH = 6000
# MLflow's defaults retry a failed HTTP call 7 times with exponential backoff and 120 s timeouts
# (minutes per call against a dead server); ours, unless the environment sets them: one retry,
# 10 s timeouts. What a call could not deliver waits in the spool instead.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_RETRY_EVERY_S = 300.0


def bound_http_retries() -> None:
    """MLflow's HTTP retries bounded by ``HTTP_LIMITS`` (a user's own settings win): a server that
    does not answer is known in seconds, not minutes."""
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)


def default_store_dir() -> Path:
    """The checkout's sqlite store folder: ``$OFFLINE_RL_ROOT/mlflow`` (launch.py sets it to the
    checkout), else ``./mlflow``."""
    return Path(os.environ.get("OFFLINE_RL_ROOT", ".")) / "mlflow"


def mark_model_training(client, experiment) -> None:
    """Tag an experiment (created before the tag existed, or by hand) as model training."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def _sqlite_tables(path: Path) -> set[str] | None:
    """The tables of the sqlite file ``path``; None when it is not a readable sqlite database."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
    except sqlite3.Error:
        return None


def _run_count(path: Path) -> int:
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("select count(*) from runs").fetchone()[0])
    except sqlite3.Error:
        return 0


def prepare_sqlite_store(path: Path) -> None:
    """A sqlite store that is whole, or an error naming it. Called under the store's lock.

    - No file: the store is built beside it (``<name>.creating-<pid>``, MLflow's migrations run
      there) and renamed into place: a process killed while creating it leaves a stray temporary
      file, never a half-migrated ``mlflow.db`` (before, every later command failed on it with
      ``table _alembic_tmp_tags already exists``).
    - A half-made store (a migration's ``_alembic_tmp_*`` table left behind, or no
      ``alembic_version``) with no runs in it -- what such a kill leaves -- is moved aside to
      ``<name>.broken-<time>`` and built again, with a warning.
    - A half-made store that holds runs is not touched: one error saying so."""
    if path.exists() and path.stat().st_size > 0:
        tables = _sqlite_tables(path)
        if tables is not None and "alembic_version" in tables and not any(
                t.startswith("_alembic_tmp_") for t in tables):
            return
        runs = _run_count(path) if tables else 0
        if tables is None or runs:
            what = "is not a sqlite database" if tables is None else (
                f"holds {runs} run(s) but its schema migration was interrupted")
            raise TrackerUnreachableError(
                f"the MLflow store {path} {what}; move it away (or repair it with `mlflow db "
                f"upgrade sqlite:///{path}` on a copy) and run the command again")
        aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        _warn(f"the MLflow store {path} was left half-made (its creation was interrupted) and held "
              f"no runs: moved it to {aside} and created it again")
    from mlflow.tracking import MlflowClient

    building = path.with_name(f"{path.name}.creating-{os.getpid()}")
    building.unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments()
    _dispose_engines(building)
    os.replace(building, path)


def _dispose_engines(path: Path) -> None:
    """Close MLflow's cached database engine of the temporary store (its file is renamed)."""
    try:
        from mlflow.store.db import utils

        for engine in list(getattr(utils, "_engine_cache", {}).values()):
            if str(path) in str(engine.url):
                engine.dispose()
    except Exception:  # noqa: BLE001 -- best effort; the rename works with an engine open too
        pass


_STARTED: list[str] = []  # stores this process started (or continued) a run in


def runs_started() -> bool:
    """Whether this process has started or continued an MLflow run (a run or a sweep's parent):
    what launch.py's Ctrl-C line may claim was not recorded."""
    return bool(_STARTED)


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
    def search(self, filter_string: str) -> list:
        return []
    def run_params(self, run_id: str) -> dict[str, str]:
        return {}
    def run_tags(self, run_id: str) -> dict[str, str]:
        return {}
    def mark_killed(self, run_id: str, reason: str) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def download_artifact(self, run_id: str, name: str, dst: str | Path) -> Path:
        raise FileNotFoundError("tracker=none keeps no runs: give a checkpoint file path instead "
                                "of an MLflow run id")
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_dataset(self, record) -> None: ...
    def delete_tags(self, keys: list[str]) -> None: ...
    def use_spool(self, path: str | Path) -> None: ...
    def deliver_spool(self) -> None: ...
    def pending(self) -> int:
        return 0
    def flush(self) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def finish(self, status: str = "FINISHED", error: str | None = None) -> None: ...


class MlflowTracker:
    """Metrics are buffered and written with ``log_batch``; one call per flush, not per metric."""

    OPTIONS = {"experiment": text("an MLflow experiment name"),
               "tracking_uri": optional(text("an MLflow tracking URI"),
                                        "the sqlite store in tracker.store_dir"),
               "store_dir": text("a folder"), "retry_every_s": positive_number(),
               "wait_for_server_s": non_negative()}

    def __init__(self, experiment: str = "offline_rl", tracking_uri: str | None = None,
                 store_dir: str | None = None, retry_every_s: float = 30.0,
                 wait_for_server_s: float = 900.0):
        self.experiment = experiment
        if tracking_uri and not tracking_uri.startswith("sqlite:///"):
            self.tracking_uri, self.artifact_location = tracking_uri, None  # the server's
        else:  # a sqlite store keeps its artifacts beside it (MLflow's default: ./mlruns of the cwd)
            database = (Path(tracking_uri[len("sqlite:///"):]) if tracking_uri
                        else Path(store_dir or "mlflow") / "mlflow.db").resolve()
            store = database.parent
            # a given URI is kept as written: it keys the runs' checkpoint folders (store_key)
            self.tracking_uri = tracking_uri or f"sqlite:///{database}"
            self.artifact_location = (store / "artifacts").as_uri()
            self._store_dir = store
        self.run_id: str | None = None
        self.experiment_id: str | None = None  # set by start()
        self._buffer: list = []
        self._logged_steps: dict[str, int] = {}  # resumed run: last step stored per metric
        self._client = None
        if urlparse(self.tracking_uri).scheme in ("http", "https"):
            bound_http_retries()
            # urllib3 logs each retry; a server that does not answer is reported by us, once
            logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        if self.tracking_uri.startswith("sqlite:"):
            # MLflow logs a sqlite error (a full disk) with its whole traceback before raising it;
            # we report it ourselves, in one line (and spool what could not be written)
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self.spool: Spool | None = None
        self.retry_every_s, self.wait_for_server_s = float(retry_every_s), float(wait_for_server_s)
        self._offline = False  # the server stopped answering; records go to the spool
        self._retry_delay = self.retry_every_s
        self._retry_at = 0.0

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @contextlib.contextmanager
    def _answering(self):
        """A server that does not answer, as one message naming it (exit status 2 in launch.py)."""
        try:
            yield
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            if self.is_file_store:
                raise TrackerUnreachableError(
                    f"the MLflow store {self.tracking_uri} does not take writes ({reason(exc)}); "
                    f"free space on its disk or make it writable, or point tracker.store_dir (or "
                    f"MLFLOW_TRACKING_URI) at another store (tracker=none records nothing)") from None
            raise TrackerUnreachableError(
                f"the MLflow tracking server {self.tracking_uri} does not answer ({reason(exc)}); "
                f"start it, or point MLFLOW_TRACKING_URI (or tracker.tracking_uri) at a server that "
                f"runs (tracker=none records nothing)") from None

    @property
    def is_file_store(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")

    @property
    def _down(self) -> str:
        """How the store is unavailable, for messages: a server does not answer, a file does
        not take writes (a full disk, a read-only file system)."""
        return (f"the MLflow store {self.tracking_uri} does not take writes" if self.is_file_store
                else f"the MLflow server {self.tracking_uri} does not answer")

    def _store_lock(self):
        """A sqlite store is created under a lock beside its file: its migrations break when
        several processes create a fresh store at once. A server serialises that itself."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return contextlib.nullcontext()
        database = Path(self.tracking_uri[len("sqlite:///"):])
        return FileLock(database.parent / f"{database.name}.lock")

    def ensure_store(self) -> str:
        """Create the store and the experiment (once, before any job starts), or check that the
        server answers; one message naming the URI when it does not."""
        with self._answering():  # a read-only or full disk: one message, here
            if self.artifact_location is not None:
                self._store_dir.mkdir(parents=True, exist_ok=True)
        with self._answering(), self._store_lock():
            if self.tracking_uri.startswith("sqlite:///"):
                prepare_sqlite_store(Path(self.tracking_uri[len("sqlite:///"):]))
            return self._ensure_experiment()

    def _ensure_experiment(self) -> str:
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
        experiment_id = self.experiment_id = self.ensure_store()
        _STARTED.append(self.tracking_uri)
        with self._answering():
            return self._start(experiment_id, run_name, params, tags, run_id, parent_run_id)

    def _start(self, experiment_id: str, run_name: str, params: dict[str, Any],
               tags: dict[str, Any], run_id: str | None, parent_run_id: str | None) -> str:
        all_tags = {str(k): str(v)[:5000] for k, v in tags.items()}
        all_tags["mlflow.runName"] = run_name
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            run = self.client.get_run(run_id)
            self._log_params({k: v for k, v in params.items() if str(k) not in run.data.params})
            self.client.log_batch(run_id, tags=_run_tags(all_tags))
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
            with self._answering():
                run = self.client.get_run(run_id)
        except TrackerUnreachableError:
            raise
        except Exception:
            return None
        if run.info.lifecycle_stage == "deleted":
            return None
        return run.info.status

    def child_statuses(self, parent_run_id: str) -> list[str]:
        """Per job of the sweep (its run identity), the status of its best attempt: FINISHED if
        one finished (an attempt killed before its first checkpoint is superseded by the next)."""
        best: dict[str, str] = {}
        for run in self.search(f"tags.mlflow.parentRunId = '{parent_run_id}'"):
            key = run.data.tags.get("run_identity", run.info.run_id)
            if best.get(key) != "FINISHED":
                best[key] = run.info.status
        return list(best.values())

    def search(self, filter_string: str) -> list:
        """The experiment's runs matching an MLflow filter string, newest first."""
        experiment_id = self.ensure_store()
        with self._answering():
            return self.client.search_runs([experiment_id], filter_string=filter_string,
                                           max_results=10000, order_by=["attributes.start_time DESC"])

    def run_params(self, run_id: str) -> dict[str, str]:
        with self._answering():
            return dict(self.client.get_run(run_id).data.params)

    def run_tags(self, run_id: str) -> dict[str, str]:
        with self._answering():
            return dict(self.client.get_run(run_id).data.tags)

    def mark_killed(self, run_id: str, reason: str) -> None:
        """End a run that no process runs any more (KILLED), saying why in its ``killed`` tag."""
        with self._answering():
            self.client.set_tag(run_id, "killed", reason[:5000])
            self.client.set_terminated(run_id, status="KILLED")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        step = int(step)
        stored = self._logged_steps
        self._buffer.extend((k, float(v), now, step) for k, v in metrics.items()
                            if not stored or step > stored.get(k, -1))
        if len(self._buffer) >= MAX_METRICS_PER_CALL:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_METRICS_PER_CALL], self._buffer[MAX_METRICS_PER_CALL:]
            self._send({"kind": "metrics", "metrics": chunk})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._send({"kind": "tags", "tags": {str(k): str(v)[:5000] for k, v in tags.items()}})

    def delete_tags(self, keys: list[str]) -> None:
        """Remove these tags from the run where it has them (stale ones, once it succeeded)."""
        self._send({"kind": "delete_tags", "keys": list(keys)})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._send({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

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
            inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
            for attempt in range(5):
                try:
                    self.client.log_inputs(self.run_id, inputs)
                    break
                except Exception as exc:  # noqa: BLE001 -- MlflowException wrapping the store's
                    # sqlite inserts the experiment's dataset row on first use: two runs of a sweep
                    # starting together race for it, and the loser's insert violates its unique
                    # key. The row exists then; logging again links this run to it.
                    if "UNIQUE constraint failed" not in str(exc) or attempt == 4:
                        raise
                    time.sleep(0.1 * (attempt + 1))
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
        """Set the run's final status. With records waiting for an unreachable server, a FINISHED
        run waits up to ``wait_for_server_s`` for it (then raises, the records kept); a FAILED or
        KILLED one leaves them for the next run of the same command (a signal wants a quick exit)."""
        if self.run_id is None:
            return
        self.flush()
        if error:
            self.set_tags({"error": error})
        self._send({"kind": "status", "status": status})
        if not self.pending():
            return
        if status != "FINISHED":
            _warn(f"{self._down}: the run's last records (status {status}) are kept in "
                  f"{self.spool.path}; the same command delivers them when it runs again")
            return
        self._wait_for_server()

    # ----- delivery: at once, or through the spool while the server does not answer -----------
    def use_spool(self, path: str | Path) -> None:
        """Keep what the server cannot take in the JSON-lines file ``path`` (and deliver it)."""
        self.spool = Spool(path)

    def _deliver(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        run_id, kind = record["run_id"], record["kind"]
        if kind == "metrics":
            self.client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in record["metrics"]])
        elif kind == "tags":
            self.client.log_batch(run_id, tags=_run_tags(record["tags"]))
        elif kind == "delete_tags":
            present = self.client.get_run(run_id).data.tags
            for key in record["keys"]:
                if key in present:
                    self.client.delete_tag(run_id, key)
        elif kind == "artifact":
            self.client.log_artifact(run_id, record["path"], record["artifact_path"])
        elif kind == "status":
            self.client.set_terminated(run_id, status=record["status"])
        else:
            raise ValueError(f"unknown tracking record {kind!r}")

    def _send(self, record: dict[str, Any]) -> None:
        record = {"run_id": self.run_id, **record}
        if self.spool is None:
            self._deliver(record)
            return
        if self._offline and time.monotonic() < self._retry_at:
            self._keep(record)
            return
        try:
            self._deliver_spooled()  # what waits goes first, in order
            self._deliver(record)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self._went_offline(exc)
            self._keep(record)

    def _keep(self, record: dict[str, Any]) -> None:
        """Into the spool; when the spool cannot be written either (its disk is full too), one
        error: the run stops, its last checkpoint is what it keeps."""
        try:
            self.spool.append(record)
        except OSError as exc:
            raise TrackerUnreachableError(
                f"{self._down}, and its spool {self.spool.path} cannot be written either "
                f"({type(exc).__name__}: {exc}); the run stops here with the records it could "
                f"keep and its last checkpoint: free space, then run the same command again") from None

    def _deliver_spooled(self) -> int:
        """Deliver the spool's records in order; on failure keep the undelivered ones and raise."""
        records = self.spool.records() if self.spool is not None else []
        for i, record in enumerate(records):
            try:
                self._deliver(record)
            except Exception:
                self.spool.keep_only(records[i:])
                raise
        if records:
            self.spool.clear()
        if self._offline:
            _warn(f"{self._down.replace('does not answer', 'answers again').replace('does not take writes', 'takes writes again')}: "
                  f"delivered {len(records)} record(s) kept while it did not")
        self._offline, self._retry_delay = False, self.retry_every_s
        return len(records)

    def pending(self) -> int:
        """How many records wait in the spool for the server."""
        return len(self.spool.records()) if self.spool is not None else 0

    def deliver_spool(self) -> None:
        """Deliver what an earlier process of this run left in the spool, before anything else;
        one message naming the server when it does not answer."""
        if self.pending():
            with self._answering():
                count = self._deliver_spooled()
            print(f"delivered {count} record(s) that an earlier run of this command kept in "
                  f"{self.spool.path} while the MLflow store could not take them", file=sys.stderr,
                  flush=True)

    def _went_offline(self, exc: BaseException) -> None:
        if not self._offline:
            _warn(f"{self._down} ({reason(exc)}); training continues and what the run logs is "
                  f"kept in {self.spool.path} until it can be delivered")
        self._offline = True
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(2 * self._retry_delay, MAX_RETRY_EVERY_S)

    def _wait_for_server(self) -> None:
        _warn(f"training is over; waiting up to {self.wait_for_server_s:.0f} s for the MLflow store "
              f"{self.tracking_uri} to take the {self.pending()} record(s) kept in "
              f"{self.spool.path}, the run's final status among them")
        deadline = time.monotonic() + self.wait_for_server_s
        while True:
            try:
                self._deliver_spooled()
                return
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise TrackerUnreachableError(
                        f"{self._down} ({reason(exc)}), {self.wait_for_server_s:.0f} s after "
                        f"training ended; the run's metrics, artifacts and final status are kept in "
                        f"{self.spool.path}: run the same command again once it does, it delivers "
                        f"them and completes the run") from None
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


def _run_tags(tags: dict[str, Any]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(str(k), str(v)[:5000]) for k, v in tags.items()]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
