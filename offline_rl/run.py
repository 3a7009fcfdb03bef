"""Compose one run from a Hydra config: data -> algorithm -> phases -> the loop, tracked in MLflow.

Runs are preemption-safe. A run's identity is a hash of its resolved config (tracking, progress and
checkpoint keys left out); its checkpoints live in ``<checkpoint.dir>/<name>-<identity>-<store key>/``: every
``checkpoint.every`` updates and when a signal stops it (SIGTERM from scancel / ``scontrol
requeue`` / a time limit, Ctrl-C, submitit's pre-timeout SIGUSR2, which then requeues the job),
each written atomically, the newest ``checkpoint.keep`` kept. With ``resume=auto`` the same command
(or the requeued SLURM job) continues from the newest readable checkpoint -- a corrupt one is
reported on stderr and in the MLflow tag ``checkpoint_corrupt``, and the one before it used --
into the same MLflow run, and ends with the weights an uninterrupted run would have (the model,
optimisers, replay sampling generator, global RNGs, loop position, partial metric window, the
convergence rule's history and the (soft) returns-to-go are all restored). A finished run removes
its checkpoints. In a sweep (offline_rl.sweep) the run is a child of the sweep's parent run.
"""

from __future__ import annotations

import json
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from offline_rl.automatic import FAMILY, missing_reference
from offline_rl.config import check, from_config
from offline_rl.dataset.record import current_digest, describe as describe_dataset
from offline_rl.dataset.replay import ReplayBuffer, StateNormalizer
from offline_rl.errors import (CheckpointError, ConfigError, DatasetError, DiskFullError,
                               NonFiniteLossError, OfflineRLError, warn)
from offline_rl.identity import IDENTITY_EXCLUDED, checkpoint_root, flatten, run_identity, store_key
from offline_rl.job import job_context
from offline_rl.metric_names import EVAL_PREFIX, SCORE
from offline_rl.precision import resolve as resolve_precision
from offline_rl.report import summary_lines
from offline_rl.training.checkpoint import (CheckpointDir, is_intact, load_checkpoint, rng_state,
                                            save_checkpoint, set_rng_state)
from offline_rl.training.compiled import attach_compiler, compile_metrics
from offline_rl.training.evaluation import Evaluator
from offline_rl.limits import check_data_limits
from offline_rl.training.lifecycle import resume_point, start_tracking, train_tracked
from offline_rl.training.loop import Phase, Trainer

GROUPS = ("algo", "pretrain", "dataset", "network", "finetune")
SPOOL = "tracking-spool.jsonl"  # in the checkpoint folder: what an unreachable server could not take
STALE_TAGS = ["error", "interrupted"]  # an earlier process's, removed when a continued run finishes


def train(cfg: DictConfig) -> dict[str, float]:
    """One run: check the config, build the run, continue it from its last checkpoint (resume=auto)
    into the same MLflow run, train, record. Returns the last evaluation."""
    check(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)  # bf16 without the hardware: fails here
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    tracker = from_config(cfg.tracker)
    tracker.ensure_store()  # a server that does not answer fails here, in seconds
    choices = group_choices(cfg)
    debug = group_choices(cfg, ("debug",))["debug"]
    if debug not in NOT_CHOSEN:  # tagged (and a param): told apart from real runs
        choices["debug"] = debug
    unapplied = missing_reference(group_choices(cfg, (*GROUPS, FAMILY)), cfg)
    if unapplied:
        warn(unapplied)
    name = run_name(choices, cfg.seed, str(OmegaConf.select(cfg, "dataset.dataset_id", default="") or ""))
    # one folder per run identity and tracking store, held by one process at a time
    identity = run_identity(cfg)
    folder = f"{name}-{identity}-{store_key(getattr(tracker, 'tracking_uri', None))}"
    checkpoints = CheckpointDir(Path(checkpoint_root(cfg)) / folder, identity, keep=cfg.checkpoint.keep)
    checkpoints.lock(f"this run ({name}, checkpoints in {checkpoints.path})")
    try:
        tracker.use_spool(checkpoints.path / SPOOL)
        tracker.deliver_spool()  # what an earlier process could not send, before anything new
        parent = job_context().parent_run_id
        finished = None if cfg.rerun else finished_run(tracker, identity, parent)
        if finished is not None:  # the same command (or sweep job) again: nothing to do
            run_id, last_eval = finished
            if (checkpoints.read_info() or {}).get("run_id") == run_id and not tracker.pending():
                checkpoints.clear()  # left by a process stopped between finishing and clearing
            return last_eval
        continued = None if cfg.resume == "never" else (checkpoints.read_info() or {}).get("run_id")
        end_stale_runs(tracker, identity, parent, keep=continued)
        try:
            run = Run(cfg, device, precision, tracker, checkpoints)
        except OfflineRLError as exc:  # e.g. the dataset: a sweep still gets its FAILED child run
            record_failed_start(tracker, cfg, name, choices, identity, exc)
            raise
        try:
            run.refuse_pooling()
            if cfg.resume == "never":
                checkpoints.clear()
            resumed = run.resume_point() if cfg.resume == "auto" else None
            if resumed is None and cfg.continue_from:  # a finished run, to a larger budget
                resumed = run.continuation(str(cfg.continue_from))
            if resumed:
                run.load(*resumed)
            run.start_tracking(name, choices)
            if resumed:
                run.restore(*resumed)
            run.execute()
        finally:
            run.close()
        if cfg.summary and run.job.sweep is None:  # a sweep prints its table of jobs instead
            print(run.summary(), flush=True)
        return run.trainer.state.last_eval
    finally:
        checkpoints.unlock()


class Run:
    """What one run is made of, built from the config's ``_target_``s -- data, replay, algorithm,
    pre-training scheme, fine-tuning, evaluator, the loop over their phases -- and what it does
    with them: resume, track, checkpoint (``state_dict`` is the checkpoint's schema), record."""

    def __init__(self, cfg: DictConfig, device: torch.device, precision: str, tracker,
                 checkpoints: CheckpointDir):
        self.cfg, self.device, self.tracker, self.checkpoints = cfg, device, tracker, checkpoints
        self.precision = precision  # fp32 or bf16: what cfg.precision resolved to on this device
        self.batch_size = int(cfg.batch_size)  # read once: a DictConfig lookup per update costs ~1%
        self.job = job_context()
        self.data = data = from_config(cfg.dataset)  # checked as it is read (offline_rl.dataset.checks)
        check_data_limits(cfg, data, device)  # before anything is allocated for it
        self.dataset_record = describe_dataset(data)  # its digest: what a resume must train on
        self.pretrain = from_config(cfg.pretrain)
        self.finetune = from_config(cfg.finetune)
        self.algo = from_config(cfg.algo)(data.obs_dim, data.act_dim, device=device,
                                          target_transform=self.pretrain.target_transform)
        self.replay = ReplayBuffer.from_offline(
            data, device, gamma=self.algo.gamma, normalize_states=self.algo.normalize_states,
            bootstrap_timeouts=self.pretrain.bootstrap_timeouts, seed=cfg.seed,
            reward_scale=self.algo.reward_scale(data))
        self.sample = self.replay.sampler(self.batch_size)  # the offline phase's batches
        # fine-tuning a previous run's checkpoint: no pre-training, no offline phase
        self.source = (load_source_run(self.finetune.from_run, tracker, self.algo, self.replay,
                                       data.dataset_id, self.dataset_record.digest)
                       if self.finetune.from_run else None)
        self.evaluator = None
        if cfg.eval.episodes > 0:
            self.evaluator = Evaluator(data.env_spec, cfg.eval.episodes, cfg.eval.seed + cfg.seed,
                                       self.replay.normalizer, device, data.ref_min_score,
                                       data.ref_max_score)
        phases = self.phases()
        # compiled update steps (training/compiled.py), as long as the phase running them
        self.compile_reports = [attach_compiler(self.algo, cfg.compile, updates=int(cfg.updates),
                                                precision=precision)]
        for phase in phases:  # fine-tuning trains its own agent
            if phase.agent not in (None, self.algo):
                self.compile_reports.append(attach_compiler(phase.agent, cfg.compile, updates=phase.steps,
                                                            precision=precision))
        use_checkpoints = cfg.checkpoint.every > 0 or cfg.checkpoint.on_signal
        self.trainer = Trainer(
            phases, tracker, self.evaluator.evaluate_agent if self.evaluator else None,
            log_every=cfg.log_every, eval_every=cfg.eval.every, agent=self.algo,
            checkpoint=self.save if use_checkpoints else None,
            checkpoint_every=cfg.checkpoint.every, progress=cfg.progress)
        if self.source is not None:  # the x-axis continues from the source run's last update
            self.trainer.state.global_step = self.source["global_step"]
        self.run_id: str | None = None
        self.corrupt: list[str] = []
        self.precision_change: str | None = None
        self.extension: tuple[int, int] | None = None  # (old, new) updates: continue_from
        self.kept_step: int | None = None  # the newest checkpoint written (or resumed from)

    def phases(self) -> list[Phase]:
        """Pre-training, offline RL, online fine-tuning: the phases the loop runs in order."""
        phases: list[Phase] = []
        if self.source is None:
            phases += self.pretrain.phases(self.algo, self.replay, self.cfg.batch_size)
            phases.append(Phase("offline_rl", self.offline_update, int(self.cfg.updates)))
        return phases + self.finetune.phases(self.algo, self.replay, self.data, int(self.cfg.seed))

    def offline_update(self) -> dict[str, torch.Tensor]:
        return self.algo.update(self.sample())

    # ----- resuming and tracking -----------------------------------------------------------------
    def resume_point(self) -> tuple[dict, Path] | None:
        """The newest readable checkpoint (corrupt ones reported, the one before used), and the
        MLflow run it continues; None: start afresh."""
        found, self.run_id = resume_point(self.checkpoints, self.tracker, self._report_corrupt)
        if found:
            self.refuse_other_data(found[0], self.run_id, f"the checkpoint {found[1]}",
                                   "continuing it would train one run on two data files")
            self.precision_change = precision_change(found[0], found[1], self.precision, self.cfg)
        return found

    def continuation(self, run_id: str) -> tuple[dict, Path]:
        """The final checkpoint of the FINISHED run ``run_id``, to continue it -- as the same
        MLflow run -- to this config's larger ``updates``. Everything else in the config must be
        that run's (its params); the metrics it logged stay as they are."""
        key = f"continue_from={run_id!r}"
        if any(p.name == "finetune" for p in self.trainer.phases):
            raise ConfigError(f"{key}: continuing extends a run's offline RL phase, and this run also "
                              f"fine-tunes online after it, a phase that already ran: start a new run "
                              f"with the larger updates")
        status = self.tracker.run_status(run_id)
        tags = self.tracker.run_tags(run_id) if status is not None else {}
        # a continuation that ended before its first checkpoint (killed: RUNNING; crashed: FAILED;
        # stopped: KILLED) starts again from the finished run's final state, still its artifact
        restarting = status in ("RUNNING", "FAILED", "KILLED") and "continued" in tags
        if status != "FINISHED" and not restarting:
            raise ConfigError(f"{key}: " + (f"no MLflow run {run_id} in the store {self.store}"
                              if status is None else f"the run is {status}, not FINISHED (an "
                              f"unfinished run resumes by itself: run its own command again)"))
        folder = Path(tempfile.mkdtemp(prefix="offline_rl-continue-"))
        try:
            path = self.tracker.download_artifact(run_id, "checkpoint.pt", folder)
        except FileNotFoundError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        state = load_checkpoint(path, map_location=self.device)
        if "trainer" not in state:
            raise ConfigError(f"{key}: that run's checkpoint.pt holds its networks only (it "
                              f"finished before runs kept their whole final state), so it cannot "
                              f"be continued exactly; start a new run with the larger updates")
        theirs = self.tracker.run_params(run_id)
        ours = {k: str(v) for k, v in flatten(self.cfg).items()}
        # the group choices (params too) are left out: their options' values are compared
        differ = sorted(k for k in set(theirs) | set(ours)
                        if k.split(".", 1)[0] not in IDENTITY_EXCLUDED
                        and k not in ("updates", "precision_used", *GROUPS)
                        and theirs.get(k) != ours.get(k))
        if differ:
            shown = ", ".join(f"{k}={theirs.get(k)!s} there, {ours.get(k)!s} here" for k in differ[:5])
            raise ConfigError(f"{key}: only updates may differ from that run's config; also "
                              f"different: {shown}{' ...' if len(differ) > 5 else ''}")
        old = int(float(state["updates"] if "updates" in state else budget_before(status, theirs, tags)))
        if int(self.cfg.updates) <= old:
            raise ConfigError(f"{key}: that run already did updates={old}; give a larger updates=")
        self.refuse_other_data(state, run_id, f"{key}: that run",
                               "continuing it would train one run on two data files",
                               fresh="no continue_from (a new run with the larger updates)")
        self.run_id, self.extension = run_id, (old, int(self.cfg.updates))
        self.precision_change = precision_change(state, path, self.precision, self.cfg)
        return state, path

    def refuse_other_data(self, state: dict[str, Any], run_id: str | None, what: str,
                          why: str, fresh: str = "resume=never, which removes these checkpoints"
                          ) -> None:
        """DatasetError when a checkpoint (its own record, else its MLflow run's tag; older ones
        have neither) was trained on another data file than this dataset holds now."""
        recorded = state.get("dataset_digest")
        if recorded is None and run_id is not None:
            recorded = self.tracker.run_tags(run_id).get("dataset_digest")
        refuse_other_data(recorded, self.dataset_record.digest, self.data.dataset_id, f"{what} was",
                          why, fresh=None if self.job.parent_run_id else fresh)

    def refuse_pooling(self) -> None:
        """A sweep started again after its dataset was regenerated: a job not started before would
        train on the new file under the parent of runs trained on the old one."""
        parent, dataset_id = self.job.parent_run_id, self.data.dataset_id
        if parent is None:
            return
        siblings = self.tracker.search(f"tags.mlflow.parentRunId = '{parent}' and "
                                       f"tags.dataset_id = '{dataset_id}'")
        other = sorted({r.data.tags.get("dataset_digest") for r in siblings}
                       - {None, self.dataset_record.digest})
        if other:
            refuse_other_data(other[0], self.dataset_record.digest, dataset_id,
                              f"this sweep's runs (parent run {parent}) were", "this job's run "
                              f"would be pooled with them", fresh=None)

    def _report_corrupt(self, message: str) -> None:
        self.corrupt.append(message)
        warn(message)

    def start_tracking(self, name: str, choices: dict[str, str]) -> None:
        """Start (or continue) the MLflow run, tagged and with the dataset as its input."""
        tags = {**choices, "seed": self.cfg.seed, "dataset_id": self.data.dataset_id,
                "device": str(self.device), "precision": self.precision, **self.job.tags(),
                "run_identity": self.checkpoints.identity, "checkpoint_dir": str(self.checkpoints.path),
                # each phase's planned update steps (pre-training at its cap): progress's total
                "phase_plan": json.dumps({p.name: int(p.steps) for p in self.trainer.phases})}
        if self.precision_change:  # a resume the user allowed to change precision
            tags["precision_changes"] = self.precision_change
        if self.extension:  # continue_from: the run's budget grows (its param keeps the first)
            tags["updates"] = self.extension[1]
            tags["continued"] = (f"finished at {self.extension[0]:,} offline updates, continued to "
                                 f"{self.extension[1]:,} (continue_from)")
        if self.source is not None:
            tags.update({"finetune.from_run": self.finetune.from_run,
                         "finetune.source": self.source["path"]})
        self.continued = self.run_id is not None
        # the group choices (algo=td3_bc, pretrain=ac, ...) as params too: MLflow's compare-runs
        # page and its params columns tell runs apart by params, not tags
        params = {**flatten(self.cfg), **choices, "precision_used": self.precision}
        name = self.job.run_name() or name
        self.info = start_tracking(self.tracker, self.checkpoints, name, params, tags, self.run_id,
                                   self.job.parent_run_id, name=name)
        self.run_id = self.info["run_id"]
        if self.corrupt:
            self.tracker.set_tags({"checkpoint_corrupt": " | ".join(self.corrupt)})
        self.tracker.log_dataset(self.dataset_record)  # the MLflow dataset input
        # also a tag: exported with the run (analysis results), so runs of one dataset name
        # trained on different data files are told apart when their seeds are pooled
        self.tracker.set_tags({"dataset_digest": self.dataset_record.digest})

    @property
    def store(self) -> str | None:
        return getattr(self.tracker, "tracking_uri", None)

    # ----- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact continuation needs: the networks, optimisers, replay sampling
        generator, (soft) returns-to-go, fine-tuning, the loop's position and the global RNGs."""
        replay = self.replay
        return {"run_id": self.run_id, "tracking_uri": str(self.store), "updates": int(self.cfg.updates),
                "global_step": self.trainer.state.global_step, "algo": self.algo.state_dict(),
                "replay": replay.state_dict(),
                "returns_to_go": replay.column("returns_to_go"),
                "normalizer": replay.normalizer.state_dict(), "finetune": self.finetune.state_dict(),
                "trainer": self.trainer.state_dict(), "rng": rng_state(), "precision": self.precision,
                "dataset_digest": self.dataset_record.digest}

    def load(self, state: dict[str, Any], path: Path) -> None:
        """A checkpoint's networks, replay position, fine-tuning and loop state, before the MLflow run
        is touched: a state that does not fit this code and config (written by another version: a
        network of another shape, changed keys) is one CheckpointError line, and the run is left
        as it was."""
        replay = self.replay
        try:
            self.algo.load_state_dict(state["algo"])
            replay.load_state_dict(state["replay"])
            replay.storage["returns_to_go"][: replay.size] = state["returns_to_go"].to(replay.device)
            self.finetune.load_state_dict(state.get("finetune") or {})
            self.trainer.load_state_dict(state["trainer"], self.device)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            what = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])  # torch: 2nd says which
            raise CheckpointError(
                f"checkpoint {path} does not fit this run ({type(exc).__name__}: {what[:300]}): "
                f"written by another version of this code? Continue it with the version that wrote "
                f"it, or start afresh with resume=never") from exc

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """After ``load`` and the MLflow run's start: where the loop continues, the random streams,
        and the resume recorded on the run."""
        if self.extension:  # back into the offline phase, which now runs to the larger budget
            loop = self.trainer.state
            loop.phase_index = next(i for i, p in enumerate(self.trainer.phases) if p.name == "offline_rl")
            loop.phase_step = self.extension[0]
        set_rng_state(state["rng"])
        step = int(state["global_step"])
        self.kept_step = step if not self.extension else None
        print(f"resuming from {path} (update step {step}, MLflow run {self.run_id})",
              file=sys.stderr, flush=True)
        self.tracker.set_tags({"resumed_from_step": step, "resumed_from": str(path)})

    def save(self, trainer: Trainer) -> None:
        """The loop's checkpoint callback: every metric up to this step is stored first; a full
        disk keeps the previous checkpoint and training goes on."""
        self.tracker.flush()
        step = trainer.state.global_step
        try:
            self.checkpoints.save(self.state_dict(), step)
            self.kept_step = step
        except DiskFullError as exc:  # keep training; the next interval tries again
            files = self.checkpoints.files()
            kept = (f"the checkpoint of update step {int(files[0].stem.split('-')[1])} is kept"
                    if files and is_intact(files[0]) else "no earlier checkpoint is kept")
            warn(f"{exc}: the checkpoint of update step {step} was not written, {kept}; training "
                 f"continues and the next checkpoint is tried as planned")
            self.tracker.set_tags({"checkpoint_disk_full": f"update step {step}: {exc}"})

    # ----- running and recording -----------------------------------------------------------------
    def execute(self) -> None:
        """The loop and what the run records; then the MLflow run's status, and its checkpoints
        kept only to resume (training/lifecycle.py)."""
        tracker, checkpoints = self.tracker, self.checkpoints

        def on_failure(exc: BaseException) -> None:
            if isinstance(exc, NonFiniteLossError) and checkpoints.files():
                # its checkpoints would resume into the same failure: the same command says so
                checkpoints.write_info({**self.info, "failed": str(exc)})
            elif not checkpoints.files() and not tracker.pending():
                checkpoints.clear()  # nothing to resume: the same command starts a new run

        # SLURM requeues a job stopped by SIGTERM / SIGUSR2
        train_tracked(self.trainer, tracker, checkpoints, record=self.record,
                      on_signal=bool(self.cfg.checkpoint.on_signal),
                      requeued=lambda exc: exc.reason == "SIGUSR2" or (
                          exc.reason == "SIGTERM" and bool(self.job.slurm_job_id)),
                      kept_step=lambda: self.kept_step, on_failure=on_failure)
        if self.continued:  # an earlier process's error / interruption is over
            tracker.delete_tags(STALE_TAGS)
        tracker.finish("FINISHED")
        checkpoints.clear()  # done: the same command starts a new run

    def record(self) -> None:
        """Compilation report, the resolved config and the final networks as artifacts."""
        tracker, step = self.tracker, self.trainer.state.global_step
        tracker.log_metrics(compile_metrics(self.compile_reports), step)
        tracker.set_tags({"compile": " | ".join(r.summary() for r in self.compile_reports)[:5000]})
        with tempfile.TemporaryDirectory() as tmp:
            config_path = Path(tmp) / "config.yaml"
            config_path.write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
            tracker.log_artifact(config_path)
            # the whole checkpoint: a finished run can be continued to a larger budget from it
            # (continue_from=<run id>), and finetune.from_run reads its networks
            final = self.state_dict()
            if self.finetune.agent is not None:  # the fine-tuned networks
                final["finetune_agent"] = self.finetune.agent.state_dict()
            tracker.log_artifact(save_checkpoint(Path(tmp) / "checkpoint.pt", final))

    def summary(self) -> str:
        """The lines a finished single run ends with (offline_rl.report)."""
        state, record = self.trainer.state, self.dataset_record
        return "\n".join(summary_lines(
            name=self.info["name"], status="FINISHED",
            dataset=f"{record.dataset_id} (digest {record.digest})",
            score=state.last_eval.get(SCORE),
            step=state.evaluated_at[0] if state.evaluated_at else None,
            episodes=int(self.cfg.eval.episodes), behaviour=record.behaviour_score,
            run_id=self.run_id, tracking_uri=self.store,
            experiment_id=getattr(self.tracker, "experiment_id", None)))

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()


# ----- naming, identity and settings ---------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not available on this machine (no CUDA); "
                          f"use device=auto or device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# what group_choices gives for a group that is off (none), left null, or unknown outside Hydra
NOT_CHOSEN = ("none", "None", "?")


def group_choices(cfg: DictConfig, groups: Sequence[str] = GROUPS) -> dict[str, str]:
    """Which option of each config group this run uses (from Hydra, else from the config)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return {g: str(choices.get(g)) for g in groups}
    except ValueError:  # composed outside @hydra.main (tests, notebooks): hydra.compose(...,
        # return_hydra_config=True) keeps the choices in the config; without them a group is "?"
        choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or cfg.get("choices", {})
        return {g: str(choices.get(g, "?")) for g in groups}


def run_name(choices: dict[str, str], seed: int, dataset_id: str) -> str:
    """e.g. td3_bc-none-hopper-medium-local-s0, td3_bc-ac-hopper-medium-local-td3_c-s0 (with
    online fine-tuning); a dataset given by id shows its id."""
    dataset = choices["dataset"] if choices["dataset"] != "minari" else dataset_id.replace("/", "-")
    finetune = choices.get("finetune")
    tail = f"-{finetune}" if finetune is not None and finetune not in NOT_CHOSEN else ""
    return f"{choices['algo']}-{choices['pretrain']}-{dataset}{tail}-s{seed}"


def load_source_run(from_run: str, tracker, algo, replay: ReplayBuffer, dataset_id: str,
                    digest: str | None) -> dict[str, Any]:
    """Load the offline networks of a previous run into ``algo`` for ``finetune.from_run``: an
    MLflow run id (its final ``checkpoint.pt`` artifact, from this run's store) or a path to a
    checkpoint file (or a folder holding ``checkpoint.pt``). Its data file must be this run's
    (``digest``, where the checkpoint records one), its state statistics this run's, its networks
    this run's shapes (the same algo / network options)."""
    key = f"finetune.from_run={from_run!r}"
    path = Path(str(from_run)).expanduser()
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        if path.suffix == ".pt" or "/" in str(from_run):
            raise ConfigError(f"{key}: no checkpoint file {path}; give an existing checkpoint.pt "
                              f"or the MLflow run id of a finished run")
        folder = Path(tempfile.mkdtemp(prefix="offline_rl-source-"))
        try:
            path = tracker.download_artifact(str(from_run), "checkpoint.pt", folder)
        except FileNotFoundError as exc:
            raise ConfigError(f"{key}: {exc}. Give the id of a FINISHED run in this store (see "
                              f"make mlflow-ui) or a path to its checkpoint.pt") from None
        tags = tracker.run_tags(str(from_run))  # the data it trained on, where its checkpoint is older
    else:
        tags = {}
    state = load_checkpoint(path, map_location=algo.device)
    # the data file itself: without normalised states (EDAC) the statistics below tell none apart
    recorded = state.get("dataset_digest") or tags.get("dataset_digest")
    if recorded and digest and recorded != digest:
        source = tags.get("dataset_id", "data")
        raise DatasetError(f"{key}: that run was trained on {source} with digest {recorded}; this "
                           f"run's {dataset_id} has digest {digest} (another dataset, or this one "
                           f"regenerated since): fine-tuning would continue networks trained on "
                           f"other data than this run's. Fine-tune a run trained on this file, use "
                           f"that run's dataset= if it was another dataset (its config.yaml), or "
                           f"put the old data file back")
    try:
        algo.load_state_dict(state["algo"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}: its networks do not fit this run's ({first}); use the algo= "
                          f"and network= options of that run (its config.yaml artifact)") from None
    theirs = StateNormalizer.from_state_dict(state["normalizer"])
    ours = replay.normalizer
    if theirs.mean.shape != ours.mean.shape or not (np.allclose(theirs.mean, ours.mean, atol=1e-5)
                                                    and np.allclose(theirs.std, ours.std, atol=1e-5)):
        raise ConfigError(f"{key}: that run normalised states with other statistics (another "
                          f"dataset, or another algo.normalize_states); use that run's dataset=")
    return {"global_step": int(state.get("global_step", 0)), "path": str(path)}


def refuse_other_data(recorded: str | None, now: str | None, dataset_id: str, what: str,
                      why: str, fresh: str | None) -> None:
    """A dataset regenerated or replaced under the same name would otherwise continue, or be
    pooled with, runs trained on the old file without a word: one DatasetError line instead.
    ``fresh``: how to start a new run beside the old one here (None in a sweep, whose jobs would
    still sit under the old runs' parent: there a new sweep name gives a new parent)."""
    if recorded and now and recorded != now:
        here = (f", or start a new run here with {fresh} (the old MLflow run is kept)" if fresh else
                ", or start the sweep under another name (hydra.sweeper.name=...: a new parent "
                "run; with resume=never if its jobs left checkpoints)")
        raise DatasetError(
            f"{what} trained on {dataset_id} with data digest {recorded}; that dataset's data "
            f"file now has digest {now} (regenerated or replaced since): {why}. Train on the new "
            f"data in another MLflow store (MLFLOW_TRACKING_URI or OFFLINE_RL_ROOT), put the old "
            f"data back{here}")


def finished_run(tracker, identity: str, parent_run_id: str | None) -> tuple[str, dict[str, float]] | None:
    """When this run identity already FINISHED (in this sweep, or as a single run): one line
    saying so -- its MLflow run, its score, how to run it again -- and (its run id, its last
    evaluation); else None."""
    runs = [r for r in tracker.search(f"tags.run_identity = '{identity}' and "
                                      f"attributes.status = 'FINISHED'")
            if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    if not runs:
        return None
    run = runs[0]
    metrics = run.data.metrics
    score = metrics.get(SCORE)
    scored = f", final normalised score {score:.1f}" if score is not None else ""
    job = job_context()  # a sweep's job by its swept values, as in its other messages
    name = job.label() if job.sweep else run.data.tags.get("mlflow.runName", run.info.run_id)
    tags = run.data.tags
    refuse_other_data(tags.get("dataset_digest"), current_digest(tags.get("dataset_id", "")),
                      tags.get("dataset_id", ""), f"{name} (MLflow run {run.info.run_id}) finished, but was",
                      "a run on the new data here would be pooled with it under the same name",
                      fresh=None if parent_run_id else "rerun=true")
    print(f"already finished: {name} (MLflow run {run.info.run_id}{scored}); nothing to do. To "
          f"run it again as a new MLflow run, add rerun=true", file=sys.stderr, flush=True)
    return run.info.run_id, {k: v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)}


def record_failed_start(tracker, cfg: DictConfig, name: str, choices: dict[str, str], identity: str,
                        exc: BaseException) -> None:
    """A sweep job that failed before its run started (its dataset, its limits): a FAILED child
    run carrying the one-line error, so the sweep's parent lists it (one per job: a rerun that
    fails the same way updates it)."""
    job = job_context()
    if job.parent_run_id is None:
        return
    try:
        earlier = [r for r in tracker.search(f"tags.run_identity = '{identity}' and "
                                             f"attributes.status = 'FAILED'")
                   if r.data.tags.get("mlflow.parentRunId") == job.parent_run_id]
        tags = {**choices, "seed": cfg.seed, **job.tags(), "run_identity": identity}
        tracker.start(job.run_name() or name, flatten(cfg), tags,
                      run_id=earlier[0].info.run_id if earlier else None,
                      parent_run_id=job.parent_run_id)
        tracker.finish("FAILED", error=str(exc))
    except Exception as record_error:  # noqa: BLE001 -- never hide the job's own error
        warn(f"could not record the failed job in MLflow ({type(record_error).__name__}: {record_error})")


def end_stale_runs(tracker, identity: str, parent_run_id: str | None, keep: str | None) -> None:
    """MLflow runs of this identity still RUNNING, though no process holds its lock (this one
    does now), are ghosts of killed processes: marked KILLED, saying why -- except ``keep``, the
    run the checkpoints continue (none with resume=never: its run is left behind too)."""
    for run in tracker.search(f"tags.run_identity = '{identity}' and attributes.status = 'RUNNING'"):
        if run.info.run_id == keep or run.data.tags.get("mlflow.parentRunId") != parent_run_id:
            continue
        tracker.mark_killed(run.info.run_id, "its process ended without a word (kill -9, a lost "
                            "node, out of memory); the same command started again as a new run")
        warn(f"marked the MLflow run {run.info.run_id} KILLED: it was left RUNNING by a process "
             f"that no longer runs, and this run does not continue it")


def budget_before(status: str | None, params: dict[str, str], tags: dict[str, str]) -> str:
    """The offline updates a run's final checkpoint was written at, for checkpoints from before
    they recorded it: a FINISHED run's ``updates`` tag (a continued run's; its param keeps the
    first budget); a continuation that did not finish: the budget its ``continued`` tag says it
    started from; else the param."""
    if status == "FINISHED" and tags.get("updates"):
        return tags["updates"]
    started = re.match(r"finished at ([\d,]+) offline updates", tags.get("continued", ""))
    return started.group(1).replace(",", "") if started else params.get("updates", "0")


def precision_change(state: dict[str, Any], path: Path, precision: str, cfg: DictConfig) -> str | None:
    """None when the checkpoint ``state`` was written in ``precision`` (checkpoints from before
    precisions existed are fp32); else, with ``precision_change=allow``, the tag value recording
    the change, and without it a ConfigError: one run never mixes precisions silently."""
    saved = state.get("precision", "fp32")
    if saved == precision:
        return None
    step = int(state["global_step"])
    if cfg.precision_change != "allow":
        raise ConfigError(
            f"the checkpoint {path} (update step {step}, MLflow run {state.get('run_id')}) was "
            f"trained in {saved}, and precision={cfg.precision} resolves to {precision} on this "
            f"device; one run does not mix precisions: run it where {saved} is available, or pass "
            f"precision_change=allow to continue it in {precision} (recorded in the run's tag "
            f"precision_changes)")
    warn(f"continuing the {saved} run of {path} in {precision} from update step {step} "
         f"(precision_change=allow; recorded in the run's tag precision_changes)")
    return f"{saved} until update step {step}, then {precision}"
