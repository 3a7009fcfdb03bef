"""analysis/: synthetic runs with known metric histories in a temporary sqlite MLflow store (made
once for the module); aggregates, intervals, steps-to-threshold, window and fine-tuning numbers
against hand-computed values; missing seeds / unequal grids / duplicates reported; figures
checked through their matplotlib objects; the CLI end to end, artifacts included."""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import forked
from tests.conftest import ROOT

T_975_2 = 4.302652729911275   # Student-t 0.975 quantile, 2 degrees of freedom
STEPS = list(range(0, 10001, 1000))
OFFSETS = {0: -2.0, 1: 0.0, 2: 2.0}  # per-seed offsets: mean 0, sample std 2


def none_curve(step):   # baseline: linear to 100 at 10k
    return step / 100


def ac_curve(step):     # pre-trained: 2k updates of pre-training, reaches 100 at 4k
    return min(100.0, step / 40)


def log_run(client, experiment_id, *, name, tags, params, histories, parent=None,
            status="FINISHED", latest_only=None):
    from mlflow.entities import Metric, Param

    all_tags = {"mlflow.runName": name, **{k: str(v) for k, v in tags.items()}}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, run_name=name, tags=all_tags)
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
    metrics, ts = [], 1_000
    for key, points in histories.items():
        for step, value in points:
            ts += 1
            metrics.append(Metric(key, float(value), ts, int(step)))
    for key, value in (latest_only or {}).items():
        ts += 1
        metrics.append(Metric(key, float(value), ts, 0))
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i:i + 1000])
    if status != "RUNNING":
        client.set_terminated(rid, status=status)
    return rid


def standard_run(client, exp, parent, dataset, pretrain, seed, *, steps=STEPS, algo="td3_bc",
                 extra_params=None, name_suffix=""):
    curve = ac_curve if pretrain == "ac" else none_curve
    pre = 2000 if pretrain == "ac" else 0
    hist = {"eval/normalized_score_mean": [(s, curve(s) + OFFSETS[seed]) for s in steps],
            "phase_start/offline_rl": [(pre, pre)], "phase_end/offline_rl": [(steps[-1], steps[-1])]}
    if pre:
        hist["phase_start/pretrain_actor_critic"] = [(0, 0)]
        hist["phase_end/pretrain_actor_critic"] = [(pre, pre)]
    tags = {"algo": algo, "pretrain": pretrain, "dataset": dataset, "network": "default",
            "finetune": "none", "seed": seed, "dataset_id": f"local/{dataset}", "phase": "offline_rl",
            "sweep": "pretrain_ablation", "sweep.axes": "pretrain,seed",
            "overrides": f"pretrain={pretrain} seed={seed}", "checkpoint_dir": f"/ck/{seed}{pretrain}"}
    params = {"algo._target_": f"x.{algo}", "pretrain._target_": f"x.{pretrain}",
              "pretrain.lambda": 0.0, "network.actor_layer_norm": True,
              "network.critic_layer_norm": True, "seed": seed, "updates": 10000,
              **(extra_params or {})}
    return log_run(client, exp, name=f"{algo}-{pretrain}-{dataset}-s{seed}{name_suffix}", tags=tags,
                   params=params, histories=hist, parent=parent)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store: experiment offline_rl with a clean sweep (2 datasets x {none, ac} x 3
    seeds under a parent run), experiment 'messy' (missing seed, shifted grid, duplicate seed,
    resumed run, a RUNNING run), experiment 'ft' (fine-tuning runs), experiment 'ablate'."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    art = (root / "artifacts").as_uri()
    exp = client.create_experiment("offline_rl", artifact_location=art)
    parent = client.create_run(exp, run_name="pretrain_ablation",
                               tags={"sweep": "pretrain_ablation"}).info.run_id
    for dataset in ("hopper-medium-local", "walker2d-medium-local"):
        for pretrain in ("none", "ac"):
            for seed in (0, 1, 2):
                standard_run(client, exp, parent, dataset, pretrain, seed)
    client.set_terminated(parent)

    messy = client.create_experiment("messy", artifact_location=art)
    for pretrain in ("none", "ac"):
        for seed in (0, 1, 2):
            if pretrain == "ac" and seed == 2:
                continue  # missing seed
            steps = STEPS
            if pretrain == "none" and seed == 1:
                steps = list(range(500, 9001, 1000))  # shifted grid, ends earlier
            standard_run(client, messy, None, "hopper-medium-local", pretrain, seed, steps=steps)
    # same config and seed again, but a different lambda: duplicate seed in its group
    standard_run(client, messy, None, "hopper-medium-local", "none", 0,
                 extra_params={"pretrain.lambda": 0.5}, name_suffix="-again")
    # a resumed run: step 3000 logged twice (first 0.0, then the right value)
    log_run(client, messy, name="resumed", tags={"algo": "td3_bc", "pretrain": "none",
                                                 "dataset": "halfcheetah-medium-local", "seed": 0},
            params={"pretrain.lambda": 0.0},
            histories={"eval/normalized_score_mean": [(0, 0.0), (3000, 0.0), (3000, 30.0)]})
    log_run(client, messy, name="still-running", tags={"algo": "td3_bc", "pretrain": "none",
                                                       "dataset": "hopper-medium-local", "seed": 5},
            params={}, histories={"eval/normalized_score_mean": [(0, 1.0)]}, status="RUNNING")

    ft = client.create_experiment("ft", artifact_location=art)
    for seed in (0, 1, 2):
        # offline until 10k (score 50 + offset), fine-tuning from 10k: 100 env steps per update
        evals = [(s, 50 + OFFSETS[seed]) for s in range(0, 10001, 2000)]
        evals += [(10000 + s, 50 + s / 100 + OFFSETS[seed]) for s in range(1000, 4001, 1000)]
        env = [(10000 + s, s * 100) for s in range(0, 4001, 1000)]
        log_run(client, ft, name=f"ft-s{seed}", tags={"algo": "td3_bc", "pretrain": "ac",
                                                      "dataset": "hopper-medium-local",
                                                      "finetune": "td3", "seed": seed},
                params={}, histories={"eval/normalized_score_mean": evals,
                                      "finetune/env_steps": env,
                                      "phase_start/finetune": [(10000, 10000)]})
    # one run with an explicit offline score metric
    log_run(client, ft, name="ft-explicit", tags={"algo": "td3_bc", "pretrain": "ac",
                                                 "dataset": "walker2d-medium-local",
                                                 "finetune": "td3", "seed": 0},
            params={}, histories={"eval/normalized_score_mean": [(0, 10.0), (100, 20.0), (200, 60.0)],
                                  "finetune/env_steps": [(100, 0), (200, 5000)],
                                  "phase_start/finetune": [(100, 100)]},
            latest_only={"finetune/offline_score": 25.0})

    ablate = client.create_experiment("ablate", artifact_location=art)
    for lam, shift in ((0.0, 0.0), (0.1, 10.0)):
        for seed in (0, 1, 2):
            hist = {"eval/normalized_score_mean": [(s, none_curve(s) + shift + OFFSETS[seed])
                                                   for s in STEPS],
                    "phase_start/offline_rl": [(1000, 1000)]}
            log_run(client, ablate, name=f"lam{lam}-s{seed}",
                    tags={"algo": "edac", "pretrain": "soft", "dataset": "hopper-medium-local",
                          "network": "default", "finetune": "none", "seed": seed},
                    params={"pretrain.lambda": lam, "network.actor_layer_norm": True,
                            "network.critic_layer_norm": True}, histories=hist)
    return {"uri": uri, "client": client, "parent": parent, "root": root}


@pytest.fixture(scope="module")
def clean(store, tmp_path_factory):
    from analysis import load_runs

    return load_runs(store["uri"], parent_run_id=store["parent"],
                     cache=tmp_path_factory.mktemp("cache"))


# ------------------------------------------------------------------------------------ loading

def test_load_tidy_frames(clean, store):
    assert len(clean.runs) == 12
    assert clean.parent_run_id == store["parent"]
    m = clean.metrics
    assert set(m["metric"]) == {"eval/normalized_score_mean"}
    assert len(m) == 12 * len(STEPS)
    for column in ("run_id", "metric", "step", "value", "algo", "pretrain", "dataset", "seed",
                   "pretrain.lambda", "network.actor_layer_norm", "dataset_name", "layernorm",
                   "pretrain_steps", "sweep", "overrides", "phase_start/offline_rl"):
        assert column in m.columns, column
    assert m["seed"].dtype.kind == "i" and m["step"].dtype.kind == "i"
    assert set(clean.runs.loc[clean.runs["pretrain"] == "ac", "pretrain_steps"]) == {2000}
    assert set(clean.runs["layernorm"]) == {"actor+critic"}
    assert clean.warnings == []


def test_selection_by_experiment_filter_and_sweep(store):
    from analysis import load_runs

    rs = load_runs(store["uri"], experiment="offline_rl", cache=False,
                   filter_string="tags.pretrain = 'ac'")
    assert len(rs.runs) == 6 and set(rs.runs["pretrain"]) == {"ac"}
    assert rs.parent_run_id == store["parent"]  # inferred: every run has the same parent
    rs = load_runs(store["uri"], experiment="offline_rl", sweep="pretrain_ablation", cache=False)
    assert len(rs.runs) == 12  # the parent run itself is left out


def test_more_metrics_on_demand_and_missing(clean):
    rs = clean.select(pretrain="ac", dataset="hopper-medium-local")
    phase = rs.history("phase_end/pretrain_actor_critic")
    assert set(phase["value"]) == {2000.0}
    assert len(rs.runs) == 3


def test_cache_is_used_and_invalidated(store, tmp_path, monkeypatch):
    import analysis.load as load

    client = store["client"]
    exp = client.create_experiment("cache_test")
    for seed in (0, 1):
        log_run(client, exp, name=f"c{seed}", tags={"pretrain": "none", "seed": seed}, params={},
                histories={"eval/normalized_score_mean": [(s, s) for s in STEPS]})
    rs = load.load_runs(store["uri"], experiment="cache_test", cache=tmp_path)
    assert len(list(tmp_path.rglob("*.pkl"))) == 2

    def boom(*a, **k):
        raise AssertionError("fetched although cached")

    monkeypatch.setattr(load, "_fetch_uncached", boom)
    again = load.load_runs(store["uri"], experiment="cache_test", cache=tmp_path)
    pd.testing.assert_frame_equal(rs.metrics.reset_index(drop=True),
                                  again.metrics.reset_index(drop=True))
    monkeypatch.undo()
    # a run that logs more gets a new signature: only that run is fetched again
    from mlflow.entities import Metric

    rid = rs.runs["run_id"].iloc[0]
    client.log_batch(rid, metrics=[Metric("eval/normalized_score_mean", 1.0, 10**13, 11000)])
    fetched = []
    real = load._fetch_uncached
    monkeypatch.setattr(load, "_fetch_uncached",
                        lambda c, pairs, w, **k: fetched.extend(pairs) or real(c, pairs, w))
    third = load.load_runs(store["uri"], experiment="cache_test", cache=tmp_path)
    assert fetched == [(rid, "eval/normalized_score_mean")]
    assert third.metrics.loc[third.metrics["run_id"] == rid, "step"].max() == 11000


def test_thread_pool_path_matches_bulk(store, monkeypatch):
    """The per-(run, key) path used for servers gives the same frame as the sqlite bulk path."""
    import analysis.load as load

    bulk = load.load_runs(store["uri"], parent_run_id=store["parent"], cache=False)
    monkeypatch.setattr(load, "_BULK_CHUNK", 5)
    chunked = load.load_runs(store["uri"], parent_run_id=store["parent"], cache=False)
    client = load.make_client(store["uri"])
    pairs = [(r, "eval/normalized_score_mean") for r in bulk.runs["run_id"]]
    pooled = load._fetch_uncached(client, pairs, max_workers=4, bulk=False)
    for run_id, frame in pooled.items():
        ref = bulk.metrics[bulk.metrics["run_id"] == run_id[0]].sort_values("step")
        assert frame.sort_values("step")["value"].tolist() == ref["value"].tolist()
    assert len(chunked.metrics) == len(bulk.metrics)


# ------------------------------------------------------------------------------------ aggregate

def test_aggregate_mean_std_t_interval(clean):
    from analysis import aggregate

    agg = aggregate(clean)
    assert agg.grouping.panel == ["dataset_name"] and agg.grouping.variant == ["pretrain"]
    c = agg.curves
    assert set(c["variant"]) == {"pretrain=none", "pretrain=ac"}
    assert len(c) == 2 * 2 * len(STEPS)
    half = T_975_2 * 2 / math.sqrt(3)
    for _, row in c.iterrows():
        expect = (ac_curve if "ac" in row["variant"] else none_curve)(row["step"])
        assert row["n"] == 3 and row["interpolated"] == 0
        assert row["mean"] == pytest.approx(expect)
        assert row["std"] == pytest.approx(2.0)
        assert row["sem"] == pytest.approx(2 / math.sqrt(3))
        assert row["ci_low"] == pytest.approx(expect - half)
        assert row["ci_high"] == pytest.approx(expect + half)
    assert agg.warnings == []
    assert "Student-t 95" in agg.method


def test_bootstrap_interval_is_deterministic_and_bounded():
    from analysis import interval

    v = np.array([1.0, 2.0, 6.0])
    a = interval(v, "bootstrap", rng=np.random.default_rng(0))
    b = interval(v, "bootstrap", rng=np.random.default_rng(0))
    assert a == b and 1.0 <= a[0] < v.mean() < a[1] <= 6.0
    assert all(np.isnan(interval(np.array([3.0]))))  # one seed: no interval


def test_missing_seed_unequal_grid_duplicates_reported(store):
    from analysis import AnalysisError, aggregate, load_runs

    rs = load_runs(store["uri"], experiment="messy", cache=False)
    joined = "\n".join(rs.warnings)
    assert "status RUNNING" in joined and "still-running" in joined
    assert "duplicate step" in joined
    resumed = rs.metrics[rs.metrics["run_name"] == "resumed"]
    assert resumed.loc[resumed["step"] == 3000, "value"].tolist() == [30.0]  # latest kept

    hop = rs.select(dataset="hopper-medium-local")
    agg = aggregate(hop, variant="pretrain")
    text = "\n".join(agg.warnings)
    assert "missing seed(s) [2]" in text and "pretrain=ac" in text
    assert "2 runs with seed 0" in text and "pretrain.lambda" in text  # duplicate, with its cause
    # every run of the group is off the grid (seed 1 shifted by 500): one line adds them up
    assert ("pretrain=none: the steps of 3 of 3 runs (seeds 0, 1, 2) differ from the group's grid" in text
            and "outside a run's range: seed 1 (500-8500: 3)" in text)  # none at 0, 9000, 10000
    assert "left out of the curve" in text  # steps 9500..10000: only 2 of 3 none runs
    none = agg.curves[agg.curves["variant"] == "pretrain=none"].set_index("step")
    # grid = union of steps; seed 1 (shifted) interpolated inside 500..9000 only
    assert 1000 in none.index and 1500 in none.index and 10000 not in none.index
    # at step 2000: seeds 0 and 2 exact (18, 22 -> the "-again" rerun replaced seed 0: 20-2=18),
    # seed 1 interpolated between 1500 (15) and 2500 (25) -> 20
    assert none.loc[2000, "mean"] == pytest.approx(20.0)
    assert none.loc[2000, "interpolated"] == 1
    # at 500 only seed 1 has a value (others start at 0 but it's in range for them: 0..10000)
    assert none.loc[500, "n"] == 3
    ac = agg.curves[agg.curves["variant"] == "pretrain=ac"]
    assert (ac["n"] == 2).all()  # two seeds: mean over what exists, reported above
    assert ac.set_index("step").loc[4000, "std"] == pytest.approx(math.sqrt(2))
    # more seeds than any line has would leave every curve empty: refused, naming the most
    with pytest.raises(AnalysisError, match=r"min_seeds=4: no line has that many runs .* \(the most: 3\)"):
        aggregate(hop, variant="pretrain", min_seeds=4)
    # min_seeds=1 keeps the tail, with n saying how many seeds are behind each point
    loose = aggregate(hop, variant="pretrain", min_seeds=1)
    tail = loose.curves[(loose.curves["variant"] == "pretrain=none") & (loose.curves["step"] == 10000)]
    assert tail["n"].tolist() == [2]


# ------------------------------------------------------------------------------------ tables

def test_efficiency_table(clean):
    from analysis import efficiency_table

    table = efficiency_table(clean)
    f = table.frame.set_index(["panel", "variant"])
    for panel in ("hopper-medium-local", "walker2d-medium-local"):
        base = f.loc[(panel, "pretrain=none")]
        ac = f.loc[(panel, "pretrain=ac")]
        assert base["baseline"] and not ac["baseline"]
        assert base["final_mean"] == pytest.approx(100.0) and base["threshold"] == pytest.approx(90.0)
        assert base["updates_to_threshold"] == 9000 and ac["updates_to_threshold"] == 4000
        assert ac["ratio_to_baseline"] == pytest.approx(4000 / 9000)
        assert base["ratio_to_baseline"] == pytest.approx(1.0)
        assert ac["pretrain_updates"] == 2000
        # ac: 92/40 -> 3680, 3600, 3520: all first at the 4000 evaluation
        # per seed: none-2 reaches 90 at 10000, none+0 at 9000, none+2 at 9000 (8800 -> grid 9000)
        assert base["seed_updates_mean"] == pytest.approx(28000 / 3)
        assert base["seed_updates_std"] == pytest.approx(np.std([10000, 9000, 9000], ddof=1))
        assert ac["seed_updates_mean"] == pytest.approx(4000) and ac["seeds_reached"] == 3
    md = table.markdown()
    assert "| panel" in md and "0.44" in md and "4,000" in md and "9,000" in md
    # a stricter target nobody but the baseline meets at its end
    strict = efficiency_table(clean, fraction=1.0).frame.set_index(["panel", "variant"])
    assert strict.loc[("hopper-medium-local", "pretrain=none"), "updates_to_threshold"] == 10000


def test_efficiency_baseline_choice(clean):
    from analysis import AnalysisError, efficiency_table

    t = efficiency_table(clean, baseline="pretrain=ac").frame.set_index(["panel", "variant"])
    assert t.loc[("hopper-medium-local", "pretrain=ac"), "baseline"]
    assert t.loc[("hopper-medium-local", "pretrain=none"), "threshold"] == pytest.approx(90.0)
    t = efficiency_table(clean, baseline="ac").frame  # a bare value of a variant column
    assert t.loc[t["baseline"], "variant"].unique().tolist() == ["pretrain=ac"]
    with pytest.raises(AnalysisError):
        efficiency_table(clean, baseline="nonsense_column=1")


def test_window_table(clean):
    from analysis import window_table

    table = window_table(clean, 6000, 10000)
    f = table.frame.set_index(["panel", "variant"])
    none = f.loc[("hopper-medium-local", "pretrain=none")]
    assert none["mean"] == pytest.approx(80.0) and none["std"] == pytest.approx(2.0)
    assert none["seeds"] == 3 and none["evals_per_run"] == 5
    ac = f.loc[("walker2d-medium-local", "pretrain=ac")]
    assert ac["mean"] == pytest.approx(100.0) and ac["std"] == pytest.approx(2.0)
    d = table.display
    assert list(d.columns) == ["panel", "pretrain=none", "pretrain=ac"]
    assert d.iloc[0]["pretrain=none"] == "80.0 ± 2.0"
    # default window: the last third of training, [2/3 H, H]
    default = window_table(clean)
    assert (default.frame["window_low"].iloc[0], default.frame["window_high"].iloc[0]) == (6667, 10000)
    assert default.frame.set_index("variant").loc["pretrain=none", "mean"].iloc[0] == pytest.approx(85.0)


def test_window_reports_runs_without_evaluations(store):
    from analysis import load_runs, window_table

    rs = load_runs(store["uri"], experiment="messy", cache=False).select(
        dataset="hopper-medium-local")
    t = window_table(rs, 9200, 10000, variant="pretrain")
    text = "\n".join(t.warnings)
    assert "no evaluation in 9200-10000" in text


def test_finetune_table(store):
    from analysis import finetune_table, load_runs

    rs = load_runs(store["uri"], experiment="ft", cache=False,
                   metrics=["eval/normalized_score_mean", "finetune/env_steps"])
    t = finetune_table(rs, env_steps=200_000).frame.set_index("panel")
    hop = t.loc["hopper-medium-local"]
    # offline: last eval at/before 10k = 50 + offset; online at 200k env steps = update 12k: 70
    assert hop["offline_mean"] == pytest.approx(50) and hop["offline_std"] == pytest.approx(2)
    assert hop["online_mean"] == pytest.approx(70) and hop["delta"] == pytest.approx(20)
    walker = t.loc["walker2d-medium-local"]
    assert walker["offline_mean"] == pytest.approx(25.0)  # the logged finetune/offline_score
    assert np.isnan(walker["online_mean"]) and np.isnan(walker["delta"])  # only 5,000 env steps
    final = finetune_table(rs).frame.set_index("panel")  # no env steps: the final evaluation
    assert final.loc["hopper-medium-local", "online_mean"] == pytest.approx(90)
    assert final.loc["walker2d-medium-local", "delta"] == pytest.approx(35.0)
    warnings = "\n".join(finetune_table(rs, env_steps=200_000).warnings)
    assert "reached only 5,000 of 200,000" in warnings


def test_finetune_table_skips_runs_without_finetuning(clean):
    from analysis import finetune_table

    t = finetune_table(clean)
    assert t.frame.empty and "no fine-tuning phase" in "\n".join(t.warnings)


# ------------------------------------------------------------------------------------ figures

def _legend(ax):
    """The figure's legend (below the panels, outside every axes)."""
    (legend,) = ax.figure.legends
    assert ax.get_legend() is None
    return [t.get_text() for t in legend.get_texts()]


def test_learning_curve_figure(clean, tmp_path):
    from analysis import plot_learning_curves
    from analysis.figures import PRETRAIN_END, XLABEL

    res = plot_learning_curves(clean, out=tmp_path / "fig2.png")
    assert res.path.stat().st_size > 10_000 and res.path.read_bytes()[:4] == b"\x89PNG"
    assert list(res.axes) == ["hopper-medium-local", "walker2d-medium-local"]
    for title, ax in res.axes.items():
        assert ax.get_title() == title
        assert ax.get_xlabel() == XLABEL and ax.get_ylabel() == "normalised score"
        lines = {l.get_label(): l for l in ax.get_lines()}
        assert lines["pretrain=ac"].get_xdata().tolist() == STEPS
        assert lines["pretrain=none"].get_ydata()[-1] == pytest.approx(100)
        marks = [l for l in ax.get_lines() if (l.get_gid() or "").startswith(PRETRAIN_END)]
        assert [m.get_xdata()[0] for m in marks] == [2000]  # only the pre-trained variant
        assert len(ax.collections) == 2  # one shaded interval per variant
    assert _legend(res.axes["hopper-medium-local"]) == ["pretrain=none", "pretrain=ac", PRETRAIN_END]
    assert res.fig._suptitle.get_text() == ("normalised score: mean of 3 seeds, shaded 95% "
                                            "Student-t CI over seeds")
    # one run per line: said so, and nothing shaded
    single = plot_learning_curves(clean.select(seed=0))
    assert single.fig._suptitle.get_text() == ("normalised score: one run per line (no seeds to "
                                               "average, no interval)")
    assert all(len(ax.collections) == 0 for ax in single.axes.values())


def test_algo_by_dataset_grid(store, clean):
    """Two algorithms: rows = algorithms, columns = datasets (Fig. 2's layout)."""
    from analysis import plot_learning_curves

    res = plot_learning_curves(clean, panel=["pretrain", "dataset_name"], variant=[])
    assert len(res.axes) == 4
    ax = res.axes["ac / walker2d-medium-local"]
    assert ax.get_subplotspec().rowspan.start == 1 and ax.get_subplotspec().colspan.start == 1
    assert res.axes["none / hopper-medium-local"].get_subplotspec().rowspan.start == 0
    # one legend, in the first panel, gathering every line: the single variant is the algorithm
    assert _legend(res.axes["none / hopper-medium-local"]) == ["td3_bc", "pre-training ends"]


def test_ablation_figure(store, tmp_path):
    from analysis import default_variant, load_runs, plot_ablation

    rs = load_runs(store["uri"], experiment="ablate", cache=False)
    # no sweep.axes tag here: the differing param is found by itself
    assert default_variant(rs.runs, ["dataset_name"], rs.param_columns) == ["pretrain.lambda"]
    res = plot_ablation(rs, "lambda", out=tmp_path / "lam.png", band="std")
    assert res.path.stat().st_size > 5_000
    ax = res.axes["hopper-medium-local"]
    assert _legend(ax)[:2] == ["λ=0", "λ=0.1"]
    assert "λ" in res.fig._suptitle.get_text()
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert lines["λ=0.1"].get_ydata()[0] == pytest.approx(10.0)
    # band=std: the shaded area spans mean ± 2 at step 0
    verts = ax.collections[0].get_paths()[0].vertices
    assert verts[:, 1].min() == pytest.approx(-2.0) and verts[:, 1].max() > 100


# ------------------------------------------------------------------------------------ CLI

@pytest.mark.slow  # starts a process
def test_cli_help_for_every_command(capsys):
    from analysis.__main__ import main

    for command in ([], ["paper"], ["curves"], ["ablation"], ["efficiency"], ["window"],
                    ["finetune"], ["export"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: python -m analysis" in capsys.readouterr().out
    result = forked.run([sys.executable, "-m", "analysis", "--help"], ROOT, timeout=60)
    assert result.returncode == 0 and "paper" in result.stdout and "efficiency" in result.stdout


def _artifacts(store, command: str) -> set[str]:
    """The files one analysis command logged on the sweep's parent (its newest folder)."""
    client = store["client"]
    folders = sorted(a.path for a in client.list_artifacts(store["parent"], "analysis")
                     if a.is_dir and Path(a.path).name.startswith(f"{command}-"))
    assert folders, f"no analysis/{command}-<time> folder on the parent"
    return {Path(a.path).name for a in client.list_artifacts(store["parent"], folders[-1])}


def test_cli_paper_logs_artifacts_on_parent(store, tmp_path, capsys):
    from analysis.__main__ import main

    out = tmp_path / "results"
    code = main(["paper", "--tracking-uri", store["uri"], "--parent-run-id", store["parent"],
                 "--out", str(out), "--window", "6k:10k", "--no-cache", "--resamples", "300"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "80.0 ± 2.0" in printed and "logged" in printed
    for name in ("curves.png", "efficiency.csv", "efficiency.md", "window.csv", "window.md",
                 "summary.md", "aggregate.md", "aggregate.png", "profiles.csv", "profiles.png",
                 "improvement.md", "improvement.png"):
        assert (out / name).stat().st_size > 0, name
    # the last evaluations of both variants are 100 + (-2, 0, 2) on both datasets
    assert "| pretrain=ac   | 3x2          | 100.0 [" in (out / "aggregate.md").read_text()
    assert "![aggregate](aggregate.png)" in (out / "summary.md").read_text()
    eff = pd.read_csv(out / "efficiency.csv")
    assert sorted(eff["updates_to_threshold"]) == [4000, 4000, 9000, 9000]
    arts = _artifacts(store, "paper")
    assert {"curves.png", "efficiency.md", "window.md", "summary.md", "aggregate.png",
            "profiles.png", "improvement.md"} <= arts
    assert "finetune.md" not in arts


def test_cli_commands_and_errors(store, tmp_path, capsys):
    from analysis.__main__ import main

    base = ["--tracking-uri", store["uri"], "--no-cache", "--no-artifacts"]
    assert main(["ablation", "--experiment", "ablate", "--axis", "lambda", "--out",
                 str(tmp_path), *base]) == 0
    assert (tmp_path / "ablation_lambda.png").stat().st_size > 0
    assert main(["finetune", "--experiment", "ft", "--env-steps", "200000", "--out",
                 str(tmp_path), *base]) == 0
    assert "70.00 ± 2.00" in (tmp_path / "finetune.md").read_text()
    assert main(["export", "--experiment", "ablate", "--out", str(tmp_path), *base]) == 0
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 6 * len(STEPS)
    assert main(["window", "--experiment", "nope", "--out", str(tmp_path), *base]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert main(["curves", "--tracking-uri", f"sqlite:///{tmp_path}/absent.db", "--out",
                 str(tmp_path)]) == 2


def test_results_page_states_whether_the_claim_holds(clean, tmp_path):
    from analysis.results import results_page

    page = results_page(clean, tmp_path, command="python launch.py +experiment=efficiency")
    text = page.path.read_text()
    assert page.path == tmp_path / "results.md" and page.figure.exists()
    assert "![learning curves](results.png)" in text
    assert "python launch.py +experiment=efficiency" in text
    # hand-computed: the baseline's seed-mean curve is 0, 10, ..., 100 at 0..10k; its last 10% of
    # 11 evaluations (2) average 95, the 2 before 75: still rising (+20 > max(2, 4.75)). 90% of
    # 95 = 85.5, reached at 9,000 by the baseline and at 4,000 by min(100, s/40) with pre-training:
    # ratio 0.44, in every bootstrap resample (the seeds' offsets of +-2 move neither step)
    for panel in ("hopper-medium-local", "walker2d-medium-local"):
        verdict = page.verdicts[panel]
        assert "still rising at the end (+20.0" in verdict
        assert "(85.5) at an updates ratio of 0.44 [0.44, 0.44]" in verdict and "**holds**" in verdict
        section = text.split(f"## {panel}")[1].split("\n## ")[0]
        assert "| pretrain=none | 3 | 95.0 | no, still rising (+20.0) | 9,000 |" in section
        assert "| pretrain=ac | 3 | 100.0 | yes | 4,000 | 2,000 | 0.44 [0.44, 0.44] |" in section
        # stability: runs shorter than 200k updates of offline RL take the last half of them
        # (offsets are constant per run): the baseline's 10k from 0 -> after 5k: 60, 70, 80, 90,
        # 100 -> sqrt(1000 / 4) = 15.8; pre-training's 8k from 2k -> after 6k: four 100s -> 0.0
        # (over all evaluations, the climb and pre-training in: 33.2 and 36.1)
        none_row, ac_row = section.strip().splitlines()[-2:]
        assert none_row.endswith("| 15.8 ± 0.0 |") and ac_row.endswith("| 0.0 ± 0.0 |")
    assert "## Final scores: IQM and probability of improvement" in text
    assert "Probability of improvement on hopper-medium-local" in text
    section = text.split("## Pre-training length")[1].split("## Where")[0]
    assert len(re.findall(r"\| 2,000 +\|", section)) == 6 and "no (ran to pretrain.steps)" in section
    # two datasets: each pre-trained run's named first (3 seeds each)
    assert [len(re.findall(rf"^\| {d}-medium-local +\|", section, re.M))
            for d in ("hopper", "walker2d")] == [3, 3]
    assert "- Wall time, hopper-medium-local:" in text and "- Wall time, walker2d-medium-local:" in text


def test_results_page_warns_when_one_dataset_s_runs_trained_on_different_data(clean, tmp_path):
    import copy as copy_module

    from analysis.results import results_page

    rs = copy_module.copy(clean)
    runs = clean.runs.copy()
    hopper = runs["dataset_name"] == "hopper-medium-local"
    runs["dataset_digest"] = "aaaa"
    runs.loc[hopper & (runs["seed"].astype(str) == "2"), "dataset_digest"] = "0000"
    rs.runs = runs
    page = results_page(rs, tmp_path)
    assert page.warnings == ["hopper-medium-local: its runs were trained on different data (digests "
                             "0000, aaaa): their seeds do not all measure one dataset"]
    assert "## Warnings" in page.path.read_text()
    # the page names each dataset's data file(s), with how many runs trained on each
    other = int((hopper & (runs["seed"].astype(str) == "2")).sum())
    assert other == 2 and (f"- Data: hopper-medium-local: digest 0000 ({other} runs), aaaa "
                           f"({int(hopper.sum()) - other} runs)\n") in page.path.read_text()
    runs["dataset_digest"] = "aaaa"
    runs.loc[hopper & (runs["seed"].astype(str) == "0"), "dataset_digest"] = None  # from before the tag
    page = results_page(rs, tmp_path)
    assert any("walker2d" not in w and "2 runs record none" in w for w in page.warnings)
    assert (f"- Data: hopper-medium-local: digest aaaa ({int(hopper.sum()) - 2} runs); 2 runs record "
            f"none\n") in page.path.read_text()
    rs.runs = clean.runs.assign(dataset_digest="aaaa")
    assert results_page(rs, tmp_path).warnings == []


def test_compute_time_leaves_out_a_pause_and_the_convergence_rule():
    from analysis.efficiency import compute_seconds, converged

    # evaluations every 10 s, then a 1,000 s pause (SIGSTOP while tests ran), then 10 s again
    history = pd.DataFrame({"step": [5000, 10000, 15000, 20000, 25000],
                            "timestamp": [10_000, 20_000, 30_000, 1_030_000, 1_040_000]})
    seconds = compute_seconds(history, start_ms=0)
    assert seconds.tolist() == [10.0, 20.0, 30.0, 60.0, 70.0]  # the pause counts as 3 x 10 s
    # last 10% of 20 evaluations = 2; 50, 50 after 49, 49: +1 < 2 points -> converged at 50
    flat = np.r_[np.linspace(0, 49, 18), [50, 50]]
    flat[-4:-2] = 49
    assert converged(flat) == (True, 50.0, 1.0)
    assert converged(np.r_[np.zeros(16), [40, 40, 50, 50]])[0] is False  # +10: still rising


def test_results_page_from_the_exported_file_needs_no_store(clean, tmp_path):
    """--export writes the runs' evaluations; --from-csv builds the same page from them alone."""
    from analysis.__main__ import main

    data = tmp_path / "data" / "sweep.csv.gz"
    uri = clean.tracking_uri
    assert main(["results", "--tracking-uri", uri, "--parent-run-id", clean.parent_run_id,
                 "--export", str(data), "--out", str(tmp_path / "a"), "--no-cache"]) == 0
    first = (tmp_path / "a" / "results.md").read_text()
    assert f"--from-csv {data}" in first
    assert main(["results", "--from-csv", str(data), "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "results.md").read_text() == first
    frame = pd.read_csv(data)
    # the same runs in two files (a sweep continued under another parent): the same page
    seeds_0_1 = frame["seed"].astype(str).isin(["0", "1"])
    part1, part2 = tmp_path / "part1.csv.gz", tmp_path / "part2.csv.gz"
    frame[seeds_0_1].to_csv(part1, index=False, compression="gzip")
    frame[~seeds_0_1].to_csv(part2, index=False, compression="gzip")
    assert main(["results", "--from-csv", str(part1), str(part2), "--out", str(tmp_path / "b")]) == 0
    both = (tmp_path / "b" / "results.md").read_text()
    assert f"--from-csv {part1} {part2} --out" in both and "[part1.csv.gz]" in both
    assert both.split("\n", 3)[3] == first.split("\n", 3)[3]  # all but the sources
    assert main(["results", "--from-csv", str(part1), str(data), "--out", str(tmp_path / "b")]) == 2
    assert set(frame["metric"]) == {"eval/normalized_score_mean"} and frame["run_id"].nunique() == 12
    # every param kept, the same for all runs or not: beside another sweep's file they tell its
    # runs apart (the next test)
    assert "machine" in frame and set(frame["pretrain.lambda"].astype(str)) == {"0.0"}
    # a file of one seed (a sweep's first wave) keeps its seed column, and reads back as one seed
    import copy as copy_module

    from analysis.load import export_csv, from_csv

    first_wave = copy_module.copy(clean)
    # digests that a CSV reader would take for numbers: 123456789 and inf
    digests = ["0123456789", "123e456789", "4ba4329a36", "0123456789"]
    first_wave.runs = clean.runs[clean.runs["seed"].astype(str) == "0"].assign(dataset_digest=digests)
    first_wave.metrics = clean.metrics[clean.metrics["run_id"].isin(first_wave.runs["run_id"])]
    one_seed = export_csv(first_wave, tmp_path / "seed0.csv.gz")
    assert set(pd.read_csv(one_seed)["seed"]) == {0}
    back = from_csv(one_seed)
    assert len(back.runs) == 4 and set(back.runs["seed"].astype(str)) == {"0"} and back.warnings == []
    assert dict(zip(back.runs["run_id"], back.runs["dataset_digest"])) == dict(
        zip(first_wave.runs["run_id"], digests))
    # and the curves of those evaluations, still without the store
    assert main(["curves", "--from-csv", str(data), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "curves.png").stat().st_size > 10_000


def test_cli_lists_runs_newest_first_filtered_by_status_and_tag(clean, tmp_path, capsys):
    from analysis.__main__ import main

    base = ["runs", "--tracking-uri", clean.tracking_uri, "--parent-run-id", clean.parent_run_id]
    assert main([*base, "--filter", "tags.pretrain = 'ac'", "--csv", str(tmp_path / "runs.csv")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == ("| run_id | name | status | algo | pretrain | dataset | seed | score | "
                        "updates | started |")
    listed = pd.read_csv(tmp_path / "runs.csv")
    assert len(listed) == len(table) - 3 == 6  # header, rule, rows, "wrote ..."
    assert set(listed["pretrain"]) == {"ac"} and set(listed["status"]) == {"FINISHED"}
    runs = clean.runs.set_index("run_id")
    for row in listed.itertuples():  # each run's last evaluation, as the curves end
        final = clean.metrics[(clean.metrics["run_id"] == row.run_id)].sort_values("step")["value"]
        assert row.score == pytest.approx(final.iloc[-1])
        assert row.seed == int(runs.loc[row.run_id, "seed"])
    assert list(listed["started"]) == sorted(listed["started"], reverse=True)
    assert main([*base, "--status", "running"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # the header only: every run FINISHED


@pytest.mark.parametrize("page, csvs", [("results", ["efficiency_hopper_4ba4329a36",
                                                     "efficiency_walker2d_4e23cbae53",
                                                     "efficiency_halfcheetah_66147fa38e"]),
                                        ("efficiency_100k", ["efficiency"]),
                                        ("efficiency_hopper_first_data", ["efficiency_hopper"]),
                                        # two sweeps told apart by --variant sweep,pretrain (it
                                        # was accepted and ignored: both 'ac' arms one line)
                                        ("pretrain10k_walker2d", ["efficiency_walker2d_4e23cbae53",
                                                                  "pretrain10k_walker2d_4e23cbae53"])])
def test_committed_results_page_is_regenerated_from_its_committed_data(page, csvs, tmp_path):
    """docs/<page>.md is what `analysis results --from-csv docs/results/<csv>.csv.gz ...` writes
    (one file per dataset's sweep): the numbers on the page can be checked by anyone, without the
    MLflow store."""
    from analysis.__main__ import main

    committed = (ROOT / "docs" / f"{page}.md").read_text()
    quoted = re.search(r"`python -m analysis (results --from-csv (docs/results/\S+\.csv\.gz )+"
                       r"--out docs[^`]*)` writes this page again", committed)
    assert quoted, "the page names the command that writes it again from its data"
    args = shlex.split(quoted.group(1))
    first, out = args.index("--from-csv") + 1, args.index("--out")
    assert args[first:out] == [f"docs/results/{csv}.csv.gz" for csv in csvs]
    (tmp_path / "results").mkdir()  # laid out as in docs/
    for i, csv in enumerate(csvs):
        data = tmp_path / "results" / f"{csv}.csv.gz"
        data.write_bytes((ROOT / "docs" / "results" / f"{csv}.csv.gz").read_bytes())
        args[first + i] = str(data)
    args[out + 1] = str(tmp_path)
    assert main(args) == 0
    assert (tmp_path / f"{page}.md").read_text().replace(str(tmp_path), "docs") == committed


@pytest.mark.parametrize("page", ["iql_hopper", "iql_walker2d"])
def test_committed_comparison_page_is_regenerated_from_its_committed_data(page, tmp_path):
    """docs/iql_*.md is what `analysis compare` writes from the committed files it names."""
    from analysis.__main__ import main

    committed = (ROOT / "docs" / f"{page}.md").read_text()
    quoted = re.search(r"`python -m analysis (compare [^`]*)` writes this page again", committed)
    assert quoted, "the page names the command that writes it again from its data"
    args = shlex.split(quoted.group(1))
    for i, arg in enumerate(args):
        if args[i - 1] == "--csv":  # the committed files, read where they are
            args[i] = str(ROOT / arg)
    args[args.index("--out") + 1] = str(tmp_path)
    assert main([*args, "--command", quoted.group(1)]) == 0
    assert (tmp_path / f"{page}.md").read_text() == committed


def test_compare_gives_each_algorithm_its_seeds_intervals_and_improvement_probability(tmp_path):
    """Two hand-made algorithms: finals 10/20/30 against 40/50/60 -- means, t intervals and
    P(b > a) = 1 by hand."""
    from analysis.compare import compare

    rows = []
    for algo, finals in (("a", (10.0, 20.0, 30.0)), ("b", (40.0, 50.0, 60.0))):
        for seed, final in enumerate(finals):
            for step, value in ((1000, 0.0), (2000, final)):
                rows.append({"run_id": f"{algo}{seed}", "metric": "eval/normalized_score_mean",
                             "step": step, "value": value, "timestamp": 0, "run_name": f"{algo}{seed}",
                             "algo": algo, "seed": seed, "dataset_name": "d", "status": "FINISHED"})
    path = tmp_path / "runs.csv.gz"
    pd.DataFrame(rows).to_csv(path, index=False, compression="gzip")
    page = compare([f"{path}:algo=a", f"{path}:algo=b"], tmp_path, "ab").read_text()
    # mean 20, t(0.975, 2) = 4.303, s = 10: half width 24.8
    assert "| a | 3 (0, 1, 2) | 2,000 | 10.0, 20.0, 30.0 | 20.0 [-4.8, 44.8] |" in page
    assert "| b | 3 (0, 1, 2) | 2,000 | 40.0, 50.0, 60.0 | 50.0 [25.2, 74.8] |" in page
    assert "| b | 50.0 [40.0, 60.0] | 1.00 [1.00, 1.00] |" in page


# ------------------------------------------------------------- Agarwal et al. (2021) statistics

def test_score_matrix_from_runs_last_and_window(clean):
    from analysis import score_statistics as st

    last = st.score_matrix(clean)
    assert last.variants == ["pretrain=none", "pretrain=ac"]
    assert last.tasks == ["hopper-medium-local", "walker2d-medium-local"]
    assert last.task_columns == ["dataset_name"] and last.variant_columns == ["pretrain"]
    for variant in last.variants:  # both end at 100 + seed offsets (-2, 0, 2)
        for task in last.tasks:
            assert sorted(last.scores[variant][task]) == [98.0, 100.0, 102.0]
    # IQM of (98, 98, 100, 100, 102, 102): one trimmed at each end -> 100
    assert st.iqm(*last.of("pretrain=ac")) == pytest.approx(100.0)
    assert "last evaluation" in last.final
    # appendix G: the mean over updates 2k-6k; pre-training reaches 100 at 4k, the baseline 60 at 6k
    window = st.score_matrix(clean, final="window", window=(2000, 6000))
    ac = window.scores["pretrain=ac"]["hopper-medium-local"]
    none = window.scores["pretrain=none"]["hopper-medium-local"]
    assert sorted(ac) == pytest.approx([83.0, 85.0, 87.0])    # (50+75+100+100+100)/5 + offset
    assert sorted(none) == pytest.approx([38.0, 40.0, 42.0])  # (20+30+40+50+60)/5 + offset
    assert "2,000-6,000" in window.final
    table = st.improvement_table(window, st.comparison_pairs(window)[0], n_resamples=200)
    assert table.frame.iloc[0][["probability", "low", "high"]].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(st.AnalysisError, match="'last' or 'window'"):
        st.score_matrix(clean, final="best")


def test_cli_statistics_commands(store, tmp_path, capsys):
    from analysis.__main__ import main

    base = ["--tracking-uri", store["uri"], "--parent-run-id", store["parent"], "--no-cache",
            "--out", str(tmp_path), "--resamples", "300"]
    assert main(["aggregate", *base, "--final", "window", "--window", "2k:6k"]) == 0
    printed = capsys.readouterr().out
    assert "Aggregate normalised score" in printed and "updates 2,000-6,000" in printed
    frame = pd.read_csv(tmp_path / "aggregate.csv").set_index("variant")
    assert frame.loc["pretrain=ac", "iqm"] == pytest.approx(85.0)
    assert frame.loc["pretrain=none", "iqm"] == pytest.approx(40.0)
    assert main(["profiles", *base, "--taus", "11"]) == 0
    assert len(pd.read_csv(tmp_path / "profiles.csv")) == 2 * 11
    assert main(["improvement", *base, "--final", "window", "--window", "2k:6k",
                 "--x", "pretrain=none", "--y", "ac"]) == 0
    improvement = pd.read_csv(tmp_path / "improvement.csv")
    assert improvement[["x", "y", "probability"]].values.tolist() == [
        ["pretrain=none", "pretrain=ac", 0.0]]
    # each analysis keeps its files in its own folder: the later ones overwrote nothing
    assert {"aggregate.md", "aggregate.png"} <= _artifacts(store, "aggregate")
    assert {"profiles.png", "profiles.csv"} <= _artifacts(store, "profiles")
    assert {"improvement.csv", "improvement.md"} <= _artifacts(store, "improvement")
    assert main(["improvement", *base, "--x", "pretrain=soft", "--y", "ac"]) == 2
    assert "matches 0 variants" in capsys.readouterr().err


def test_cli_results_quotes_the_reproducing_command(store, tmp_path, capsys):
    """`--command` is the page's quoted command, not the CLI's subcommand (both were `command`)."""
    from analysis.__main__ import main

    out = tmp_path / "page"
    assert main(["results", "--tracking-uri", store["uri"], "--parent-run-id", store["parent"],
                 "--out", str(out), "--no-cache", "--command",
                 "python launch.py +experiment=paper_check"]) == 0
    text = (out / "results.md").read_text()
    assert "python launch.py +experiment=paper_check" in text
    printed = capsys.readouterr().out  # the verdict per dataset: the baseline climbs to its last step
    assert "**hopper-medium-local**: the baseline is still rising at the end" in printed


def test_no_verdict_from_fewer_than_three_runs_per_variant(clean, tmp_path, capsys):
    """One seed per variant: a bootstrap over one run has no spread, so no interval and no verdict
    (the 3-seed page of the same runs gives both)."""
    from analysis.__main__ import main

    assert main(["results", "--tracking-uri", clean.tracking_uri, "--parent-run-id",
                 clean.parent_run_id, "--filter", "params.seed = '0'", "--out", str(tmp_path),
                 "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert "pretrain=ac: 1 run(s) against the baseline's 1, fewer than the 3 per variant an " \
           "interval needs: the paper's \"< 1/2\" **cannot be told** yet" in printed
    rows = [l for l in (tmp_path / "results.md").read_text().splitlines() if l.startswith("| pretrain=ac | 1 |")]
    assert rows and all("[—, —]" in row for row in rows)


def test_progress_tells_a_silent_job_from_a_running_one(store, capsys):
    """A killed sweep leaves its runs RUNNING in the store: `analysis progress` reports a RUNNING
    job that logged nothing for 2 h as silent (no rate, not in the ETA), and one logging every
    200 s, last 1,000 s ago, still as running (silence is measured against its own pace); a job
    continued after hours dead is measured at its pace, not across the gap."""
    import time

    from mlflow.entities import Metric, Param

    from analysis.__main__ import main

    client, now = store["client"], time.time()
    exp = client.create_experiment("progress")
    parent = client.create_run(exp, run_name="prog", tags={"sweep": "prog", "sweep.role": "parent"})
    client.log_batch(parent.info.run_id, params=[Param("sweep.jobs", "5")])

    def child(name, *, last_s_ago, every_s, status="RUNNING", dead_s=0.0, dead_after=0):
        """Ten log points every ``every_s``, the last ``last_s_ago``; the process dead for ``dead_s``
        after the ``dead_after``-th of them (killed, and continued by the sweep's command)."""
        run = client.create_run(exp, run_name=name, tags={
            "mlflow.parentRunId": parent.info.run_id, "phase": "offline_rl", "run_identity": name})
        rid = run.info.run_id
        client.log_batch(rid, params=[Param("updates", "500000")], metrics=[
            Metric("offline_rl/critic_loss", 1.0,
                   int(1000 * (now - last_s_ago - (10 - i) * every_s - (dead_s if i <= dead_after else 0))), 1000 * i)
            for i in range(1, 11)])
        if status != "RUNNING":
            client.set_terminated(rid, status=status)

    child("alive", last_s_ago=5, every_s=10)  # 9,000 updates in 90 s: 100 updates/s
    child("dead", last_s_ago=2 * 3600, every_s=10)
    child("slow", last_s_ago=1000, every_s=200)  # 9,000 updates in 1,800 s: 5 updates/s
    child("done", last_s_ago=3 * 3600, every_s=10, status="FINISHED")
    # continued 25 s ago after 5 h dead: 9,000 updates in 80 s of work and the gap counted as
    # 30 s (3 intervals): 82 updates/s, not 9,000 in 5 h (0.5/s)
    child("resumed", last_s_ago=5, every_s=10, dead_s=5 * 3600, dead_after=7)
    assert main(["progress", "--tracking-uri", store["uri"], "--experiment", "progress",
                 "--sweep", "prog", "--jobs"]) == 0
    out = capsys.readouterr().out
    line, rows = out.splitlines()[0], {r.split(" | ")[0].strip("| "): r for r in out.splitlines()[3:]}
    assert "1/5 finished, 3 running, 0 waiting, 0 failed; 1 silent (RUNNING in the store, nothing " \
           "logged for 2.0 h or more" in line and "started again continues them" in line
    assert "; 187 updates/s;" in line  # alive + slow + resumed, not the silent one
    # the slow job alone needs 490,000 / 5 s: longer than the updates left over the sweep's rate
    left = 4 * 500_000 - 4 * 10_000  # updates left of the four unfinished jobs
    assert left / (100 + 5 + 9000 / 110) < 490_000 / 5 and f"ETA {490_000 / 5 / 3600:.1f} h" in line
    assert rows["dead"].startswith("| dead | RUNNING, silent 2.0 h | 10,000 | 500,000 |  |")
    assert rows["alive"].startswith("| alive | RUNNING | 10,000 | 500,000 | 100 |")
    assert rows["slow"].startswith("| slow | RUNNING | 10,000 | 500,000 | 5 |")
    assert rows["resumed"].startswith("| resumed | RUNNING | 10,000 | 500,000 | 82 |")


def test_a_job_s_rate_counts_its_evaluations_but_not_its_process_s_death():
    """1,000 updates per 10 s, one interval 20 s longer (an evaluation), a 3 h gap: the rate is
    the work over the time spent, the evaluation included and the gap counted as 3 median
    intervals (9,000 updates in 130 s), not the median interval's 100 updates/s and not 9,000
    over 3 h."""
    from types import SimpleNamespace

    from offline_rl.progress import recent_rate

    seconds = [10, 10, 10, 10, 30, 10, 10, 3 * 3600, 10, 30]  # after each of 10 log points
    points, t = [], 0.0
    for i, dt in enumerate(seconds):
        points.append(SimpleNamespace(step=1000 * i, timestamp=1000 * t))
        t += dt
    # intervals between the 10 points: nine, one of them the gap
    assert recent_rate(points) == pytest.approx(9000 / 130)
    assert recent_rate(points[:1]) is None and recent_rate(points[:2]) == pytest.approx(100)


def test_a_sweep_s_eta_is_its_work_left_over_its_rate_but_not_before_its_slowest_job():
    from offline_rl.progress import JobProgress, SweepProgress

    def job(name, done, rate, total=1000):
        return JobProgress(name, "RUNNING", done, total, rate, None)

    # 2 waiting jobs of 1,000 updates, 1,800 left of the two running: 3,800 at 20 updates/s
    sweep = SweepProgress("s", "p", 4, [job("a", 100, 10.0), job("b", 100, 10.0)])
    assert sweep.eta_seconds() == pytest.approx(3800 / 20)
    # the end of a sweep: nothing waiting, one job nearly done, the other alone for 900 / 10 s
    sweep = SweepProgress("s", "p", 2, [job("a", 990, 10.0), job("b", 100, 10.0)])
    assert sweep.eta_seconds() == pytest.approx(900 / 10)
    assert SweepProgress("s", "p", 2, [job("a", 0, None), job("b", 0, None)]).eta_seconds() is None


def test_progress_plans_every_phase_of_a_run():
    """A run's planned steps are its phases' (the phase_plan tag): two pre-training phases at their
    caps until they end (then what they ran), plus the offline updates. Before the tag, only one
    pre-training cap was counted for soft pre-training's two phases."""
    import json

    from offline_rl.progress import _planned

    plan = json.dumps({"pretrain_actor": 50_000, "pretrain_critic": 50_000, "offline_rl": 500_000})
    assert _planned({}, {}, plan) == 600_000  # not started
    # the actor phase stopped at its plateau after 20k; the critic phase is running
    running = {"phase_start/pretrain_actor": 0, "phase_end/pretrain_actor": 20_000,
               "phase_start/pretrain_critic": 20_000}
    assert _planned({}, running, plan, current="pretrain_critic") == 20_000 + 50_000 + 500_000
    # continued from 500k to 800k: the offline phase's end at 500k is from before; it runs again
    continued = {**running, "phase_end/pretrain_critic": 60_000, "phase_start/offline_rl": 60_000,
                 "phase_end/offline_rl": 560_000}
    plan = json.dumps({"pretrain_actor": 50_000, "pretrain_critic": 50_000, "offline_rl": 800_000})
    assert _planned({}, continued, plan, current="offline_rl") == 20_000 + 40_000 + 800_000
    assert _planned({}, continued, plan) == 20_000 + 40_000 + 500_000  # finished: as it ran


def _export(path, runs):
    """An export file (analysis results --export's columns) of hand-made runs: ``runs`` maps
    (dataset, pretrain, seed) to {step: value}; evaluations 10 s apart from the run's start."""
    rows, t0 = [], 1_800_000_000_000
    for (dataset, pretrain, seed), values in runs.items():
        run_id = f"{dataset[:6]}{pretrain}{seed}"
        for step, value in sorted(values.items()):
            rows.append({"run_id": run_id, "metric": "eval/normalized_score_mean", "step": step,
                         "value": value, "timestamp": t0 + step, "run_name": f"{pretrain} s{seed}",
                         "status": "FINISHED", "start_time": t0, "end_time": t0 + max(values),
                         "parent_run_id": "p", "algo": "td3_bc", "pretrain": pretrain,
                         "dataset": dataset, "network": "default", "finetune": "none",
                         "dataset_name": dataset, "seed": seed,
                         "pretrain_steps": 30_000 if pretrain == "ac" else None})
    pd.DataFrame(rows).to_csv(path, index=False, compression="gzip")
    return path


def test_efficiency_interval_verdicts_and_stability_against_hand_computed_values(tmp_path):
    """Hand-made runs whose bootstrap distribution is known exactly. Evaluations every 10k to 200k.
    'boundary': the baseline's 3 runs jump from 0 to 100 at 20k, 40k and 60k; pre-training's 3
    runs score 100 from 10k. A resample's baseline curve reaches 90 when all its runs have jumped,
    at the largest jump drawn: 60k with probability 19/27, 40k 7/27, 20k 1/27, so the ratio is
    1/6, 1/4 or 1/2 and the 95% interval [1/6, 1/2] touches 0.5: cannot be told. 'slower':
    pre-training's runs jump at 40k, the baseline's all at 60k: 2/3 in every resample, does not
    hold. Past 100k every baseline evaluation alternates 95 / 105: its stability over the last 100k
    (110k..200k, 10 evaluations) is the sample std of five 95s and five 105s, sqrt(250 / 9)."""
    from analysis.load import from_csv
    from analysis.results import results_page

    steps = range(10_000, 200_001, 10_000)

    def jump(at):
        return {s: (0.0 if s < at else 100.0 if s <= 100_000 else (95.0 if s // 10_000 % 2 else 105.0))
                for s in steps}

    runs = {}
    for seed, at in enumerate((20_000, 40_000, 60_000)):
        runs[("boundary", "none", seed)] = jump(at)
        runs[("boundary", "ac", seed)] = {s: 100.0 for s in steps}
        runs[("slower", "none", seed)] = jump(60_000)
        runs[("slower", "ac", seed)] = jump(40_000)
    page = results_page(from_csv(_export(tmp_path / "runs.csv.gz", runs)), tmp_path / "out")
    boundary, slower = page.verdicts["boundary"], page.verdicts["slower"]
    assert "at an updates ratio of 0.17 [0.17, 0.50]" in boundary
    assert "of the updates **cannot be told**" in boundary
    assert "of the compute time (ratio 0.17 [0.17, 0.50]) **cannot be told**" in boundary
    assert "updates ratio of 0.67 [0.67, 0.67]" in slower and "of the updates **does not hold**" in slower
    text = page.path.read_text()
    section = text.split("## boundary")[1].split("\n## ")[0]
    none_row = next(line for line in section.splitlines() if line.startswith("| pretrain=none"))
    # the asymptote: the last 2 of 20 evaluations (95, 105), as the 2 before: converged at 100
    assert none_row.startswith("| pretrain=none | 3 | 100.0 | yes | 60,000 | — | 1 (baseline) | 1.0 min |")
    assert none_row.endswith(f"| {math.sqrt(250 / 9):.1f} ± 0.0 |")  # 5.3, not 5.0 with 100k in
    # pre-training's runs (30k of it) reach the bar at 10k: all of those updates were pre-training
    assert "| pretrain=ac | 3 | 100.0 | yes | 10,000 | all (reached during its 30,000) | 0.17 [0.17, 0.50] |" in section


def test_a_page_of_several_datasets_names_each_run_s_dataset_and_times_each_dataset(tmp_path):
    """Two datasets' sweeps (run one after the other, in the real experiment with data generation
    between them): the pre-training table tells their 'ac s0's apart by a dataset column, and the
    wall time is given per dataset, then the compute time in all. Hand-made times: evaluations
    every 360 s up to 2.0 h ('long') and every 180 s up to 1.0 h ('short'), 6 runs each, no pause."""
    from analysis.load import from_csv
    from analysis.results import results_page

    runs = {}
    for dataset, every in (("long", 360_000), ("short", 180_000)):
        for pretrain in ("none", "ac"):
            for seed in range(3):
                runs[(dataset, pretrain, seed)] = {s: min(100.0, s / every * 10)
                                                   for s in range(every, 20 * every + 1, every)}
    text = results_page(from_csv(_export(tmp_path / "runs.csv.gz", runs)), tmp_path / "out").path.read_text()
    table = text.split("## Pre-training length")[1].split("## Where")[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0][:2] == ["dataset", "run"]
    assert sorted(map(tuple, (r[:3] for r in rows[1:]))) == sorted(
        (d, f"ac s{seed}", "30,000") for d in ("long", "short") for seed in range(3))
    order = [r[0] for r in rows[1:]]
    assert order == sorted(order, key=lambda d: text.index(f"## {d}\n"))  # the sections' order
    where = text.split("## Where and how long")[1].split("\n## ")[0]
    assert "- Wall time:" not in where
    assert ("- Wall time, long: 2.0 h from the first run's start to the last run's end (stops, pauses "
            "and restarts included); 12.0 h of run compute time summed over the 6 runs (pauses capped "
            "away), 120-120 min per run by the clock") in where
    assert "- Wall time, short: 1.0 h" in where and "6.0 h of run compute time summed over the 6 runs" in where
    assert "- Compute time in all: 18.0 h over 12 runs" in where


def test_two_sweeps_files_are_told_apart_by_what_they_set_not_by_where_they_kept_records(tmp_path):
    """A sweep with pre-training to convergence (cap 50k) and another with a fixed 10k, each with
    its own store: their files side by side give three lines, the 'ac' arms apart by
    pretrain.steps (each file's constant), not by the store or checkpoint folders."""
    from analysis.aggregate import group_runs
    from analysis.load import from_csv

    steps = range(10_000, 50_001, 10_000)
    files = []
    for name, pretrains, cap in (("converged", ("none", "ac"), 50_000), ("fixed", ("ac",), 10_000)):
        path = _export(tmp_path / f"{name}.csv.gz", {("walker", p, seed): {s: 50.0 for s in steps}
                                                      for p in pretrains for seed in range(3)})
        frame = pd.read_csv(path).assign(**{
            "run_id": lambda f, name=name: f["run_id"] + name, "pretrain.steps": cap,
            "pretrain.lambda": 0.0, "tracker.store_dir": f"/exp/{name}/mlflow",
            "checkpoint.dir": f"/exp/{name}/mlflow/checkpoints"})
        frame.to_csv(path, index=False, compression="gzip")
        files.append(path)
    grouping = group_runs(from_csv(files))
    assert grouping.variant == ["pretrain", "pretrain.steps"]
    assert sorted(set(grouping.runs["variant"])) == [
        "pretrain=ac, pretrain.steps=10000", "pretrain=ac, pretrain.steps=50000",
        "pretrain=none, pretrain.steps=50000"]
    assert grouping.warnings == []  # no 'ac' seed counted twice


def test_a_baseline_that_never_scores_above_zero_is_no_bar():
    """90% of a non-positive asymptote is above it: no ratio, no interval, cannot be told (the
    ratio was 0 before: 'holds'); and a step where only some runs have a value is not on the curve."""
    from analysis.efficiency import _percentiles, _steps_to, _threshold

    assert _steps_to(np.array([[10, 20, np.nan], [10, 20, 95]]), np.array([1, 2, 3]), 50) == math.inf
    assert np.isnan(_threshold(np.array([[-5.0, -3, -3, -3]] * 3)))
    assert _threshold(np.array([[0.0, 10, 20, 20]] * 3)) == pytest.approx(18.0)
    assert all(np.isnan(_percentiles([0.2] * 50 + [np.nan])))


def test_results_page_says_a_non_positive_baseline_cannot_be_told(tmp_path):
    from analysis.load import from_csv
    from analysis.results import results_page

    steps = range(10_000, 100_001, 10_000)
    runs = {("flat", p, seed): {s: (-5.0 if p == "none" else 10.0) for s in steps}
            for p in ("none", "ac") for seed in range(3)}
    page = results_page(from_csv(_export(tmp_path / "runs.csv.gz", runs)), tmp_path / "out")
    assert page.verdicts["flat"] == ("**flat**: the baseline's asymptote (-5.0) is not positive: 90% of "
                                     "it is no bar, the paper's \"< 1/2\" **cannot be told**.")
    assert "| pretrain=ac | 3 | 10.0 | yes | not reached | 30,000 | — [—, —] |" in page.path.read_text()


def test_a_group_whose_runs_steps_all_differ_gets_one_line_and_a_single_odd_run_its_own(tmp_path):
    """Pre-training of different lengths shifts every run's evaluation steps: one warning per group
    adds them up (hand-counted on the grid, the union 1000, 2000, 2500, 3000, 4000: seed 0 is
    interpolated at 2500, seed 1 at 2000 and 3000, seed 2 at 2500 and has no value at 4000); a
    group with one odd run names it."""
    from analysis import aggregate
    from analysis.load import from_csv

    runs = {("hopper", "ac", 0): {1000: 1.0, 2000: 2.0, 3000: 3.0, 4000: 4.0},
            ("hopper", "ac", 1): {1000: 1.0, 2500: 2.5, 4000: 4.0},
            ("hopper", "ac", 2): {1000: 1.0, 2000: 2.0, 3000: 3.0},
            ("hopper", "none", 0): {1000: 1.0, 2000: 2.0, 3000: 3.0},
            ("hopper", "none", 1): {1000: 1.0, 2000: 2.0, 3000: 3.0},
            ("hopper", "none", 2): {1000: 1.0, 2000: 2.0}}
    agg = aggregate(from_csv(_export(tmp_path / "runs.csv.gz", runs)), variant="pretrain")
    grid_lines = [w for w in agg.warnings if "differ from the group's grid" in w]
    assert grid_lines == [
        "[hopper] pretrain=ac: the steps of 3 of 3 runs (seeds 0, 1, 2) differ from the group's "
        "grid: 4 value(s) (run x step) interpolated inside their ranges; grid steps without a value "
        "outside a run's range: seed 2 (1000-3000: 1)",
        "[hopper] pretrain=none: run none s2 (seed 2) steps differ from the group's grid: no value "
        "at 1 grid step(s) outside its range 1000-2000"]


HEADER = "run_id,run_name,metric,step,value,timestamp\n"


@pytest.mark.parametrize("content, says", [
    (b"garbage", "BadGzipFile"),                                   # not gzip
    ("cut", "EOFError"),                                           # an export cut short
    ("damaged", "cannot read the results file"),                   # bytes changed in its middle
    (b"", "EmptyDataError"),                                       # empty
    ("a,b\n1,2\n", "lacks the column(s) run_id, run_name, metric, step, value, timestamp"),
    (HEADER + "r,n,m,1000,1.5,7\nr,n,m,2000,1.5,7,extra,fields\n", "ParserError"),  # ragged rows
    (HEADER + "r,n,m,1000,1.5,7\nr,n,m,2000,oops,8\n", "column value holds 'oops' (line 3)")])
def test_a_results_file_that_is_not_an_export_is_one_line_and_exit_2(content, says, tmp_path, capsys):
    import gzip

    from analysis.__main__ import main

    path = tmp_path / "runs.csv.gz"
    if content in ("cut", "damaged"):  # a real export, its first 3,000 bytes or a few changed
        whole = _export(tmp_path / "whole.csv.gz", {("hopper", "none", s): {1000 * k: float(k) for
                                                    k in range(1, 200)} for s in range(3)}).read_bytes()
        path.write_bytes(whole[:3000] if content == "cut" else
                         whole[:2000] + bytes(b ^ 0x5A for b in whole[2000:2040]) + whole[2040:])
    else:
        path.write_bytes(gzip.compress(content.encode()) if isinstance(content, str) else content)
    assert main(["results", "--from-csv", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and says in err[0], err
    assert not (tmp_path / "out" / "results.md").exists()


@pytest.mark.parametrize("command", [["progress", "--sweep", "efficiency"],
                                     ["results", "--sweep", "efficiency"], ["runs"]])
def test_a_store_that_is_absent_or_does_not_answer_is_one_line_and_exit_2(command, tmp_path,
                                                                           capsys, monkeypatch):
    """Reading never creates a store (an absent sqlite file stays absent), and a tracking server
    that does not answer is named in one line (MLflow's retries bounded: seconds, not minutes)."""
    import socket

    from analysis.__main__ import main

    absent = tmp_path / "nowhere" / "mlflow.db"
    out = ["--out", str(tmp_path / "out")] if command[0] == "results" else []
    assert main([*command, *out, "--tracking-uri", f"sqlite:///{absent}"]) == 2
    assert f"no MLflow store at {absent}" in capsys.readouterr().err
    assert not absent.parent.exists()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from offline_rl.tracker import HTTP_LIMITS

    for key in HTTP_LIMITS:  # as in a fresh shell; undone after the test, whatever sets them
        monkeypatch.delenv(key, raising=False)
    assert main([*command, *out, "--tracking-uri", f"http://127.0.0.1:{port}"]) == 2
    assert {key: os.environ.get(key) for key in HTTP_LIMITS} == HTTP_LIMITS  # retries bounded
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: the MLflow store http://127.0.0.1:{port} does not answer (ConnectionError: "
                   f"connection refused); start its server, or pass --tracking-uri (or set "
                   f"MLFLOW_TRACKING_URI) to a store that answers"], err


def test_an_out_folder_that_cannot_be_made_is_one_line_and_exit_2(tmp_path, capsys):
    """A path of the user's that fails (here --out under a file; a full disk the same way) is named
    in one line, not reported as a store that does not answer."""
    from analysis.__main__ import main

    data = _export(tmp_path / "runs.csv.gz", {("hopper", p, s): {1000: 1.0, 2000: 2.0}
                                              for p in ("none", "ac") for s in range(3)})
    (tmp_path / "a_file").write_text("")
    assert main(["results", "--from-csv", str(data), "--out", str(tmp_path / "a_file" / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'a_file' / 'out'}: Not a directory"]
