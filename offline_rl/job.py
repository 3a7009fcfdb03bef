"""What a job knows about the sweep it belongs to: the sweeper (offline_rl.sweep) exports the parent
run id, the sweep name and its axes in environment variables before launching jobs; each job
(offline_rl.run) reads them back through ``job_context``. Kept apart from the sweeper so
that a run and the sweeper both depend on it, not on each other."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

ENV_PARENT_RUN_ID = "OFFLINE_RL_PARENT_RUN_ID"
ENV_SWEEP_NAME = "OFFLINE_RL_SWEEP_NAME"
ENV_SWEEP_AXES = "OFFLINE_RL_SWEEP_AXES"  # JSON list of the keys with more than one value


def override_key(key: str) -> str:
    """``+pretrain.lambda`` / ``++seed`` / ``~x`` -> the config key."""
    return key.lstrip("+~")


def split_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return override_key(key), value


class JobFailed(Exception):
    """A sweep job that ended with a user-facing error (its one line already printed): an
    ordinary exception, so that the launcher records the job as failed and runs the others
    (``sys.exit`` in a joblib worker took the worker, and the job beside it, down)."""


# config groups whose option names say what they are (``pretrain=ac`` -> ``ac``)
# (network and finetune share option names such as `none`: they keep their key)
NAMED_BY_VALUE = ("algo", "pretrain", "dataset")
# the axes that name a dataset: last in a child's name, by value (a dataset chosen by Minari id too)
DATASET_AXES = ("dataset", "dataset.dataset_id")


@dataclass
class JobContext:
    """What a job knows about the sweep it belongs to (all empty for a single run)."""

    sweep: str | None = None
    parent_run_id: str | None = None
    axes: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    slurm_job_id: str | None = None

    @property
    def axis_values(self) -> dict[str, str]:
        values = dict(split_override(o) for o in self.overrides)
        return {axis: values[axis] for axis in self.axes if axis in values}

    def label(self) -> str:
        """The job in messages: ``algo=edac,pretrain=soft,seed=1`` (its swept values), else its
        overrides."""
        values = self.axis_values
        return (",".join(f"{k}={v}" for k, v in values.items()) if values else
                " ".join(self.overrides) or "job")

    def run_name(self) -> str | None:
        """The child run's name, scannable in the UI's runs table, which cuts names at about 20
        characters: ``edac soft s1`` -- a config group's swept option by its value alone, any
        other axis as ``name=value`` (its last key), the seed as ``s<N>``, the dataset last (the
        long one; its tag and param say it in full)."""
        values = self.axis_values
        if not values:
            return None
        last = [k for k in DATASET_AXES if k in values]
        parts = [v if k in NAMED_BY_VALUE else f"{k.rsplit('.', 1)[-1]}={v}"
                 for k, v in values.items() if k != "seed" and k not in last]
        parts += [f"s{values['seed']}"] if "seed" in values else []
        parts += [values[k] for k in last]
        return " ".join(parts)

    def tags(self) -> dict[str, str]:
        tags: dict[str, str] = {}
        if self.sweep:
            tags["sweep"] = self.sweep
            tags["sweep.axes"] = ",".join(self.axes)
            tags.update(self.axis_values)
        if self.overrides:
            tags["overrides"] = " ".join(self.overrides)
        if self.slurm_job_id:
            tags["slurm_job_id"] = self.slurm_job_id
        return tags


def slurm_job_id() -> str | None:
    """The SLURM job id as ``sacct`` / submitit show it (``<array job>_<task>`` for an array)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def job_context() -> JobContext:
    slurm = slurm_job_id()
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except ValueError:  # composed outside @hydra.main (tests, notebooks)
        return JobContext(slurm_job_id=slurm)
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return JobContext(overrides=overrides, slurm_job_id=slurm)
    try:
        axes = [str(a) for a in json.loads(os.environ.get(ENV_SWEEP_AXES, "[]"))]
    except ValueError:
        axes = []
    return JobContext(sweep=os.environ.get(ENV_SWEEP_NAME) or None,
                      parent_run_id=os.environ.get(ENV_PARENT_RUN_ID) or None,
                      axes=axes, overrides=overrides, slurm_job_id=slurm)


