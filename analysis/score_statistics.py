"""Aggregate statistics of Agarwal et al. (2021), "Deep RL at the Edge of the Statistical
Precipice": interquartile mean (IQM), median, mean and optimality gap with stratified bootstrap
confidence intervals, performance profiles with bands, and the probability of improvement.

Built on scipy rather than rliable (rliable 1.2.0 needs arch < 8, which does not import with
pandas 3; see docs/analysis.md):

* the stratified bootstrap is ``scipy.stats.bootstrap`` with one sample per task: it resamples
  each sample independently, i.e. runs are resampled within each task (percentile intervals, as
  rliable's default);
* IQM is ``scipy.stats.trim_mean(scores, 0.25)`` over all runs x tasks;
* P(X > Y) on a task is the Mann-Whitney U statistic of X's runs against Y's divided by
  n_X n_Y (``scipy.stats.mannwhitneyu``), averaged over tasks.

Scores are the runs' normalised scores (0 = random, 100 = expert), one "final score" per run:
its last evaluation (``final="last"``) or its mean over an update window (``final="window"``,
the paper's appendix G: 200k-300k updates). A :class:`ScoreMatrix` holds them per variant and
task; tasks may have different numbers of runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from analysis.aggregate import final_scores, group_runs, window_scores
from analysis.load import SCORE, AnalysisError, RunSet
from analysis.tables import Table, default_window, match_baseline, norm_value

ESTIMATORS = ("IQM", "Median", "Mean", "Optimality gap")
OPTIMALITY_TARGET = 100.0   # the gap is measured to the expert's normalised score (rliable: γ = 1)
AGGREGATE_RESAMPLES = 50_000   # rliable's get_interval_estimates default
PROFILE_RESAMPLES = 2_000      # rliable's create_performance_profile default
IMPROVEMENT_RESAMPLES = 2_000  # rliable's README for probability_of_improvement
TAU_LABEL = "normalised score τ"
PROFILE_LABEL = "fraction of runs with score > τ"
IMPROVEMENT_LABEL = "P(X > Y)"


# ------------------------------------------------------------------------------- estimators
# Each takes one array of runs per task (a "stratified" sample; arrays may differ in length)
# and ``axis``: the runs axis, so that scipy's bootstrap can pass whole batches of resamples.

def iqm(*tasks: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of all run x task scores."""
    return stats.trim_mean(np.concatenate(tasks, axis=axis), 0.25, axis=axis)


def median(*tasks: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median over tasks of each task's mean score (rliable's aggregate_median)."""
    return np.median(np.stack([t.mean(axis=axis) for t in tasks], axis=-1), axis=-1)


def mean(*tasks: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over tasks of each task's mean score."""
    return np.mean(np.stack([t.mean(axis=axis) for t in tasks], axis=-1), axis=-1)


def optimality_gap(*tasks: np.ndarray, axis: int = -1, target: float = OPTIMALITY_TARGET) -> np.ndarray:
    """How far the scores fall short of ``target`` (scores above it count as ``target``): target
    minus the mean of min(score, target) over all runs x tasks. Lower is better."""
    scores = np.concatenate(tasks, axis=axis)
    return target - np.mean(np.minimum(scores, target), axis=axis)


def estimator(name: str, target: float = OPTIMALITY_TARGET) -> Callable[..., np.ndarray]:
    if name == "Optimality gap":
        return lambda *tasks, axis=-1: optimality_gap(*tasks, axis=axis, target=target)
    return {"IQM": iqm, "Median": median, "Mean": mean}[name]


def score_fractions(*tasks: np.ndarray, taus: np.ndarray, axis: int = -1) -> np.ndarray:
    """Run-score distribution (performance profile): for each τ, the fraction of runs scoring
    above τ, averaged over tasks (with equal runs per task: the fraction of all runs)."""
    per_task = [np.stack([np.mean(t > tau, axis=axis) for tau in taus]) for t in tasks]
    return np.mean(per_task, axis=0)


def improvement_probability(x_tasks: Sequence[np.ndarray], y_tasks: Sequence[np.ndarray],
                            axis: int = -1) -> np.ndarray:
    """P(X > Y): per task, the Mann-Whitney U statistic of X's runs against Y's over n_X n_Y (the
    probability that a run of X scores above a run of Y, ties counting half); mean over tasks."""
    per_task = []
    for x, y in zip(x_tasks, y_tasks):
        u = stats.mannwhitneyu(x, y, alternative="greater", axis=axis, method="asymptotic",
                               use_continuity=False).statistic
        per_task.append(u / (x.shape[axis] * y.shape[axis]))
    return np.mean(per_task, axis=0)


# ------------------------------------------------------------------------- stratified bootstrap

def stratified_bootstrap(tasks: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], *,
                         n_resamples: int, level: float = 0.95, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point estimate, interval low, interval high) of ``statistic(*tasks)``, the interval from
    ``scipy.stats.bootstrap`` resampling runs within each task independently (percentile method).

    A task with a single run has one possible resample (itself): it enters the statistic
    unchanged. When no task has two runs there is nothing to resample: the interval is NaN."""
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    point = np.asarray(statistic(*tasks, axis=-1), dtype=float)
    varying = [i for i, t in enumerate(tasks) if len(t) >= 2]
    if not varying:
        nan = np.full_like(point, np.nan)
        return point, nan, nan

    def resampled(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        batch = samples[0].shape[:-1]
        full = [np.broadcast_to(t, (*batch, len(t))) for t in tasks]
        for i, sample in zip(varying, samples):
            full[i] = sample
        return statistic(*full, axis=-1)

    result = stats.bootstrap([tasks[i] for i in varying], resampled, n_resamples=n_resamples,
                             vectorized=True, axis=-1, confidence_level=level,
                             method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return point, np.asarray(low, dtype=float), np.asarray(high, dtype=float)


# ------------------------------------------------------------------------------ score matrices

@dataclass
class ScoreMatrix:
    """Final scores per variant and task: ``scores[variant][task]`` = one value per run (seed).
    ``runs``: one row per run used (variant, task, run, seed, score); ``final``: how each run's
    score was taken; ``warnings``: runs left out and unequal task coverage."""

    scores: dict[str, dict[str, np.ndarray]]
    runs: pd.DataFrame
    final: str
    task_columns: list[str]
    variant_columns: list[str]
    variant_frame: pd.DataFrame   # one row per variant: its label and its variant columns' values
    warnings: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        return list(self.scores)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(t for by_task in self.scores.values() for t in by_task))

    def of(self, variant: str) -> list[np.ndarray]:
        return [self.scores[variant][t] for t in self.tasks if t in self.scores[variant]]


def _final_label(final: str, window: tuple[int, int] | None, metric: str) -> str:
    if final == "last":
        return f"each run's last evaluation of {metric}"
    low, high = window
    return f"each run's mean of {metric} over updates {low:,}-{high:,} (appendix G)"


def score_matrix(rs: RunSet, metric: str = SCORE, variant=None, task=None, *,
                 final: str = "last", window: tuple[int, int] | None = None) -> ScoreMatrix:
    """One final score per run, arranged variant -> task -> runs. Tasks default to the dataset
    (the panel of the curves without the algorithm, which becomes part of the variant); variants
    to the config choices that differ. ``final``: "last" (the last evaluation) or "window" (the
    mean over ``window`` = (low, high) updates, default the last third of training)."""
    if final not in ("last", "window"):
        raise AnalysisError(f"final score must be 'last' or 'window', not {final!r}")
    if task is None:
        task = ["dataset_name"] if "dataset_name" in rs.runs else []
    grouping = group_runs(rs, variant, task)
    warnings = list(grouping.warnings)
    if final == "last":
        per_run = final_scores(rs, metric, last=1)
    else:
        if window is None or None in window:
            low, high = default_window(rs, metric)
            window = (window[0] if window and window[0] is not None else low,
                      window[1] if window and window[1] is not None else high)
        if window[0] > window[1]:
            raise AnalysisError(f"window {window[0]}-{window[1]}: low is above high")
        per_run = window_scores(rs, *window, metric)["window_mean"]
    runs = grouping.runs.assign(score=grouping.runs["run_id"].map(per_run))
    lacking = runs[runs["score"].isna()]
    if len(lacking):
        where = "" if final == "last" else f" in updates {window[0]:,}-{window[1]:,}"
        warnings.append(f"no {metric}{where} in run(s) {lacking['run_name'].tolist()}; left out")
    runs = runs[runs["score"].notna()].rename(columns={"panel": "task"})
    if runs.empty:
        raise AnalysisError(f"no run has a final score ({_final_label(final, window, metric)})")
    scores: dict[str, dict[str, np.ndarray]] = {}
    for (variant_label, task_label), group in runs.groupby(["variant", "task"], sort=False):
        scores.setdefault(variant_label, {})[task_label] = group["score"].to_numpy(dtype=float)
    all_tasks = list(dict.fromkeys(runs["task"]))
    for variant_label, by_task in scores.items():
        missing = [t for t in all_tasks if t not in by_task]
        if missing:
            warnings.append(f"{variant_label}: no runs on task(s) {missing}; its estimates cover "
                            f"{len(by_task)} of {len(all_tasks)} tasks")
    columns = ["variant", "task", "run_name", "seed", "score"]
    variant_frame = runs.drop_duplicates("variant")[["variant", *grouping.variant]]
    return ScoreMatrix(scores, runs[columns].reset_index(drop=True),
                       _final_label(final, window, metric), list(grouping.panel),
                       list(grouping.variant), variant_frame.reset_index(drop=True),
                       list(dict.fromkeys(warnings)))


def _cell(value: float, low: float, high: float, digits: int = 1) -> str:
    if np.isnan(value):
        return "—"
    if np.isnan(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _notes(m: ScoreMatrix, level: float, n_resamples: int) -> list[str]:
    return [f"Final score: {m.final}. Tasks: {', '.join(m.tasks)} "
            f"({' / '.join(m.task_columns) or 'all runs'}).",
            f"{level:.0%} stratified bootstrap intervals (runs resampled within each task, "
            f"{n_resamples:,} resamples, percentile), Agarwal et al. (2021)."]


# ------------------------------------------------------------------------------- aggregate

def _runs_by_tasks(runs_per_task: list[int]) -> str:
    """'5x3' when every task has 5 runs; '5 + 5 + 1 runs' (in the tasks' order) when not."""
    if len(set(runs_per_task)) <= 1:
        return f"{runs_per_task[0] if runs_per_task else 0}x{len(runs_per_task)}"
    return f"{' + '.join(str(n) for n in runs_per_task)} runs"


def aggregate_table(m: ScoreMatrix, *, level: float = 0.95, n_resamples: int = AGGREGATE_RESAMPLES,
                    target: float = OPTIMALITY_TARGET, seed: int = 0) -> Table:
    """IQM, median, mean and optimality gap per variant over its runs x tasks, with stratified
    bootstrap intervals (the four from the same resamples)."""
    rows = []
    for variant in m.variants:
        tasks = m.of(variant)
        row = {"variant": variant, "tasks": len(tasks), "runs": int(sum(len(t) for t in tasks))}
        functions = [estimator(name, target) for name in ESTIMATORS]
        all_four = lambda *s, axis=-1: np.stack([f(*s, axis=axis) for f in functions])  # noqa: E731
        point, low, high = stratified_bootstrap(tasks, all_four, n_resamples=n_resamples,
                                                level=level, seed=seed)
        for i, name in enumerate(ESTIMATORS):
            key = name.lower().replace(" ", "_")
            row.update({key: float(point[i]), f"{key}_low": float(low[i]),
                        f"{key}_high": float(high[i])})
        rows.append(row)
    frame = pd.DataFrame(rows)
    display = pd.DataFrame({"variant": frame["variant"],
                            "runs x tasks": [_runs_by_tasks([len(t) for t in m.of(v)])
                                             for v in frame["variant"]]})
    for name in ESTIMATORS:
        key = name.lower().replace(" ", "_")
        display[name] = [_cell(v, lo, hi) for v, lo, hi in
                         zip(frame[key], frame[f"{key}_low"], frame[f"{key}_high"])]
    warnings = list(m.warnings)
    if any(len(t) < 2 for v in m.variants for t in m.of(v)):
        warnings.append("some tasks have a single run: their score enters every resample as it "
                        "is (no interval when no task has two runs)")
    notes = _notes(m, level, n_resamples) + [
        f"IQM: mean of the middle 50% of all run x task scores (scipy.stats.trim_mean, 0.25); "
        f"median and mean: over tasks of the per-task mean; optimality gap: {target:g} minus the "
        f"mean of min(score, {target:g}) (lower is better)."]
    return Table("Aggregate normalised score (IQM, median, mean, optimality gap)", frame, display,
                 notes, warnings)


@dataclass
class StatsFigure:
    fig: Figure
    axes: dict[str, object]
    table: Table | None = None
    path: Path | None = None


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | Path | None) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def plot_aggregate(table: Table, *, level: float = 0.95, title: str | None = None,
                   out: str | Path | None = None) -> StatsFigure:
    """rliable's interval-estimate plot: one panel per estimator, one row per variant, a bar for
    the interval and a tick at the point estimate."""
    frame = table.frame
    variants = frame["variant"].tolist()
    fig = _figure(3.0 * len(ESTIMATORS) + 1.5, 0.55 * len(variants) + 1.6)
    grid = fig.subplots(1, len(ESTIMATORS), sharey=True, squeeze=False)[0]
    axes = {}
    y = np.arange(len(variants))[::-1]
    for ax, name in zip(grid, ESTIMATORS):
        key = name.lower().replace(" ", "_")
        for i, variant in enumerate(variants):
            row = frame.iloc[i]
            low, high = row[f"{key}_low"], row[f"{key}_high"]
            if np.isfinite(low):
                ax.barh(y[i], high - low, left=low, height=0.6, color=f"C{i % 10}", alpha=0.75,
                        label=variant)
            ax.vlines(row[key], y[i] - 0.3, y[i] + 0.3, color="k", lw=1.5)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("normalised score" if name != "Optimality gap"
                      else "normalised score below 100")
        ax.grid(axis="x", alpha=0.3)
        axes[name] = ax
    grid[0].set_yticks(y, variants)
    what = f"point estimate (tick) and {level:.0%} stratified bootstrap CI (bar)"
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=9)
    path = _save(fig, out)
    return StatsFigure(fig, axes, table, path)


# ------------------------------------------------------------------------------- profiles

def default_taus(m: ScoreMatrix, points: int = 101) -> np.ndarray:
    values = np.concatenate([t for v in m.variants for t in m.of(v)])
    low, high = min(0.0, float(values.min())), max(100.0, float(values.max()))
    return np.linspace(low, high, points)


def profiles_table(m: ScoreMatrix, taus: np.ndarray | None = None, *, level: float = 0.95,
                   n_resamples: int = PROFILE_RESAMPLES, seed: int = 0) -> Table:
    """Performance profiles (run-score distributions): per variant and τ the fraction of runs
    scoring above τ (averaged over tasks), with a stratified bootstrap band."""
    taus = default_taus(m) if taus is None else np.asarray(taus, dtype=float)
    rows = []
    for variant in m.variants:
        statistic = lambda *tasks, axis=-1: score_fractions(*tasks, taus=taus, axis=axis)  # noqa: E731
        point, low, high = stratified_bootstrap(m.of(variant), statistic,
                                                n_resamples=n_resamples, level=level, seed=seed)
        rows += [{"variant": variant, "tau": float(t), "fraction": float(p), "low": float(lo),
                  "high": float(hi)} for t, p, lo, hi in zip(taus, point, low, high)]
    frame = pd.DataFrame(rows)
    # the Markdown shows a few τ: quartiles of the range
    shown = taus[np.unique(np.linspace(0, len(taus) - 1, 5).round().astype(int))]
    pick = frame[frame["tau"].isin(shown)]
    display = pick.assign(cell=[_cell(p, lo, hi, 2) for p, lo, hi in
                                zip(pick["fraction"], pick["low"], pick["high"])]).pivot(
        index="variant", columns="tau", values="cell").reindex(m.variants)
    display.columns = [f"τ = {t:g}" for t in display.columns]
    display = display.reset_index()
    notes = _notes(m, level, n_resamples) + [
        f"Fraction of runs with a final score above τ, averaged over tasks; {len(taus)} values of "
        f"τ from {taus[0]:g} to {taus[-1]:g} in the CSV and the figure."]
    return Table("Performance profiles: fraction of runs above τ", frame, display, notes,
                 list(m.warnings))


def plot_profiles(table: Table, *, level: float = 0.95, title: str | None = None,
                  out: str | Path | None = None) -> StatsFigure:
    """One line per variant with its shaded band (Agarwal et al., Fig. 5)."""
    frame = table.frame
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    for i, (variant, rows) in enumerate(frame.groupby("variant", sort=False)):
        ax.plot(rows["tau"], rows["fraction"], color=f"C{i % 10}", lw=1.8, label=variant)
        ok = np.isfinite(rows["low"].to_numpy())
        if ok.any():
            ax.fill_between(rows["tau"], rows["low"], rows["high"], where=ok, color=f"C{i % 10}",
                            alpha=0.2, lw=0)
    ax.set_xlabel(TAU_LABEL)
    ax.set_ylabel(PROFILE_LABEL)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    what = f"performance profiles, shaded {level:.0%} stratified bootstrap CI"
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=9)
    path = _save(fig, out)
    return StatsFigure(fig, {"profiles": ax}, table, path)


# ----------------------------------------------------------------------------- improvement

def comparison_pairs(m: ScoreMatrix, x: str | None = None, y: str | None = None,
                     baseline: str | None = None) -> tuple[list[tuple[str, str]], str]:
    """Which (X, Y) pairs to compare: ``x`` against ``y`` when given (each a variant label, a
    value of a variant column, or ``column=value`` matching one variant), else every variant
    against the baseline (as in the efficiency table: ``pretrain=none`` when present, else the
    first variant)."""
    def find(spec: str | None, what: str) -> tuple[str, str]:
        constraints, how = match_baseline(m.variant_frame, m.variant_columns, spec)
        frame = m.variant_frame
        mask = pd.Series(True, index=frame.index)
        for column, value in constraints.items():
            mask &= frame[column].astype(str).map(norm_value) == norm_value(value)
        hits = frame.loc[mask, "variant"].tolist()
        if len(hits) != 1:
            raise AnalysisError(f"{what} {how!r} matches {len(hits)} variants {hits}; variants: "
                                f"{m.variants}")
        return hits[0], how

    if x is not None or y is not None:
        if x is None or y is None:
            raise AnalysisError("give both --x and --y, or neither (every variant against the "
                                "baseline)")
        return [(find(x, "x")[0], find(y, "y")[0])], f"{x} against {y}"
    if len(m.variants) < 2:
        raise AnalysisError(f"one variant only ({m.variants}): nothing to compare")
    base, how = find(baseline, "baseline")
    return [(v, base) for v in m.variants if v != base], f"every variant against the baseline, {how}"


def improvement_table(m: ScoreMatrix, pairs: Sequence[tuple[str, str]], *, level: float = 0.95,
                      n_resamples: int = IMPROVEMENT_RESAMPLES, seed: int = 0,
                      how: str = "") -> Table:
    """P(X > Y) for each pair over the tasks both have, with a stratified bootstrap interval
    (X's and Y's runs resampled independently within each task)."""
    rows, warnings = [], list(m.warnings)
    for x, y in pairs:
        common = [t for t in m.tasks if t in m.scores[x] and t in m.scores[y]]
        if not common:
            warnings.append(f"{x} and {y} share no task; no comparison")
            continue
        xs = [m.scores[x][t] for t in common]
        ys = [m.scores[y][t] for t in common]
        k = len(common)
        statistic = lambda *s, axis=-1: improvement_probability(s[:k], s[k:], axis=axis)  # noqa: E731
        point, low, high = stratified_bootstrap([*xs, *ys], statistic, n_resamples=n_resamples,
                                                level=level, seed=seed)
        rows.append({"x": x, "y": y, "tasks": k, "runs_x": int(sum(map(len, xs))),
                     "runs_y": int(sum(map(len, ys))), "probability": float(point),
                     "low": float(low), "high": float(high)})
    frame = pd.DataFrame(rows, columns=["x", "y", "tasks", "runs_x", "runs_y", "probability",
                                        "low", "high"])
    display = pd.DataFrame({"X": frame["x"], "Y": frame["y"], "tasks": frame["tasks"],
                            IMPROVEMENT_LABEL: [_cell(p, lo, hi, 2) for p, lo, hi in
                                                zip(frame["probability"], frame["low"],
                                                    frame["high"])]})
    notes = _notes(m, level, n_resamples) + [
        "P(X > Y): the probability that a run of X scores above a run of Y on the same task (ties "
        "half), from the Mann-Whitney U statistic, averaged over tasks; 0.5 = no difference. "
        "Agarwal et al. call an improvement meaningful when the interval's lower end is above 0.5."]
    if how:
        notes.insert(0, f"Pairs: {how}.")
    return Table("Probability of improvement", frame, display, notes, warnings)


def plot_improvement(table: Table, *, level: float = 0.95, title: str | None = None,
                     out: str | Path | None = None) -> StatsFigure:
    frame = table.frame
    labels = [f"{x}  vs  {y}" for x, y in zip(frame["x"], frame["y"])]
    fig = _figure(7.0, 0.55 * len(labels) + 1.6)
    ax = fig.subplots()
    y = np.arange(len(labels))[::-1]
    for i, row in frame.reset_index(drop=True).iterrows():
        if np.isfinite(row["low"]):
            ax.barh(y[i], row["high"] - row["low"], left=row["low"], height=0.6,
                    color=f"C{i % 10}", alpha=0.75)
        ax.vlines(row["probability"], y[i] - 0.3, y[i] + 0.3, color="k", lw=1.5)
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel(IMPROVEMENT_LABEL)
    ax.grid(axis="x", alpha=0.3)
    what = f"probability of improvement, {level:.0%} stratified bootstrap CI"
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=9)
    path = _save(fig, out)
    return StatsFigure(fig, {"improvement": ax}, table, path)
