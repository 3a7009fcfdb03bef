"""Runs and their metric histories from an MLflow store (sqlite file or server) as tidy frames.

``load_runs`` selects runs (a sweep's parent run id, an experiment, and/or a filter string) and
returns a :class:`RunSet`:

* ``runs``: one row per run. Columns: ``run_id``, ``run_name``, ``status``, ``start_time``,
  ``parent_run_id``; every tag that is not ``mlflow.*`` under its own name (``algo``, ``pretrain``,
  ``dataset``, ``network``, ``finetune``, ``seed``, ``dataset_id``, ``sweep``, ``overrides``, swept
  axis tags); every param (the flattened resolved Hydra config) under its dotted name
  (``pretrain.lambda``, ``network.actor_layer_norm``, ``updates``; a tag of the same name wins);
  the phase boundaries ``phase_start/<phase>`` / ``phase_end/<phase>`` and the other single-value
  metrics (``finetune/offline_score``) from the runs' latest metrics; and derived columns
  ``dataset_name`` (the dataset choice, or its id for ``dataset=minari``), ``layernorm`` (which of
  actor / critic have LayerNorm) and ``pretrain_steps`` (the global step where offline RL starts,
  i.e. the updates spent pre-training).
* ``metrics``: one row per (run, metric, step) with ``value`` and ``timestamp``, joined with every
  column of ``runs``.

Only the metric histories asked for are fetched (default ``eval/normalized_score_mean``). On a
sqlite store one query per metric key fetches all runs (``get_metric_history_bulk``); on a server
``MlflowClient.get_metric_history`` runs per (run, key) in a thread pool. What was fetched is cached
on disk per run, keyed by run id and the run's last update (status, end time, newest metric
timestamp), so a finished sweep is fetched once.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shlex
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from offline_rl.metric_names import SCORE

GROUPS = ("algo", "pretrain", "dataset", "network", "finetune")
DEFAULT_EXPERIMENT = "offline_rl"
DEFAULT_CACHE = Path(os.environ.get("OFFLINE_RL_ANALYSIS_CACHE",
                                    Path.home() / ".cache" / "offline_rl" / "analysis"))
_BULK_CHUNK = 500  # run ids per sqlite IN (...) query
_RUN_COLUMNS = ("run_id", "run_name", "status", "start_time", "end_time", "experiment_id",
                "parent_run_id")


class AnalysisError(Exception):
    """A selection or option that cannot be analysed; the message says what to change."""


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the checkout's store as ``launch.py`` writes it:
    ``sqlite:///$OFFLINE_RL_ROOT/mlflow/mlflow.db`` (root defaults to this checkout)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path(os.environ.get("OFFLINE_RL_ROOT", Path(__file__).resolve().parents[1]))
    return f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve()}"


def make_client(tracking_uri: str | None = None):
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.exists():  # reading a store never creates one
            raise AnalysisError(f"no MLflow store at {path} (tracking URI {uri}); pass "
                                f"--tracking-uri or set MLFLOW_TRACKING_URI")
    if uri.startswith(("http://", "https://")):
        from offline_rl.tracker import bound_http_retries

        bound_http_retries()
    return MlflowClient(tracking_uri=uri)


@dataclass
class RunSet:
    """Selected runs (``runs``), their tidy metric histories (``metrics``) and what was odd about
    them (``warnings``: skipped runs, duplicate steps, missing metrics)."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    cache: Path | None = None
    param_columns: list[str] = field(default_factory=list)  # run columns that are params

    @property
    def metric_keys(self) -> list[str]:
        return sorted(self.metrics["metric"].unique()) if len(self.metrics) else []

    def history(self, metric: str = SCORE) -> pd.DataFrame:
        """Rows of one metric; loads it first if it was not loaded."""
        if metric not in self.metric_keys:
            self.add_metrics([metric])
        return self.metrics[self.metrics["metric"] == metric]

    def add_metrics(self, keys: Iterable[str]) -> "RunSet":
        """Fetch more metric histories for the same runs (in place; also returned)."""
        keys = [k for k in keys if k not in self.metric_keys]
        if not keys or self.tracking_uri is None or not len(self.runs):
            return self
        client = make_client(self.tracking_uri)
        sigs = dict(zip(self.runs["run_id"], self.runs["_signature"]))
        long, notes = _fetch_histories(client, self.tracking_uri, sigs, keys, self.cache)
        self.warnings.extend(notes)
        extra = long.merge(self.runs, on="run_id", how="left")
        self.metrics = pd.concat([self.metrics, extra], ignore_index=True)
        return self

    def select(self, **equals) -> "RunSet":
        """The runs whose columns equal the given values (a list/tuple/set means any of them)."""
        mask = pd.Series(True, index=self.runs.index)
        for column, value in equals.items():
            if column not in self.runs:
                raise AnalysisError(f"no column {column!r}; columns: {sorted(self.runs.columns)}")
            values = value if isinstance(value, (list, tuple, set)) else [value]
            col = self.runs[column]
            mask &= col.isin(values) | col.astype(str).isin([str(v) for v in values])
        runs = self.runs[mask]
        metrics = self.metrics[self.metrics["run_id"].isin(runs["run_id"])]
        return RunSet(runs.reset_index(drop=True), metrics.reset_index(drop=True),
                      list(self.warnings), self.parent_run_id, self.tracking_uri, self.cache,
                      list(self.param_columns))


def _signature(run) -> str:
    latest = [m.timestamp for m in getattr(run.data, "_metric_objs", [])]
    return f"{run.info.status}|{run.info.end_time}|{max(latest, default=0)}|{len(latest)}"


def _numeric(series: pd.Series) -> pd.Series:
    """Params are stored as strings: make a column numeric when every value parses."""
    values = series.dropna()
    if values.empty:
        return series
    try:
        pd.to_numeric(values)
    except (ValueError, TypeError):
        return series
    out = pd.to_numeric(series, errors="coerce")
    if out.notna().all() and (out == out.round()).all() and not values.astype(str).str.contains(
            r"[.eE]").any():
        return out.astype("int64")
    return out


def _truthy(value) -> bool | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value).strip().lower() in ("true", "1", "yes")


def _layernorm_label(actor, critic) -> str | float:
    a, c = _truthy(actor), _truthy(critic)
    if a is None and c is None:
        return np.nan
    return {(True, True): "actor+critic", (True, False): "actor", (False, True): "critic"}.get(
        (bool(a), bool(c)), "none")


def runs_frame(runs: Sequence) -> pd.DataFrame:
    """One row per MLflow ``Run``: info, tags, params, latest metrics, derived columns."""
    rows = []
    for run in runs:
        info, data = run.info, run.data
        row: dict = {}
        row.update(data.params)
        row.update({f"{k}": v for k, v in data.metrics.items()
                    if k.startswith(("phase_start/", "phase_end/")) or k.endswith("offline_score")})
        row.update({k: v for k, v in data.tags.items() if not k.startswith("mlflow.")})
        row.update(run_id=info.run_id, run_name=data.tags.get("mlflow.runName", info.run_name),
                   status=info.status, start_time=info.start_time, end_time=info.end_time,
                   experiment_id=info.experiment_id,
                   parent_run_id=data.tags.get("mlflow.parentRunId"), _signature=_signature(run))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=[*_RUN_COLUMNS, "_signature"])
    for column in frame.columns:
        if column in ("run_id", "run_name", "status", "parent_run_id", "_signature",
                      "experiment_id", "overrides", "sweep", *GROUPS, "dataset_id"):
            continue
        frame[column] = _numeric(frame[column])
    if "dataset" in frame:
        ds = frame["dataset"].astype(str)
        ids = frame["dataset_id"].astype(str) if "dataset_id" in frame else ds
        frame["dataset_name"] = np.where(ds == "minari", ids, ds)
    if "network.actor_layer_norm" in frame or "network.critic_layer_norm" in frame:
        frame["layernorm"] = [
            _layernorm_label(a, c) for a, c in zip(
                frame.get("network.actor_layer_norm", pd.Series([None] * len(frame))),
                frame.get("network.critic_layer_norm", pd.Series([None] * len(frame))))]
    if "phase_start/offline_rl" in frame:
        frame["pretrain_steps"] = frame["phase_start/offline_rl"]
    front = [c for c in (*_RUN_COLUMNS, *GROUPS, "dataset_name", "seed") if c in frame]
    return frame[front + [c for c in frame.columns if c not in front]]


# ---------------------------------------------------------------------------------------- fetch

def _cache_file(cache: Path, tracking_uri: str, run_id: str) -> Path:
    store = hashlib.sha1(tracking_uri.encode()).hexdigest()[:12]
    return cache / store / f"{run_id}.pkl"


def _read_cache(path: Path, signature: str) -> dict[str, pd.DataFrame]:
    try:
        with path.open("rb") as f:
            entry = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return {}
    return entry["histories"] if entry.get("signature") == signature else {}


def _write_cache(path: Path, signature: str, histories: dict[str, pd.DataFrame]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        pickle.dump({"signature": signature, "histories": histories}, f)
    os.replace(tmp, path)


def _history_frame(metrics) -> pd.DataFrame:
    return pd.DataFrame({"step": np.fromiter((m.step for m in metrics), dtype=np.int64),
                         "value": np.fromiter((m.value for m in metrics), dtype=np.float64),
                         "timestamp": np.fromiter((m.timestamp for m in metrics), dtype=np.int64)})


def _fetch_uncached(client, pairs: list[tuple[str, str]], max_workers: int,
                    bulk: bool | None = None) -> dict[tuple[str, str], pd.DataFrame]:
    """Histories for (run_id, key) pairs: one query per key for all runs on a sqlite / SQL store
    (``bulk``; auto-detected when None), else one ``get_metric_history`` call per pair in a
    thread pool (a tracking server: the calls are network-bound)."""
    out: dict[tuple[str, str], pd.DataFrame] = {}
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if bulk is None:
        bulk = type(store).__name__ == "SqlAlchemyStore" and hasattr(store, "get_metric_history_bulk")
    if bulk:
        by_key: dict[str, list[str]] = {}
        for run_id, key in pairs:
            by_key.setdefault(key, []).append(run_id)
        for key, run_ids in by_key.items():
            found: dict[str, list] = {r: [] for r in run_ids}
            for i in range(0, len(run_ids), _BULK_CHUNK):
                for item in store.get_metric_history_bulk(run_ids[i:i + _BULK_CHUNK], key,
                                                          max_results=2**62):
                    found[item.run_id].append(item)
            for run_id, metrics in found.items():
                out[(run_id, key)] = _history_frame(metrics)
        return out
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        results = pool.map(lambda p: client.get_metric_history(*p), pairs)
        for pair, metrics in zip(pairs, results):
            out[pair] = _history_frame(metrics)
    return out


def _fetch_histories(client, tracking_uri: str, signatures: dict[str, str], keys: Sequence[str],
                     cache: Path | None, max_workers: int = 8) -> tuple[pd.DataFrame, list[str]]:
    """Tidy (run_id, metric, step, value, timestamp) rows for every run x key, deduplicated."""
    histories: dict[str, dict[str, pd.DataFrame]] = {}
    missing: list[tuple[str, str]] = []
    for run_id, sig in signatures.items():
        cached = _read_cache(_cache_file(cache, tracking_uri, run_id), sig) if cache else {}
        histories[run_id] = cached
        missing += [(run_id, k) for k in keys if k not in cached]
    if missing:
        fetched = _fetch_uncached(client, missing, max_workers)
        for (run_id, key), frame in fetched.items():
            histories[run_id][key] = frame
        if cache:
            for run_id in {r for r, _ in missing}:
                _write_cache(_cache_file(cache, tracking_uri, run_id), signatures[run_id],
                             histories[run_id])
    parts, notes = [], []
    for run_id, by_key in histories.items():
        for key in keys:
            frame = by_key.get(key)
            if frame is None or frame.empty:
                continue
            frame = frame.sort_values(["step", "timestamp"], kind="stable")
            dup = frame.duplicated("step", keep="last")
            if dup.any():
                notes.append(f"run {run_id}: {int(dup.sum())} duplicate step(s) of {key} (a resumed "
                             f"run logs a step again); kept the latest value of each step")
                frame = frame[~dup]
            parts.append(frame.assign(run_id=run_id, metric=key))
    if parts:
        long = pd.concat(parts, ignore_index=True)[["run_id", "metric", "step", "value", "timestamp"]]
    else:
        long = pd.DataFrame({"run_id": pd.Series(dtype=str), "metric": pd.Series(dtype=str),
                             "step": pd.Series(dtype="int64"), "value": pd.Series(dtype=float),
                             "timestamp": pd.Series(dtype="int64")})
    return long, notes


# ---------------------------------------------------------------------------------------- select

def _search(client, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_runs(tracking_uri: str | None = None, *, parent_run_id: str | None = None,
              experiment: str | Sequence[str] | None = None, filter_string: str = "",
              sweep: str | None = None, metrics: Sequence[str] = (SCORE,),
              statuses: Sequence[str] | None = ("FINISHED",), cache: bool | str | Path = True,
              max_workers: int = 8) -> RunSet:
    """Select runs and load the metric histories ``metrics`` (losses too, if named).

    Selection: ``parent_run_id`` (the sweep's children, in the parent's experiment), else the
    ``experiment`` name(s) (default ``offline_rl``); narrowed by ``sweep`` (tag) and
    ``filter_string`` (MLflow search syntax, e.g. ``"tags.pretrain = 'ac'"``). Runs whose status is
    not in ``statuses`` (None: keep all) and sweep parent runs are left out; the first are reported
    in ``warnings``. ``cache``: True for the default folder (``$OFFLINE_RL_ANALYSIS_CACHE`` or
    ``~/.cache/offline_rl/analysis``), a folder, or False.
    """
    found, warnings, parent_run_id, uri, client = select_runs(
        tracking_uri, parent_run_id=parent_run_id, experiment=experiment,
        filter_string=filter_string, sweep=sweep, statuses=statuses)
    runs = runs_frame(found)
    cache_dir = None if cache is False else (DEFAULT_CACHE if cache is True else Path(cache))
    long, notes = _fetch_histories(client, uri, dict(zip(runs["run_id"], runs["_signature"])),
                                   list(metrics), cache_dir, max_workers)
    warnings += notes
    have = set(long["run_id"][long["metric"] == metrics[0]]) if len(metrics) else set()
    for run_id, name in zip(runs["run_id"], runs["run_name"]):
        if metrics and run_id not in have:
            warnings.append(f"run {name} ({run_id}) has no {metrics[0]} history")
    frame = long.merge(runs, on="run_id", how="left")
    params = sorted({k for r in found for k in r.data.params})
    return RunSet(runs, frame, warnings, parent_run_id, uri, cache_dir, params)


def select_runs(tracking_uri: str | None = None, *, parent_run_id: str | None = None,
                experiment: str | Sequence[str] | None = None, filter_string: str = "",
                sweep: str | None = None, statuses: Sequence[str] | None = ("FINISHED",)):
    """The MLflow runs ``load_runs`` selects (sweep parents left out), with the warnings about
    runs left out by status, the sweep's parent run id (given, or the one all runs share), the
    store's URI and a client on it."""
    uri = tracking_uri or default_tracking_uri()
    client = make_client(uri)
    filters = [f for f in [filter_string] if f]
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception as exc:
            raise AnalysisError(f"no run {parent_run_id!r} in {uri}: {exc}") from None
        experiment_ids = [parent.info.experiment_id]
        filters.append(f"tags.mlflow.parentRunId = '{parent_run_id}'")
    else:
        names = [experiment] if isinstance(experiment, str) else list(experiment or [DEFAULT_EXPERIMENT])
        experiment_ids = []
        for name in names:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                known = [e.name for e in client.search_experiments()]
                raise AnalysisError(f"no experiment {name!r} in {uri}; experiments: {known}")
            experiment_ids.append(exp.experiment_id)
    if sweep:
        filters.append(f"tags.sweep = '{sweep}'")
    found = _search(client, experiment_ids, " and ".join(filters))
    warnings: list[str] = []
    parents = {r.data.tags.get("mlflow.parentRunId") for r in found}
    found = [r for r in found if r.info.run_id not in parents]  # sweep parent runs hold no curve
    if statuses is not None:
        skipped = [r for r in found if r.info.status not in statuses]
        if skipped:
            by_status: dict[str, list[str]] = {}
            for r in skipped:
                by_status.setdefault(r.info.status, []).append(
                    r.data.tags.get("mlflow.runName", r.info.run_id))
            for status, names in by_status.items():
                warnings.append(f"left out {len(names)} run(s) with status {status}: "
                                f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''} "
                                f"(include them with statuses=None / --all-statuses)")
        found = [r for r in found if r.info.status in statuses]
    if parent_run_id is None:
        parent_ids = {r.data.tags.get("mlflow.parentRunId") for r in found}
        if len(parent_ids) == 1 and None not in parent_ids:
            parent_run_id = parent_ids.pop()
    return found, warnings, parent_run_id, uri, client


def parse_overrides(text: str | None) -> dict[str, str]:
    """``"pretrain=ac seed=1"`` -> ``{"pretrain": "ac", "seed": "1"}`` (the ``overrides`` tag)."""
    out = {}
    for token in shlex.split(text or ""):
        if "=" in token:
            key, value = token.split("=", 1)
            out[key.lstrip("+~")] = value
    return out


# ----- results without the store: a RunSet as one CSV file ----------------------------------------

CSV_METRIC_COLUMNS = ("metric", "step", "value", "timestamp")


def export_csv(rs: RunSet, path: str | Path, metrics: Sequence[str] = (SCORE,),
               extra: dict[str, str] | None = None) -> Path:
    """The runs' histories of ``metrics`` with every run column, params included, as one gzipped
    CSV: what ``from_csv`` reads back to analyse without the MLflow store. Params the same for
    every run are kept too (4 kB more on 10 runs of 75 params): put beside another sweep's file,
    they are what tells the two apart (a fixed 10k pre-training beside the convergence rule; both
    read as 'pretrain=ac' without them). ``extra``: constant columns (e.g. the machine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = rs.runs
    keep = [c for c in runs.columns if not c.startswith("_")]
    for key in metrics:
        rs.history(key)
    frame = rs.metrics[rs.metrics["metric"].isin(metrics)][["run_id", *CSV_METRIC_COLUMNS]]
    frame = frame.merge(runs[keep], on="run_id", how="left")
    for column, value in (extra or {}).items():
        frame[column] = value
    frame = frame.sort_values(["run_name", "metric", "step"]).reset_index(drop=True)
    frame.to_csv(path, index=False, compression="gzip")
    return path


#: the columns every exported file has (export_csv writes them): a file without them is another file
CSV_REQUIRED_COLUMNS = ("run_id", "run_name", *CSV_METRIC_COLUMNS)


def _read_export(path: Path) -> pd.DataFrame:
    """One exported file, or an AnalysisError naming it (not gzip, truncated, not CSV, or a CSV
    without the columns ``export_csv`` writes)."""
    try:
        # a digest is text: read as guessed, 0123456789 would lose its 0 and 123e456789 become inf
        frame = pd.read_csv(path, low_memory=False, dtype={"dataset_digest": str})
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise AnalysisError(f"cannot read the results file {path} ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())}): give a file written by `analysis "
                            f"results --export`") from None
    missing = [c for c in CSV_REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise AnalysisError(f"the results file {path} lacks the column(s) {', '.join(missing)} "
                            f"that `analysis results --export` writes: is it another file?")
    for column in CSV_METRIC_COLUMNS[1:]:  # step, value, timestamp: numbers (a value may be NaN)
        numbers = pd.to_numeric(frame[column], errors="coerce")
        text = frame[column].notna() & numbers.isna()
        if text.any():
            raise AnalysisError(f"the results file {path}: column {column} holds "
                                f"{frame.loc[text, column].iloc[0]!r} (line {text.idxmax() + 2}), "
                                f"not a number: give a file written by `analysis results --export`")
        frame[column] = numbers
    return frame


def from_csv(path: str | Path | Sequence[str | Path]) -> RunSet:
    """A RunSet read from ``export_csv``'s file, or several (one sweep continued under another
    parent run, say: their runs together); no store, ``add_metrics`` fetches nothing."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    for path in paths:
        if not path.exists():
            raise AnalysisError(f"no results file {path}")
    frames = [_read_export(path) for path in paths]
    frame = frames[0]
    if len(frames) > 1:  # in export_csv's order, as if one file held them all
        frame = pd.concat(frames, ignore_index=True).sort_values(
            ["run_name", "metric", "step"], kind="stable").reset_index(drop=True)
    if len(frames) > 1 and frame["run_id"].nunique() < sum(f["run_id"].nunique() for f in frames):
        raise AnalysisError(f"a run is in more than one of {', '.join(map(str, paths))}: give each "
                            f"run's evaluations once")
    run_columns = [c for c in frame.columns if c not in CSV_METRIC_COLUMNS]
    runs = frame[run_columns].drop_duplicates("run_id").reset_index(drop=True)
    params = [c for c in runs.columns if "." in c and c not in ("sweep.axes",)]
    parents = runs["parent_run_id"].dropna().unique() if "parent_run_id" in runs else []
    return RunSet(runs, frame, [], parents[0] if len(parents) == 1 else None, None, None, params)
