"""Compose one run from a Hydra config: data -> algorithm -> phases -> the loop, tracked in MLflow.

Runs are preemption-safe. A run's identity is a hash of its resolved config (tracking, progress and
checkpoint keys left out); its checkpoints live in ``<checkpoint.dir>/<name>-<identity>/``: every
``checkpoint.every`` updates and when a signal stops it (SIGTERM from scancel / ``scontrol
requeue`` / a time limit, Ctrl-C, submitit's pre-timeout SIGUSR2, which then requeues the job),
each written atomically, the newest ``checkpoint.keep`` kept. With ``resume=auto`` the same command
(or the requeued SLURM job) continues from the newest readable checkpoint -- a corrupt one is
reported on stderr and in the MLflow tag ``checkpoint.corrupt``, and the one before it used --
into the same MLflow run, and ends with the weights an uninterrupted run would have (the model,
optimisers, replay sampling generator, global RNGs, loop position, partial metric window, the
convergence rule's history and the (soft) returns-to-go are all restored). A finished run removes
its checkpoints. In a sweep (offline_rl.sweep) the run is a child of the sweep's parent run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from offline_rl.config import validate
from offline_rl.dataset.record import describe as describe_dataset
from offline_rl.dataset.replay import ReplayBuffer, StateNormalizer
from offline_rl.errors import ConfigError, DiskFullError, NonFiniteLossError, OfflineRLError
from offline_rl.sweep import job_context
from offline_rl.tracker import NullTracker
from offline_rl.training.checkpoint import CheckpointDir, is_intact, load_checkpoint, save_checkpoint
from offline_rl.training.compiled import compile_metrics, optimise
from offline_rl.training.evaluation import Evaluator
from offline_rl.training.limits import check_data_limits
from offline_rl.training.loop import Interrupted, Phase, Trainer

GROUPS = ("algo", "pretrain", "dataset", "network", "finetune")
SPOOL = "tracking-spool.jsonl"  # in the checkpoint folder: what an unreachable server could not take
STALE_TAGS = ["error", "interrupted"]  # an earlier process's, removed when a continued run finishes


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


def group_choices(cfg: DictConfig) -> dict[str, str]:
    """Which option of each config group this run uses (from Hydra, else from the config)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return {g: str(choices.get(g)) for g in GROUPS}
    except ValueError:  # composed outside @hydra.main (tests, notebooks)
        return {g: str(cfg.get("choices", {}).get(g, "?")) for g in GROUPS}


def run_name(choices: dict[str, str], seed: int, dataset_id: str) -> str:
    """e.g. td3_bc-none-hopper-medium-local-s0, td3_bc-ac-hopper-medium-local-td3_c-s0 (with
    online fine-tuning); a dataset given by id shows its id."""
    dataset = choices["dataset"] if choices["dataset"] != "minari" else dataset_id.replace("/", "-")
    finetune = choices.get("finetune")
    tail = f"-{finetune}" if finetune not in (None, "none", "?", "None") else ""
    return f"{choices['algo']}-{choices['pretrain']}-{dataset}{tail}-s{seed}"


def flatten(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node

    walk("", container)
    return flat


def make(node: DictConfig) -> Any:
    """hydra.utils.instantiate, but our own errors come out as themselves, not wrapped in
    Hydra's InstantiationException (their message is what the researcher needs to read)."""
    try:
        return instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, OfflineRLError):
            raise cause from None
        raise


def check_combination(cfg: DictConfig) -> None:
    """Reject algorithm x pre-training / fine-tuning pairs that make no sense, before any data is
    loaded or generated (and, for sweeps, before any job is submitted)."""
    algo_class = get_class(cfg.algo._target_)
    make(cfg.pretrain).check(algo_class)
    make(cfg.finetune).check(algo_class)


def build(cfg: DictConfig, device: torch.device):
    """Everything a run needs, built from the config's ``_target_``s."""
    data = make(cfg.dataset)  # checked as it is read (offline_rl.dataset.checks)
    check_data_limits(cfg, data, device)  # before anything is allocated for it
    algo = make(cfg.algo)(data.obs_dim, data.act_dim, device=device)
    pretrain = make(cfg.pretrain)
    finetune = make(cfg.finetune)
    replay = ReplayBuffer.from_offline(
        data, device, gamma=algo.gamma, normalize_states=algo.normalize_states,
        bootstrap_timeouts=bool(getattr(pretrain, "bootstrap_timeouts", False)), seed=cfg.seed)
    return data, algo, pretrain, finetune, replay


# config keys that do not change what a run computes: left out of its identity
IDENTITY_EXCLUDED = ("tracker", "progress", "checkpoint", "resume", "threads")


def run_identity(cfg: DictConfig) -> str:
    """A hash of the resolved config minus tracking/progress/checkpoint keys: the same command
    gives the same identity (and checkpoint folder), whatever Hydra's output folder."""
    flat = {k: v for k, v in flatten(cfg).items() if k.split(".", 1)[0] not in IDENTITY_EXCLUDED}
    blob = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def rng_state() -> dict[str, Any]:
    """The global RNGs (torch's samples TD3+BC's target noise and EDAC's actions)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": [py_version, list(py_state), py_gauss],
             "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                       int(np_has_gauss), float(np_gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs as this process sees
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def checkpoint_settings(cfg: DictConfig) -> dict[str, Any]:
    ckpt = cfg.get("checkpoint") or {}
    settings = {"every": int(ckpt.get("every", 0) or 0), "keep": int(ckpt.get("keep", 2) or 2),
                "on_signal": bool(ckpt.get("on_signal", True)),
                "dir": ckpt.get("dir") or str(Path(os.environ.get("OFFLINE_RL_ROOT", ".")) / "checkpoints"),
                "resume": str(cfg.get("resume", "auto"))}
    if settings["resume"] not in ("auto", "never"):
        raise ConfigError(f"resume={settings['resume']!r} is not allowed: expected auto or never")
    if settings["every"] < 0:
        raise ConfigError(f"checkpoint.every={settings['every']} is not allowed: expected an "
                          f"integer >= 0 (0: no periodic checkpoints)")
    return settings


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def load_source_run(from_run: str, tracker, algo, replay: ReplayBuffer) -> dict[str, Any]:
    """Load the offline networks of a previous run into ``algo`` for ``finetune.from_run``: an
    MLflow run id (its final ``checkpoint.pt`` artifact, from this run's store) or a path to a
    checkpoint file (or a folder holding ``checkpoint.pt``). Its state statistics must be this
    run's (the same dataset), its networks this run's shapes (the same algo / network options)."""
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
    state = load_checkpoint(path, map_location=algo.device)
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


class SignalCheckpoint:
    """While the loop runs: SIGTERM (scancel, ``scontrol requeue``, a time limit), SIGINT (Ctrl-C)
    and SIGUSR2 (submitit's pre-timeout / preemption signal, when submitit handles it) ask the
    loop to write a checkpoint at the end of the current update; then the run stops as the signal
    wants (for SIGUSR2: submitit's own handler, which requeues the job). A second SIGINT / SIGTERM
    meets the handler that was there before (by default: stop at once)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.previous: dict[int, Any] = {}
        self.received: int | None = None

    def __enter__(self) -> "SignalCheckpoint":
        if threading.current_thread() is not threading.main_thread():
            return self
        wanted = [signal.SIGTERM, signal.SIGINT]
        usr2 = signal.getsignal(signal.SIGUSR2)
        if callable(usr2):  # submitit's checkpoint-and-requeue handler
            wanted.append(signal.SIGUSR2)
        for signum in wanted:
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        self.trainer.interrupt_requested = signal.Signals(signum).name
        if signum != signal.SIGUSR2:  # the next one acts at once
            signal.signal(signum, self._previous_or_default(signum))

    def _previous_or_default(self, signum: int):
        previous = self.previous.get(signum)
        return previous if previous is not None else signal.SIG_DFL

    def __exit__(self, *exc) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def finish(self) -> None:
        """After the checkpoint: stop the way the signal asks."""
        signum = self.received
        previous = self.previous.get(signum)
        self.__exit__()
        if signum == signal.SIGUSR2 and callable(previous):
            previous(signum, None)  # submitit: checkpoint the submission, requeue, exit
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(128 + int(signum))


def store_key(tracking_uri: str | None) -> str:
    """A short hash of the tracking store's URI: part of the checkpoint folder's name, so that
    checkpoints resume only into the store (and run) they were written for."""
    return hashlib.sha256(str(tracking_uri).rstrip("/").encode()).hexdigest()[:8]


def train(cfg: DictConfig) -> dict[str, float]:
    validate(cfg)
    check_combination(cfg)
    settings = checkpoint_settings(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    choices = group_choices(cfg)
    tracker = make(cfg.tracker)
    tracker.ensure_store()  # a server that does not answer fails here, in seconds

    # one folder per run identity and tracking store, held by one process at a time
    base_name = run_name(choices, cfg.seed, str(OmegaConf.select(cfg, "dataset.dataset_id",
                                                                 default="") or ""))
    identity = run_identity(cfg)
    store = getattr(tracker, "tracking_uri", None)
    checkpoints = CheckpointDir(Path(settings["dir"]) / f"{base_name}-{identity}-{store_key(store)}",
                                identity, keep=settings["keep"])
    checkpoints.lock(f"this run ({base_name}, checkpoints in {checkpoints.path})")
    try:
        tracker.use_spool(checkpoints.path / SPOOL)
        tracker.deliver_spool()  # what an earlier process could not send, before anything new
        return _train(cfg, settings, device, choices, tracker, checkpoints, base_name)
    finally:
        checkpoints.unlock()


def _train(cfg: DictConfig, settings: dict[str, Any], device: torch.device, choices: dict[str, str],
           tracker, checkpoints: CheckpointDir, base_name: str) -> dict[str, float]:
    job = job_context()
    data, algo, pretrain, finetune, replay = build(cfg, device)

    source = None  # fine-tuning a previous run's checkpoint: no pre-training, no offline phase
    if getattr(finetune, "from_run", None):
        source = load_source_run(finetune.from_run, tracker, algo, replay)

    def offline_update() -> dict[str, torch.Tensor]:
        return algo.update(replay.sample(cfg.batch_size))

    evaluator = None
    if cfg.eval.episodes > 0:
        evaluator = Evaluator(data.env_spec, cfg.eval.episodes, cfg.eval.seed + cfg.seed,
                              replay.normalizer, device, data.ref_min_score, data.ref_max_score)
    evaluations: dict[tuple[int, int], dict[str, float]] = {}

    def evaluate() -> dict[str, float]:
        """The acting phase's agent (fine-tuning trains its own), evaluated once per update step."""
        index = min(trainer.state.phase_index, len(phases) - 1)
        agent = phases[index].agent or algo
        key = (trainer.state.global_step, index)
        if key not in evaluations:
            evaluations.clear()
            evaluations[key] = evaluator(lambda obs: agent.act(obs, deterministic=True))
        return evaluations[key]

    # compiled update steps (offline_rl/training/compiled.py): compile=auto compiles the steps of
    # phases long enough to repay compilation (lazily, at their first call), eager fallback with a
    # warning; compile=eager never compiles (debugging)
    compile_mode = str(cfg.get("compile", "auto"))
    compile_reports = [optimise(algo, compile_mode, updates=int(cfg.updates))]

    phases: list[Phase] = []
    if source is None:
        phases += pretrain.phases(algo, replay, cfg.batch_size)
        phases.append(Phase("offline_rl", offline_update, int(cfg.updates)))
    phases += finetune.phases(algo, replay, data, cfg, evaluate if evaluator is not None else None)
    for phase in phases:  # fine-tuning trains its own agent
        if phase.agent is not None and phase.agent is not algo:
            compile_reports.append(optimise(phase.agent, compile_mode, updates=phase.steps))

    name = job.run_name() or base_name
    identity = checkpoints.identity
    store = getattr(tracker, "tracking_uri", None)

    # ----- resume: the latest readable checkpoint, else the run recorded in run.json -----
    resumed, corrupt = None, []
    run_id = None
    if settings["resume"] == "auto":
        def report(message: str) -> None:
            corrupt.append(message)
            warn(message)

        try:
            resume, run_id = resume_decision(checkpoints, tracker)
            found = checkpoints.load_latest(report) if resume else None
        except OfflineRLError:
            if evaluator is not None:
                evaluator.close()
            raise
        if found:
            run_id = found[0]["run_id"]
            resumed = found
    else:
        checkpoints.clear()

    tags = {**choices, "seed": cfg.seed, "dataset_id": data.dataset_id, "device": str(device),
            **job.tags(), "run_identity": identity, "checkpoint_dir": str(checkpoints.path)}
    if source is not None:
        tags.update({"finetune.from_run": finetune.from_run, "finetune.source": source["path"]})
    continued = run_id is not None
    run_id = tracker.start(name, flatten(cfg), tags, run_id=run_id, parent_run_id=job.parent_run_id)
    info = {"run_id": run_id, "identity": identity, "name": name, "tracking_uri": str(store)}
    checkpoints.write_info(info)
    if corrupt:
        tracker.set_tags({"checkpoint_corrupt": " | ".join(corrupt)})
    tracker.log_dataset(describe_dataset(data))  # the MLflow dataset input (Dataset column)

    def save(trainer: Trainer) -> None:
        tracker.flush()  # every metric up to this step is stored before the checkpoint says so
        step = trainer.state.global_step
        try:
            checkpoints.save({"run_id": run_id, "tracking_uri": str(store), "global_step": step,
                              "algo": algo.state_dict(), "replay": replay.state_dict(),
                              "returns_to_go": replay.storage["returns_to_go"][: replay.size].cpu(),
                              "normalizer": replay.normalizer.state_dict(),
                              "finetune": finetune.state_dict(),
                              "trainer": trainer.state_dict(), "rng": rng_state()}, step)
        except DiskFullError as exc:  # keep training; the next interval tries again
            files = checkpoints.files()
            kept = (f"the checkpoint of update step {int(files[0].stem.split('-')[1])} is kept"
                    if files and is_intact(files[0]) else "no earlier checkpoint is kept")
            warn(f"{exc}: the checkpoint of update step {step} was not written, {kept}; training "
                 f"continues and the next checkpoint is tried as planned")
            tracker.set_tags({"checkpoint_disk_full": f"update step {step}: {exc}"})

    use_checkpoints = settings["every"] > 0 or settings["on_signal"]
    trainer = Trainer(phases, tracker, evaluate if evaluator is not None else None,
                      log_every=cfg.log_every, eval_every=cfg.eval.every,
                      checkpoint=save if use_checkpoints else None,
                      checkpoint_every=settings["every"], progress=cfg.progress)
    if source is not None:  # the x-axis continues from the source run's last update
        trainer.state.global_step = source["global_step"]
    if resumed is not None:
        state, path = resumed
        algo.load_state_dict(state["algo"])
        replay.load_state_dict(state["replay"])
        replay.storage["returns_to_go"][: replay.size] = state["returns_to_go"].to(replay.device)
        finetune.load_state_dict(state.get("finetune") or {})
        trainer.load_state_dict(state["trainer"], device)
        set_rng_state(state["rng"])
        step = int(state["global_step"])
        print(f"resuming from {path} (update step {step}, MLflow run {run_id})", file=sys.stderr,
              flush=True)
        tracker.set_tags({"resumed_from_step": step, "resumed_from": str(path)})

    signals = SignalCheckpoint(trainer) if settings["on_signal"] else contextlib.nullcontext()
    try:
        with signals:
            try:
                trainer.run()
            except Interrupted as exc:
                tracker.flush()
                tracker.set_tags({"interrupted": str(exc)})
                print(f"{exc}; checkpoint written to {checkpoints.path}", file=sys.stderr, flush=True)
                if exc.reason == "SIGINT" or (exc.reason == "SIGTERM" and not job.slurm_job_id):
                    tracker.finish("KILLED")  # a later run of the same command resumes it
                signals.finish()
                raise
        tracker.log_metrics(compile_metrics(compile_reports), trainer.state.global_step)
        tracker.set_tags({"compile": " | ".join(r.summary() for r in compile_reports)[:5000]})
        with tempfile.TemporaryDirectory() as tmp:
            config_path = Path(tmp) / "config.yaml"
            config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
            tracker.log_artifact(config_path)
            ckpt = Path(tmp) / "checkpoint.pt"
            final = {"algo": algo.state_dict(), "replay": replay.state_dict(),
                     "normalizer": replay.normalizer.state_dict(),
                     "global_step": trainer.state.global_step}
            if getattr(finetune, "agent", None) is not None:  # the fine-tuned networks
                final["finetune_agent"] = finetune.agent.state_dict()
            save_checkpoint(ckpt, final)
            tracker.log_artifact(ckpt)
    except (Interrupted, SystemExit):
        raise  # stopped after a checkpoint (or by submitit's requeue): continued later
    except KeyboardInterrupt:
        if trainer.interrupt_requested is None:  # not through the checkpoint path
            tracker.finish("KILLED", error="KeyboardInterrupt")
        raise
    except BaseException as exc:
        tracker.finish("FAILED", error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, NonFiniteLossError) and checkpoints.files():
            # its checkpoints would resume into the same failure: the same command says so
            checkpoints.write_info({**info, "failed": str(exc)})
        elif not checkpoints.files() and not tracker.pending():
            checkpoints.clear()  # nothing to resume: the same command starts a new run
        raise
    finally:
        if evaluator is not None:
            evaluator.close()
    if continued:  # an earlier process's error / interruption is over
        tracker.delete_tags(STALE_TAGS)
    tracker.finish("FINISHED")
    checkpoints.clear()  # done: the same command starts a new run
    return trainer.state.last_eval


def resume_decision(checkpoints: CheckpointDir, tracker) -> tuple[bool, str | None]:
    """Whether to resume this folder's checkpoints, and the MLflow run they continue (from
    run.json). Not when they were written for another tracking store or their run is not in this
    store (said on stderr; the folder is cleared and the run starts afresh); a run that failed on
    non-finite values is not resumed at all (NonFiniteLossError saying how to start afresh)."""
    info = checkpoints.read_info() or {}
    run_id = info.get("run_id")
    store = str(getattr(tracker, "tracking_uri", None))
    recorded = info.get("tracking_uri")
    reason = None
    if recorded is not None and recorded != store:
        reason = f"they were written for the MLflow store {recorded}, not {store}"
    elif run_id and not isinstance(tracker, NullTracker) and tracker.run_status(run_id) is None:
        reason = f"their MLflow run {run_id} is not in the store {store}"
    if reason is not None:
        warn(f"not resuming the checkpoints in {checkpoints.path}: {reason}; starting afresh")
        checkpoints.clear()
        return False, None
    if info.get("failed"):
        raise NonFiniteLossError(
            f"the last run of this command (MLflow run {run_id}) failed: {info['failed']} Its "
            f"checkpoints in {checkpoints.path} would resume into the same failure, so they are "
            f"not used: once the cause is fixed, start afresh with resume=never (a new MLflow run; "
            f"the failed one is kept)")
    return True, run_id
