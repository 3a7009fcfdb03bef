"""Named sweeps: one MLflow parent run per multirun, every job a child run.

The sweeper (``hydra/sweeper: offline_rl``, the default of ``conf/config.yaml``; plugin class in
``hydra_plugins/offline_rl_sweeper``) extends Hydra's basic sweeper (the same Cartesian grid from
``hydra.sweeper.params`` and the command line). Before any job is launched it

1. composes every job's config and validates it (``offline_rl.config.validate`` and the algorithm x
   pre-training / fine-tuning pairing): a bad value ends the sweep with one message, exit status 2.
   With ``hydra.sweeper.skip_incompatible=true`` the grid's algorithm x pre-training pairs that make
   no sense (hard pre-training for EDAC, soft for TD3+BC) are dropped instead, and listed: that is
   how one sweep file says "hard for TD3+BC, soft for EDAC";
2. creates the MLflow store (once: sqlite's migration breaks when several jobs create it at once)
   and the sweep's parent run, tagged with the sweep name and holding the grid as params;
3. exports the parent run id, the sweep name and its axes in environment variables, which local
   subprocesses inherit and ``sbatch`` passes on to SLURM jobs (also when requeued).

Each job (``offline_rl.run.train``) reads them back through ``job_context`` and starts its
run as a child of the parent, named from its swept overrides (``algo=edac,pretrain=soft,seed=1``)
and tagged with the sweep, its overrides, its SLURM job id and one tag per swept axis. When the
sweep ends the parent is marked FINISHED, or FAILED if a job failed (or KILLED on Ctrl-C).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from offline_rl.config import check_pairing, from_config, validate
from offline_rl.errors import ConfigError, OfflineRLError
from offline_rl.identity import checkpoint_root, run_identity, store_key
from offline_rl.locks import FileLock
from offline_rl.job import ENV_PARENT_RUN_ID, ENV_SWEEP_AXES, ENV_SWEEP_NAME, override_key, split_override

log = logging.getLogger(__name__)


# ----- before the jobs: the grid, validation, the parent run ---------------------------------


@dataclass
class Grid:
    """The sweep's axes (key -> values, in override order) and its fixed overrides."""

    axes: dict[str, list[str]]
    fixed: list[str]

    @property
    def varying(self) -> list[str]:
        return [k for k, v in self.axes.items() if len(v) > 1]

    def label(self, overrides: Sequence[str]) -> str:
        """A job by its values of the swept axes (all its overrides when nothing is swept)."""
        swept = [o for o in overrides if split_override(o)[0] in self.varying]
        return " ".join(swept or overrides)


def grid_of(overrides: Sequence[Any]) -> Grid:
    """From Hydra's parsed overrides (hydra.core.override_parser.types.Override)."""
    axes: dict[str, list[str]] = {}
    fixed: list[str] = []
    for override in overrides:
        key = override_key(override.get_key_element())
        if override.is_sweep_override():
            axes[key] = [str(v) for v in override.sweep_string_iterator()]
        else:
            axes.pop(key, None)  # a later fixed value wins over an earlier sweep
            fixed.append(f"{override.get_key_element()}={override.get_value_element_as_str()}")
    return Grid(axes, fixed)


def job_problem(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(error, incompatibility) for one composed job config: an error is a value that is not
    allowed; an incompatibility an algorithm x pre-training / fine-tuning pair that makes no
    sense (what ``skip_incompatible`` drops). The same checks as a single run's (config.check)."""
    try:
        validate(cfg)
    except OfflineRLError as exc:
        return str(exc), None
    try:
        check_pairing(cfg)
    except ConfigError as exc:
        return None, str(exc)
    except OfflineRLError as exc:
        return str(exc), None
    except Exception as exc:  # noqa: BLE001 -- an unloadable class, a missing value
        return f"{type(exc).__name__}: {exc}", None
    return None, None


MAX_SWEEP_NAME = 200  # an MLflow run name stays readable (and well under its length limit)


def sweep_name(configured: str | None, config: DictConfig, grid: Grid | None = None) -> str:
    """The sweep's (and its parent run's) name: ``hydra.sweeper.name``, else the experiment file
    (``+experiment=pretrain_ablation``), else what was swept (``pretrain=ac,none x seed=0,1``)."""
    if configured:
        return str(configured)
    choices = OmegaConf.select(config, "hydra.runtime.choices", default={}) or {}
    experiment = choices.get("experiment") if hasattr(choices, "get") else None
    if experiment:
        return str(experiment)
    swept = " x ".join(f"{k}={','.join(grid.axes[k])}" for k in grid.varying) if grid else ""
    if not swept:
        return "multirun"
    return swept if len(swept) <= MAX_SWEEP_NAME else swept[:MAX_SWEEP_NAME - 3] + "..."


def sweep_identity(name: str, job_identities: Sequence[str]) -> str:
    """The sweep's identity: its name and its jobs' run identities (offline_rl/identity.py). The
    same sweep command started again (after its processes were killed, a machine restarted, an
    allocation ended), even with a setting that changes no run's result (threads=2,
    progress=false, checkpoint.every), continues the same parent run instead of starting a
    second one."""
    blob = json.dumps({"name": name, "runs": sorted(job_identities)})
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def sweep_identity_by_overrides(name: str, jobs: list[list[str]]) -> str:
    """The identity sweeps recorded before 2026-12-04 (their jobs' override strings): a sweep
    started by that code is still found, and continued, by this one."""
    blob = json.dumps({"name": name, "jobs": sorted(" ".join(sorted(job)) for job in jobs)})
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def first_line(exc: object) -> str:
    """An exception as one line (a job's error for the sweep's summary)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if isinstance(exc, OfflineRLError) or type(exc).__name__ == "JobFailed" else (
        f"{type(exc).__name__}: {line}")


def summarise(tracker, parent_run_id: str) -> None:
    """The sweep's one-screen summary: each job's status and final score, the progress line, and
    where the parent run is."""
    from offline_rl.progress import sweep_progress

    try:
        experiment_id = tracker.ensure_store()
        progress = sweep_progress(tracker.client, experiment_id, parent_run_id)
    except Exception as exc:  # noqa: BLE001 -- a summary must never fail the sweep
        log.info(f"(no summary: {type(exc).__name__}: {exc})")
        return
    print("\n".join(["", *progress.table(), "", progress.line(),
                     f"MLflow parent run {parent_run_id} in {tracker.tracking_uri}"]),
          flush=True)


class ProgressReporter:
    """While the launcher blocks (local jobs, or submitit waiting for the SLURM array), the sweep's
    progress line (offline_rl.progress: finished / running / waiting / failed, updates done, ETA,
    best score) on stderr every ``every_s`` seconds, read from the store on a thread of its own.
    A line that cannot be read (the store busy or down) is skipped, never fatal."""

    def __init__(self, tracking_uri: str, parent_run_id: str, every_s: float):
        import threading

        self.uri, self.parent, self.every_s = tracking_uri, parent_run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-progress", daemon=True)
        self._last = None

    def __enter__(self) -> "ProgressReporter":
        if self.every_s > 0 and self.parent:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        from mlflow.tracking import MlflowClient

        from offline_rl.progress import sweep_progress

        client = None
        while not self._stop.wait(self.every_s):
            try:
                client = client or MlflowClient(tracking_uri=self.uri)
                experiment_id = client.get_run(self.parent).info.experiment_id
                line = sweep_progress(client, experiment_id, self.parent).line()
            except Exception:  # noqa: BLE001 -- progress is a courtesy: the sweep goes on
                continue
            if line != self._last and not self._stop.is_set():  # never after the summary  # a line only when something moved
                print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)
                self._last = line


def make_tracker(config: DictConfig):
    return from_config(config.tracker)


def earlier_parent(tracker, identity: str, legacy: str, job_identities: Sequence[str]) -> list:
    """The parent run of this sweep from an earlier start, if any: by its identity, else by the
    identity recorded before 2026-12-04 (its jobs' override strings) -- adopted only when every
    child it has is one of this sweep's jobs (an experiment file edited since makes other jobs
    of the same overrides: another sweep)."""
    def parents(tag: str) -> list:
        return [r for r in tracker.search(f"tags.`sweep.identity` = '{tag}'")
                if r.data.tags.get("sweep.role") == "parent"]

    found = parents(identity)
    if found:
        return found
    jobs = set(job_identities)
    return [r for r in parents(legacy)
            if {c.data.tags.get("run_identity") for c in
                tracker.search(f"tags.mlflow.parentRunId = '{r.info.run_id}'")} <= jobs]


def hold_sweep(name: str, identity: str, folder: Path, store: str) -> FileLock:
    """The sweep's lock, beside its runs' checkpoint folders (per store), held while it runs: the
    same sweep started in a second terminal exits 2 in one line, having written nothing, instead
    of sharing the parent run and reporting the jobs the first one holds as failed."""
    lock = FileLock(folder / f"sweep-{identity}-{store}.lock")
    try:
        acquired = lock.acquire(blocking=False)
    except OSError as exc:
        fail(f"cannot write the sweep's lock in {folder} ({type(exc).__name__}: {exc}); free space "
             f"or make it writable, or set checkpoint.dir to another folder")
    if not acquired:
        fail(f"sweep '{name}' is already running: {lock.holder()} holds it ({lock.path}). Wait for "
             f"it to end, or stop it and start the same command again: it continues")
    return lock


def fail(message: str) -> None:
    """The sweep's own errors: one message, exit status 2 (as launch.py does for a run)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class SweepLogic:
    """The sweeper's behaviour; the Hydra plugin class (which must live in ``hydra_plugins``)
    mixes it into Hydra's BasicSweeper."""

    name: str | None = None
    skip_incompatible: bool = False
    dry_run: bool = False

    def sweep(self, arguments: list[str]) -> Any:  # overrides BasicSweeper.sweep
        from hydra.core.override_parser.overrides_parser import OverridesParser

        assert self.config is not None and self.launcher is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(params_conf)
        grid = grid_of(overrides)
        jobs = self.split_arguments(overrides, None)[0]
        name = sweep_name(self.name, self.config, grid)

        tic = time.perf_counter()
        jobs, skipped = self.check_jobs(jobs, grid)
        log.info(f"Sweep '{name}': {len(jobs)} job(s) validated in {time.perf_counter() - tic:.1f}s"
                 + (f", {len(skipped)} incompatible combination(s) skipped" if skipped else ""))
        for overrides_, reason in skipped:
            log.info(f"\tskipped {grid.label(overrides_)}: {reason.split(';')[0]}")

        if self.dry_run:  # list the jobs, launch nothing, create nothing
            print(f"sweep '{name}': {len(jobs)} job(s), {len(skipped)} skipped")
            for job in jobs:
                print(f"  job: {grid.label(job)}")
            for job, _ in skipped:
                print(f"  skipped: {grid.label(job)}")
            return []

        identities = [self.job_identities[tuple(j)] for j in jobs]
        identity = sweep_identity(name, identities)
        tracker = make_tracker(self.config)
        # before anything is written: a second terminal running the same sweep touches nothing
        lock = hold_sweep(name, identity, Path(checkpoint_root(self.config)),
                          store_key(getattr(tracker, "tracking_uri", None)))
        self.overrides = [list(x) for x in self.split_overrides_to_chunks(jobs, self.max_batch_size)]
        self.batch_index = 0
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        tracker.ensure_store()  # once, before any job starts
        launcher = OmegaConf.select(self.config, "hydra.runtime.choices", default={}).get("hydra/launcher")
        params = {f"grid.{k}": ",".join(v) for k, v in grid.axes.items()}
        params.update({"sweep.jobs": len(jobs), "sweep.skipped": len(skipped),
                       "sweep.fixed_overrides": " ".join(grid.fixed) or "-"})
        tags = {"sweep": name, "sweep.role": "parent", "sweep.axes": ",".join(grid.varying),
                "sweep.grid": json.dumps(grid.axes), "sweep.dir": str(sweep_dir),
                "launcher": str(launcher), "sweep.skipped_jobs": json.dumps(
                    [grid.label(o) for o, _ in skipped])[:5000]}
        tags["sweep.identity"] = identity
        earlier = earlier_parent(tracker, identity, sweep_identity_by_overrides(name, jobs), identities)
        parent_id = tracker.start(name, params, tags, run_id=earlier[0].info.run_id if earlier else None)
        if earlier:  # the same sweep again: its finished jobs are skipped, the others resume
            statuses = tracker.child_statuses(parent_id)
            log.info(f"Sweep '{name}': continuing the sweep of MLflow parent run {parent_id} "
                     f"({statuses.count('FINISHED')} of {len(jobs)} job(s) finished; those are "
                     f"skipped, the others resume from their checkpoints)")
        if parent_id:
            os.environ[ENV_PARENT_RUN_ID] = parent_id
        os.environ[ENV_SWEEP_NAME] = name
        os.environ[ENV_SWEEP_AXES] = json.dumps(grid.varying)
        log.info(f"Sweep '{name}': MLflow parent run {parent_id}")

        status, error = "FAILED", None
        returns = []
        failures: list[tuple[str, str]] = []  # (job, its one-line error): every job runs to its end
        reporter = ProgressReporter(str(tracker.tracking_uri), parent_id,
                                    float(getattr(self, "progress_every_s", 0.0)))
        try:
            initial_job_idx = 0
            reporter.__enter__()
            while not self.is_done():
                batch = self.get_job_batch()
                results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
                for overrides_, result in zip(batch, results):
                    if str(getattr(result, "status", "")).endswith("FAILED"):
                        failures.append((grid.label(overrides_), first_line(result._return_value)))
                initial_job_idx += len(batch)
                returns.append(results)
            status = "FAILED" if failures else "FINISHED"
            if failures:
                error = f"{len(failures)} of {len(jobs)} job(s) failed: " + "; ".join(
                    f"[{job}] {why}" for job, why in failures)
        except KeyboardInterrupt:
            status, error = "KILLED", "interrupted (Ctrl-C)"
            raise
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            reporter.__exit__(None, None, None)
            if status == "FINISHED" and parent_id:
                failed = [s for s in tracker.child_statuses(parent_id) if s != "FINISHED"]
                if failed:
                    status, error = "FAILED", f"{len(failed)} child run(s) not finished: {failed}"
            if failures and parent_id:
                tracker.set_tags({"failed_jobs": "\n".join(f"{job}: {why}" for job, why in failures)})
            tracker.finish(status, error=error)
            lock.path.unlink(missing_ok=True)  # a process opening it meanwhile retries (locks.py)
            lock.release()
            if parent_id and status != "KILLED":
                summarise(tracker, parent_id)
        if failures:
            fail(f"sweep '{name}': {len(failures)} of {len(jobs)} job(s) failed, the others ran to "
                 f"their end; " + "; ".join(f"[{job}] {why}" for job, why in failures)
                 + ". The same command runs again only what did not finish")
        return returns

    def check_jobs(self, jobs: list[list[str]], grid: Grid) -> tuple[list[list[str]], list[tuple[list[str], str]]]:
        """Compose and validate every job before any is launched."""
        kept, skipped, errors = [], [], []
        self.job_identities: dict[tuple[str, ...], str] = {}
        for overrides in jobs:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            error, incompatible = job_problem(cfg)
            if error:
                errors.append(f"[{grid.label(overrides)}] {error}")
            elif incompatible:
                skipped.append((list(overrides), incompatible))
            else:
                kept.append(list(overrides))
                self.job_identities[tuple(overrides)] = run_identity(cfg)
        if errors:
            fail(f"{len(errors)} of the sweep's {len(jobs)} job(s) have an invalid config; nothing "
                 f"was launched:\n  " + "\n  ".join(dict.fromkeys(errors)))
        if skipped and not self.skip_incompatible:
            first, reason = skipped[0]
            fail(f"{len(skipped)} of the sweep's {len(jobs)} job(s) pair an algorithm with a "
                 f"pre-training or fine-tuning that does not fit it, e.g. [{grid.label(first)}]: "
                 f"{reason}. Nothing was launched; sweep over fitting pairs, or set "
                 f"hydra.sweeper.skip_incompatible=true to drop such pairs from the grid")
        if not kept:
            fail(f"none of the sweep's {len(jobs)} job(s) pairs an algorithm with a pre-training "
                 f"that fits it; nothing to launch")
        return kept, skipped
