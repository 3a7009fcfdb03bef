"""The aggregate statistics of Agarwal et al. (2021) on hand-made score matrices: estimators
against hand-computed values, the bootstrap's stratification, the probability of improvement at
its known extremes, performance profiles, and the figures' matplotlib objects. The same
statistics through MLflow runs and the CLI are in test_analysis.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import score_statistics as st

# 4 runs x 3 tasks (columns); every value distinct so the trimmed set is unambiguous
MATRIX = np.array([[10.0, 40.0, 71.0],
                   [12.0, 45.0, 80.0],
                   [20.0, 52.0, 95.0],
                   [31.0, 60.0, 130.0]])
TASKS = [MATRIX[:, j] for j in range(3)]


def matrix(scores: dict[str, list[np.ndarray]], tasks=("hopper", "walker2d", "halfcheetah")
           ) -> st.ScoreMatrix:
    by_variant = {v: dict(zip(tasks, runs)) for v, runs in scores.items()}
    rows = [{"variant": v, "task": t, "run_name": f"{v}-{t}-{i}", "seed": i, "score": x}
            for v, by_task in by_variant.items() for t, runs in by_task.items()
            for i, x in enumerate(runs)]
    variant_frame = pd.DataFrame({"variant": list(scores),
                                  "pretrain": [v.split("=", 1)[1] for v in scores]})
    return st.ScoreMatrix(by_variant, pd.DataFrame(rows), "hand-made", ["dataset_name"],
                          ["pretrain"], variant_frame)


def test_point_estimates_equal_hand_computed_values():
    # sorted 12 scores: 10 12 20 31 40 45 52 60 71 80 95 130; IQM drops 3 at each end
    assert st.iqm(*TASKS) == pytest.approx((31 + 40 + 45 + 52 + 60 + 71) / 6)
    task_means = [(10 + 12 + 20 + 31) / 4, (40 + 45 + 52 + 60) / 4, (71 + 80 + 95 + 130) / 4]
    assert st.median(*TASKS) == pytest.approx(49.25)
    assert st.mean(*TASKS) == pytest.approx(np.mean(task_means))
    # gap to 100: 130 counts as 100; the rest as they are
    capped = [10, 12, 20, 31, 40, 45, 52, 60, 71, 80, 95, 100]
    assert st.optimality_gap(*TASKS) == pytest.approx(100 - sum(capped) / 12)


def test_optimality_gap_hand_computed_with_other_target():
    capped = [10, 12, 20, 31, 40, 45] + [50] * 6
    assert st.optimality_gap(*TASKS, target=50.0) == pytest.approx(50 - sum(capped) / 12)


def test_aggregate_table_matches_and_intervals_bracket_the_point():
    table = st.aggregate_table(matrix({"pretrain=ac": TASKS}), n_resamples=2000)
    row = table.frame.iloc[0]
    assert row["iqm"] == pytest.approx(299 / 6)
    assert row["median"] == pytest.approx(49.25)
    assert (row["tasks"], row["runs"]) == (3, 12)
    for key in ("iqm", "median", "mean", "optimality_gap"):
        assert row[f"{key}_low"] <= row[key] <= row[f"{key}_high"], key
        assert row[f"{key}_high"] > row[f"{key}_low"], key
    assert list(table.display.columns) == ["variant", "runs x tasks", *st.ESTIMATORS]
    assert table.display.iloc[0]["runs x tasks"] == "4x3"
    assert table.display.iloc[0]["IQM"].startswith("49.8 [")
    # seeded: the same numbers twice
    again = st.aggregate_table(matrix({"pretrain=ac": TASKS}), n_resamples=2000)
    pd.testing.assert_frame_equal(table.frame, again.frame)


def test_bootstrap_is_stratified_over_tasks():
    """Runs are resampled within each task: with every run of task A at 0 and of task B at 100,
    every resample's mean is 50 (a bootstrap pooling runs across tasks would vary)."""
    tasks = [np.zeros(5), np.full(5, 100.0)]
    point, low, high = st.stratified_bootstrap(tasks, st.mean, n_resamples=2000)
    assert (point, low, high) == (50.0, 50.0, 50.0)
    # one varying task: the interval is that task's percentile interval, halved and shifted
    tasks = [np.array([0.0, 10.0, 20.0, 30.0]), np.full(3, 100.0)]
    point, low, high = st.stratified_bootstrap(tasks, st.mean, n_resamples=4000)
    assert point == pytest.approx(57.5)
    assert 50.0 <= low < point < high <= 65.0


def test_single_run_tasks():
    point, low, high = st.stratified_bootstrap([np.array([1.0]), np.array([3.0])], st.mean,
                                               n_resamples=100)
    assert point == 2.0 and np.isnan(low) and np.isnan(high)
    point, low, high = st.stratified_bootstrap([np.array([1.0]), np.array([2.0, 4.0])], st.mean,
                                               n_resamples=500)
    assert point == pytest.approx(2.0) and low == pytest.approx(1.5) and high == pytest.approx(2.5)


def test_probability_of_improvement_extremes_and_a_hand_computed_case():
    worse = [t - 1000 for t in TASKS]   # every run below every run of TASKS
    m = matrix({"pretrain=ac": TASKS, "pretrain=none": worse})
    pairs, how = st.comparison_pairs(m)
    assert pairs == [("pretrain=ac", "pretrain=none")] and "pretrain=none" in how
    table = st.improvement_table(m, pairs, n_resamples=1000)
    row = table.frame.iloc[0]
    assert (row["probability"], row["low"], row["high"]) == (1.0, 1.0, 1.0)
    reverse = st.improvement_table(m, [("pretrain=none", "pretrain=ac")], n_resamples=1000)
    assert reverse.frame.iloc[0]["probability"] == 0.0
    same = st.improvement_table(matrix({"pretrain=ac": TASKS, "pretrain=none": TASKS}),
                                [("pretrain=ac", "pretrain=none")], n_resamples=1000)
    assert same.frame.iloc[0]["probability"] == pytest.approx(0.5)
    # one task, X = (1, 3), Y = (2, 3): pairs 1>2 no, 1>3 no, 3>2 yes, 3=3 half -> 1.5 / 4
    x, y = [np.array([1.0, 3.0])], [np.array([2.0, 3.0])]
    assert st.improvement_probability(x, y) == pytest.approx(0.375)


def test_comparison_pairs_choices_and_errors():
    m = matrix({"pretrain=ac": TASKS, "pretrain=none": TASKS, "pretrain=actor": TASKS})
    assert st.comparison_pairs(m, "ac", "actor")[0] == [("pretrain=ac", "pretrain=actor")]
    assert st.comparison_pairs(m, "pretrain=actor", "pretrain=none")[0] == [
        ("pretrain=actor", "pretrain=none")]
    assert st.comparison_pairs(m, baseline="pretrain=ac")[0] == [
        ("pretrain=none", "pretrain=ac"), ("pretrain=actor", "pretrain=ac")]
    with pytest.raises(st.AnalysisError, match="give both --x and --y"):
        st.comparison_pairs(m, x="ac")
    with pytest.raises(st.AnalysisError, match="matches 0 variants"):
        st.comparison_pairs(m, "pretrain=soft", "pretrain=none")


def test_performance_profile_values_and_band():
    m = matrix({"pretrain=ac": TASKS})
    taus = np.array([0.0, 35.0, 65.0, 100.0, 200.0])
    table = st.profiles_table(m, taus, n_resamples=1000)
    f = table.frame
    # above 35: task 1 none, task 2 all four, task 3 all four -> (0 + 1 + 1) / 3
    expected = [1.0, 2 / 3, 1 / 3, 0.25 / 3, 0.0]
    assert f["fraction"].tolist() == pytest.approx(expected)
    assert (f["low"] <= f["fraction"] + 1e-12).all() and (f["fraction"] <= f["high"] + 1e-12).all()
    assert np.all(np.diff(f["fraction"]) <= 0)  # a survival function never rises
    assert st.default_taus(m)[0] == 0.0 and st.default_taus(m)[-1] == 130.0


def test_figures_have_the_expected_axes_and_legend(tmp_path):
    worse = [t - 30 for t in TASKS]
    m = matrix({"pretrain=ac": TASKS, "pretrain=none": worse})
    agg = st.plot_aggregate(st.aggregate_table(m, n_resamples=500), out=tmp_path / "agg.png")
    assert list(agg.axes) == list(st.ESTIMATORS)
    for name, ax in agg.axes.items():
        assert ax.get_title() == name
        assert len(ax.patches) == 2  # one interval bar per variant
    assert [t.get_text() for t in agg.axes["IQM"].get_yticklabels()] == ["pretrain=ac",
                                                                         "pretrain=none"]
    assert agg.path.read_bytes()[:4] == b"\x89PNG"

    prof = st.plot_profiles(st.profiles_table(m, n_resamples=200), out=tmp_path / "prof.png")
    ax = prof.axes["profiles"]
    assert ax.get_xlabel() == st.TAU_LABEL and ax.get_ylabel() == st.PROFILE_LABEL
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pretrain=ac", "pretrain=none"]
    assert len(ax.collections) == 2  # one band per variant
    ac = {l.get_label(): l for l in ax.get_lines()}["pretrain=ac"]
    assert ac.get_ydata()[0] == 1.0 and ac.get_ydata()[-1] == 0.0

    pairs, _ = st.comparison_pairs(m)
    imp = st.plot_improvement(st.improvement_table(m, pairs, n_resamples=200),
                              out=tmp_path / "imp.png")
    ax = imp.axes["improvement"]
    assert ax.get_xlabel() == st.IMPROVEMENT_LABEL and ax.get_xlim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["pretrain=ac  vs  pretrain=none"]
    assert any(l.get_xdata()[0] == 0.5 for l in ax.get_lines())  # the no-difference line


def test_runs_by_tasks_says_how_many_runs_each_task_has():
    """A variant with 5 runs on one task and 1 on another is not '3x2' (6 runs / 2 tasks)."""
    equal = st.aggregate_table(matrix({"pretrain=ac": TASKS}), n_resamples=100)
    assert equal.display.iloc[0]["runs x tasks"] == "4x3"
    unequal = st.aggregate_table(matrix({"pretrain=ac": [np.arange(5.0), np.array([7.0])]}),
                                 n_resamples=100)
    assert unequal.display.iloc[0]["runs x tasks"] == "5 + 1 runs"
