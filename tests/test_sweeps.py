"""Named sweeps (conf/experiment/*): multiruns by themselves, grids with fitting algorithm x
pre-training pairs, validated before anything is launched; the local launcher's cap; one MLflow
parent run per sweep with its jobs as tagged child runs; and, on the local SLURM cluster
(scripts/local_slurm.sh), a 2x2 sweep through the SLURM preset and a job requeued mid-run that
finishes as one MLflow run."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import forked
from conftest import (ROOT, SMALL_RUN, launch_command, launch_env, metric_steps, run_sweep,
                      search_runs, wait_for_checkpoint)

EXPERIMENTS = ["pretrain_ablation", "lambda_sweep", "layernorm_ablation", "qt_max_baseline", "paper_fig2"]

TINY = ["dataset=minari", "dataset.dataset_id=tests/hopper/random-v0", "network=small",
        "eval.episodes=1", "log_every=20", "progress=false", "updates=40", "pretrain.steps=20",
        "pretrain.until=null", "threads=1", "batch_size=32"]  # a shared 2-core machine


@pytest.mark.parametrize("axes, overrides, name", [
    (["algo", "pretrain", "seed"], ["algo=edac", "pretrain=soft", "seed=1"], "edac soft s1"),
    (["pretrain.lambda", "seed"], ["pretrain.lambda=0.5", "seed=2"], "lambda=0.5 s2"),
    (["dataset", "pretrain", "seed"], ["dataset=hopper-medium-local", "pretrain=ac", "seed=0"],
     "ac s0 hopper-medium-local"),
    (["dataset.dataset_id", "pretrain"], ["dataset.dataset_id=ui/hopper/random-v0", "pretrain=ac"],
     "ac ui/hopper/random-v0"),
])
def test_child_run_names_can_be_told_apart_in_20_characters(axes, overrides, name):
    """The UI cuts run names at about 20 characters: swept values first, the dataset last."""
    from offline_rl.job import JobContext

    assert JobContext(sweep="s", axes=axes, overrides=overrides).run_name() == name


def children_and_parent(store):
    runs = search_runs(store)
    parents = runs[runs["tags.sweep.role"] == "parent"]
    assert len(parents) == 1, runs[["tags.mlflow.runName", "status"]]
    parent = parents.iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert len(children) == len(runs) - 1  # every other run is a child of this parent
    return parent, children


# ----- the sweep files ------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_sweep_files_are_multiruns_with_three_seeds(experiment):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"  # no -m needed, never one silent job
    params = cfg.hydra.sweeper.params
    assert params.seed == "0,1,2"
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.offline_rl_sweeper.OfflineRLSweeper"


def dry_run(folder, *args: str) -> list[str]:
    result = forked.run(launch_command([*args, "hydra.sweeper.dry_run=true"], folder, sweep=True),
                        ROOT, launch_env(folder), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(folder.iterdir()) == []  # a dry run creates nothing
    return [line.split("job: ", 1)[1] for line in result.stdout.splitlines() if "  job: " in line]


def pairs(jobs: list[str], fixed: dict[str, str]) -> set[tuple[str, str]]:
    out = set()
    for job in jobs:  # a job is listed by its swept values
        values = {**fixed, **dict(o.split("=", 1) for o in job.split())}
        out.add((values["algo"], values["pretrain"]))
    return out


HARD, SOFT = ("none", "actor", "critic", "ac"), ("none", "soft_actor", "soft_critic", "soft")


@pytest.mark.parametrize("experiment,extra,count,expected_pairs", [
    ("pretrain_ablation", [], 24, {("td3_bc", p) for p in HARD} | {("edac", p) for p in SOFT}),
    ("paper_fig2", [], 36, {("td3_bc", "none"), ("td3_bc", "ac"), ("edac", "none"), ("edac", "soft")}),
    ("qt_max_baseline", [], 18, {("td3_bc", "none"), ("td3_bc", "ac"), ("td3_bc", "qt_max"),
                                 ("edac", "none"), ("edac", "soft"), ("edac", "qt_max")}),
    ("lambda_sweep", [], 30, {("td3_bc", "ac"), ("edac", "soft")}),
    # the grid is overridable from the command line
    ("pretrain_ablation", ["algo=edac", "seed=0,1,2,3,4"], 20, {("edac", p) for p in SOFT}),
])
@pytest.mark.slow  # a sweep's dry run: starts a process
def test_sweeps_pair_each_algorithm_with_its_own_pretraining(experiment, extra, count, expected_pairs,
                                                             tmp_path):
    jobs = dry_run(tmp_path, f"+experiment={experiment}", *extra)
    assert len(jobs) == count == len(set(jobs))
    assert pairs(jobs, dict(o.split("=", 1) for o in extra)) == expected_pairs
    if experiment == "lambda_sweep":
        assert {dict(o.split("=") for o in j.split())["pretrain.lambda"] for j in jobs} == {
            "0.0", "0.1", "0.25", "0.5", "1.0"}


@pytest.mark.slow
def test_bad_job_config_or_unfitting_pair_stops_the_sweep_before_launch(tmp_path, minari_root):
    result = run_sweep(["-m", *SMALL_RUN, "algo.tau=0.5,1.5"], tmp_path, minari_root)
    assert result.returncode == 2
    assert "algo.tau=1.5 is not allowed" in result.stderr and "nothing was launched" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()

    result = run_sweep(["-m", *SMALL_RUN, "algo=td3_bc,edac", "pretrain=ac"], tmp_path, minari_root)
    assert result.returncode == 2
    assert "hydra.sweeper.skip_incompatible=true" in result.stderr and "algo=edac" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_sweep_name_from_the_swept_axes():
    from omegaconf import OmegaConf

    from offline_rl.sweep import MAX_SWEEP_NAME, Grid, sweep_name

    config = OmegaConf.create({"hydra": {"runtime": {"choices": {"algo": "td3_bc"}}}})
    grid = Grid({"pretrain": ["ac", "none"], "seed": ["0", "1"], "algo": ["td3_bc"]}, [])
    assert sweep_name(None, config, grid) == "pretrain=ac,none x seed=0,1"
    assert sweep_name("mine", config, grid) == "mine"
    named = OmegaConf.create({"hydra": {"runtime": {"choices": {"experiment": "lambda_sweep"}}}})
    assert sweep_name(None, named, grid) == "lambda_sweep"
    assert sweep_name(None, config, Grid({"seed": ["0"]}, [])) == "multirun"  # nothing varies
    long = Grid({"seed": [str(i) for i in range(200)]}, [])
    assert len(sweep_name(None, config, long)) == MAX_SWEEP_NAME


# ----- running sweeps locally -----------------------------------------------------------------


@pytest.mark.slow
def test_named_sweep_without_dash_m_runs_every_job_under_one_parent(tmp_path, minari_root):
    result = run_sweep(["+experiment=pretrain_ablation", "algo=td3_bc", "pretrain=none,ac", "seed=0,1",
                        "hydra/launcher=local", "hydra.sweeper.progress_every_s=1", *TINY],
                       tmp_path, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    # while the jobs ran, the launching terminal got the sweep's progress (only when it moved)
    progress = [l for l in result.stderr.splitlines() if "] sweep 'pretrain_ablation': " in l]
    assert progress and all(re.search(r"\d/4 finished, \d running, \d waiting, \d failed", l)
                            for l in progress), result.stderr[-3000:]
    assert len(progress) == len(set(l.split("] ", 1)[1] for l in progress))
    parent, children = children_and_parent(tmp_path)
    assert parent["tags.mlflow.runName"] == "pretrain_ablation" and parent["status"] == "FINISHED"
    assert parent["params.grid.pretrain"] == "none,ac" and parent["params.grid.seed"] == "0,1"
    assert json.loads(parent["tags.sweep.grid"]) == {"pretrain": ["none", "ac"], "seed": ["0", "1"]}
    assert parent["tags.launcher"] == "local"
    assert sorted(children["tags.mlflow.runName"]) == ["ac s0", "ac s1", "none s0", "none s1"]
    assert set(children["status"]) == {"FINISHED"}
    assert set(children["tags.sweep"]) == {"pretrain_ablation"}
    # the launching process hashed the same run identities its jobs computed for themselves
    from offline_rl.sweep import sweep_identity
    assert parent["tags.sweep.identity"] == sweep_identity("pretrain_ablation", list(children["tags.run_identity"]))
    assert set(children["tags.sweep.axes"]) == {"pretrain,seed"}
    for _, child in children.iterrows():
        assert child["tags.mlflow.runName"] == f"{child['tags.pretrain']} s{child['tags.seed']}"
        assert child["params.pretrain"] == child["tags.pretrain"]  # group choices are params too
        assert f"pretrain={child['tags.pretrain']}" in child["tags.overrides"]
        assert "+experiment=pretrain_ablation" in child["tags.overrides"]
    # the local preset's cap: at most 2 jobs at once
    spans = [(r["start_time"], r["end_time"]) for _, r in children.iterrows()]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2


@pytest.mark.slow
def test_a_failed_job_fails_the_parent(tmp_path, minari_root, new_store):
    new_store(tmp_path)
    # a critic learning rate of 1e30 makes the losses non-finite at once
    result = run_sweep(["-m", "dataset=minari", "dataset.dataset_id=tests/hopper/random-v0",
                        "algo.critic_lr=0.0003,1e30", "network=small", "eval.episodes=0",
                        "progress=false", "updates=40", "log_every=20", "threads=1", "batch_size=32"],
                       tmp_path, minari_root)
    assert result.returncode != 0
    parent, children = children_and_parent(tmp_path)
    assert parent["status"] == "FAILED"
    # no experiment file names the sweep: the parent is named after what was swept
    assert parent["tags.mlflow.runName"] == "algo.critic_lr=0.0003,1e+30"  # as Hydra reads 1e30
    status = dict(zip(children["tags.algo.critic_lr"], children["status"]))
    assert status == {"0.0003": "FINISHED", "1e+30": "FAILED"}


@pytest.mark.slow
def test_a_killed_sweep_started_again_continues_under_the_same_parent(tmp_path, minari_root, new_store):
    """kill -9 of the whole sweep (launcher and jobs) once one job has finished and the next has
    a checkpoint; the same command again skips the finished job with one line, resumes the other
    from its checkpoint, and both stay children of the one parent run."""
    import os
    import signal

    new_store(tmp_path)
    args = ["-m", "hydra/launcher=local", "hydra.launcher.n_jobs=1", "seed=0,1", "updates=600",
            "checkpoint.every=50", "eval.every=300", *[a for a in TINY if not a.startswith("updates")]]
    command = launch_command(args, tmp_path, sweep=True)
    proc = forked.start(command, ROOT, launch_env(minari_root), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:  # seed 0 finished (its checkpoints gone), seed 1 checkpointed
            try:
                runs = search_runs(tmp_path)
            except AttributeError:  # the sweep has not created its experiment yet
                runs = pd.DataFrame()
            done = len(runs) and (runs["status"] == "FINISHED").sum() >= 1
            if done and list(tmp_path.glob("checkpoints/*s1*/step-*.pt")):
                break
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the sweep did not get that far in 300 s"
            time.sleep(0.1)
        # the same sweep in a second terminal meanwhile: one line, exit 2, nothing touched
        second = forked.run(command, ROOT, launch_env(minari_root), timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        assert re.search(r"^error: sweep '.*' is already running: process \d+ on .* holds it "
                         r"\(.*sweep-[0-9a-f]{12}-[0-9a-f]{8}\.lock\)", second.stderr, re.M), second.stderr[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its job processes
        proc.wait(timeout=30)
    finally:
        forked.close(proc)
    parent, children = children_and_parent(tmp_path)
    first_parent = parent["run_id"]
    assert sorted(children["status"]) == ["FINISHED", "RUNNING"]

    # the same sweep again, with a setting that changes no run's result (checkpoints kept)
    again = forked.run([*command, "checkpoint.keep=3"], ROOT, launch_env(minari_root), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    parent, children = children_and_parent(tmp_path)  # still one parent ...
    assert parent["run_id"] == first_parent and parent["status"] == "FINISHED"
    assert sorted(children["tags.mlflow.runName"]) == ["s0", "s1"]  # ... and no new child
    assert set(children["status"]) == {"FINISHED"}
    assert "continuing the sweep of MLflow parent run " + first_parent in again.stdout + again.stderr
    finished_line = [line for line in again.stderr.splitlines() if line.startswith("already finished: seed=0")]
    assert len(finished_line) == 1 and "rerun=true" in finished_line[0]
    assert "resuming from" in again.stderr
    assert not list(tmp_path.glob("checkpoints/sweep-*.lock"))  # the finished sweep let go
    resumed = children[children["tags.mlflow.runName"] == "s1"].iloc[0]
    steps = metric_steps(tmp_path, resumed["run_id"], "offline_rl/critic_loss")
    assert steps == sorted(set(steps)) and steps[-1] == 600  # each step once, to the end


@pytest.mark.slow  # starts a process
def test_the_same_finished_command_says_so_instead_of_running_again(tmp_path, minari_root, new_store):
    from conftest import run_launch

    new_store(tmp_path)
    args = [*TINY, "eval.every=0"]
    first = run_launch(args, tmp_path, minari_root)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_launch(args, tmp_path, minari_root)
    assert again.returncode == 0, again.stderr[-3000:]
    run = search_runs(tmp_path)
    assert len(run) == 1
    assert (f"already finished: td3_bc-none-tests-hopper-random-v0-s0 (MLflow run {run.iloc[0]['run_id']}, "
            f"final normalised score") in again.stderr and "add rerun=true" in again.stderr
    third = run_launch([*args, "rerun=true"], tmp_path, minari_root)
    assert third.returncode == 0, third.stderr[-3000:]
    assert len(search_runs(tmp_path)) == 2


# ----- on the local SLURM cluster -------------------------------------------------------------


def sacct_states(job_id: str) -> list[str]:
    """Every state the job went through (-D: requeued instances too); sacct may lag a little."""
    out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "JobID,State", "-j", job_id],
                         capture_output=True, text=True, timeout=30).stdout
    return [line.split("|")[1].split()[0] for line in out.splitlines() if line.strip()]


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")  # one worker starts (and stops) the cluster: make test's --dist loadgroup
@pytest.mark.slow
def test_slurm_2x2_sweep_children_under_one_parent(slurm_cluster, tmp_path, minari_root):
    result = run_sweep(["-m", "pretrain=none,ac", "seed=0,1", "hydra/launcher=slurm_local",
                        "hydra.sweeper.name=slurm-2x2", *TINY], tmp_path, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = children_and_parent(tmp_path)  # the sweeper created the store
    assert parent["tags.mlflow.runName"] == "slurm-2x2" and parent["status"] == "FINISHED"
    assert parent["tags.launcher"] == "slurm_local"
    assert parent["params.grid.pretrain"] == "none,ac" and parent["params.grid.seed"] == "0,1"
    assert len(children) == 4 and set(children["status"]) == {"FINISHED"}
    assert set(children["tags.sweep"]) == {"slurm-2x2"}
    assert {(r["tags.pretrain"], r["tags.seed"]) for _, r in children.iterrows()} == {
        ("none", "0"), ("none", "1"), ("ac", "0"), ("ac", "1")}
    job_ids = list(children["tags.slurm_job_id"])
    assert all(re.fullmatch(r"\d+_[0-3]", j) for j in job_ids)
    assert len({j.split("_")[0] for j in job_ids}) == 1  # one job array
    for job_id in job_ids:
        for _ in range(10):
            states = sacct_states(job_id)
            if states and states[-1] == "COMPLETED":
                break
            time.sleep(1)
        assert states[-1] == "COMPLETED", (job_id, states)


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")  # one worker starts (and stops) the cluster: make test's --dist loadgroup
@pytest.mark.slow
def test_slurm_job_requeued_mid_run_finishes_as_one_run(slurm_cluster, tmp_path, minari_root,
                                                         new_store):
    new_store(tmp_path)
    args = ["-m", "seed=0", "hydra/launcher=slurm_local", "dataset=minari",
            "dataset.dataset_id=tests/hopper/random-v0", "network=small", "eval.episodes=1",
            "eval.every=500", "log_every=50", "progress=false", "updates=1500", "checkpoint.every=50",
            "threads=1", "batch_size=32"]
    driver = forked.start(launch_command(args, tmp_path, sweep=True), ROOT, launch_env(minari_root))
    job_id = None
    try:
        wait_for_checkpoint(driver, tmp_path)
        children = search_runs(tmp_path)
        child = children[children["tags.sweep.role"] != "parent"].iloc[0]
        job_id = child["tags.slurm_job_id"]
        requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        assert requeue.returncode == 0, requeue.stderr
        output = "".join(driver.communicate(timeout=400))
    finally:
        if driver.poll() is None and job_id is not None:
            subprocess.run(["scancel", str(job_id)], capture_output=True)
        forked.close(driver)
    assert driver.returncode == 0, output[-3000:]

    runs = search_runs(tmp_path)
    assert len(runs) == 2  # the parent and ONE child: the requeued job continued its run
    run = runs[runs["tags.sweep.role"] != "parent"].iloc[0]
    assert run["run_id"] == child["run_id"] and run["status"] == "FINISHED"
    assert run["tags.slurm_job_id"] == job_id
    assert int(run["tags.resumed_from_step"]) > 0
    # the interruption was over once the requeued job finished: its stale tag is removed
    assert "tags.interrupted" not in run.index or run["tags.interrupted"] != run["tags.interrupted"]
    losses = metric_steps(tmp_path, run["run_id"], "offline_rl/critic_loss")
    assert losses == list(range(50, 1501, 50))  # continuous: no step missing, none twice
    assert metric_steps(tmp_path, run["run_id"], "eval/return_mean") == [500, 1000, 1500]
    for _ in range(10):
        states = sacct_states(job_id)
        if states[-1:] == ["COMPLETED"]:
            break
        time.sleep(1)
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states


def test_a_parent_recorded_by_the_old_identity_is_adopted_only_when_its_children_are_this_sweep_s():
    """Sweeps started before 2026-12-04 recorded an identity of their jobs' override strings. Such
    a parent is continued when every child it has is one of this sweep's jobs (by run identity);
    an experiment file edited since gives other jobs for the same overrides: another sweep."""
    from types import SimpleNamespace

    from offline_rl.sweep import earlier_parent

    def run(run_id, **tags):
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(tags=tags))

    class Store:
        def __init__(self, children):
            self.children = children

        def search(self, filter_string):
            if "sweep.identity" in filter_string:
                return [run("p", **{"sweep.role": "parent"})] if "'old'" in filter_string else []
            return [run(f"c{i}", run_identity=c) for i, c in enumerate(self.children)]

    assert [r.info.run_id for r in earlier_parent(Store(["a", "b"]), "new", "old", ["a", "b", "c"])] == ["p"]
    assert earlier_parent(Store(["a", "x"]), "new", "old", ["a", "b", "c"]) == []
    assert earlier_parent(Store([]), "nothing", "nothing either", ["a"]) == []
