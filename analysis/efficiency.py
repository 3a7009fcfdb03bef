"""The paper's efficiency claim, measured per dataset (docs/results.md, ``python -m analysis results``).

Definitions (stated on the page too):

- **curve**: the seed mean of ``eval/normalized_score_mean`` against gradient updates, pre-training
  included (``analysis.aggregate``'s common step grid), at the steps where every run of the
  variant has a value (a run that stopped early ends its variant's curve);
- **asymptote** of a curve: its mean over the last 10% of its evaluations (rounded up, at least 2);
- **converged**: the curve's asymptote is not above the mean of as many evaluations before them
  by more than max(2 points, 5% of the asymptote); otherwise it is *still rising* and its end is
  not called an asymptote; a curve with fewer than twice that many evaluations is too short to
  tell;
- **updates to 90%**: the first evaluation step at which a curve reaches 90% of the *baseline's*
  (no pre-training) asymptote; the **ratio** is a variant's updates over the baseline's own, with
  a 95% percentile bootstrap interval over seeds (the runs of each variant resampled with
  replacement, 2,000 times, the baseline's asymptote recomputed each time; a resample whose curve
  never reaches the threshold counts as an infinite ratio). The paper's "< 1/2" **holds** when the
  interval lies below 0.5, **does not hold** when it lies above, and **cannot be told** when it
  contains 0.5, or when a variant or the baseline has fewer than 3 runs (no interval is given).
  A baseline asymptote that is not positive (in the data or in a resample) makes 90% of it no
  bar: no ratio, no interval, cannot be told;
- **compute time** to a step: the run's evaluation timestamps from its start, every interval
  between two evaluations capped at 3x the run's median interval, so that a run paused by
  SIGSTOP (while tests ran beside it) or stopped and resumed does not count its pause; the same
  ratio, interval and verdict as for updates (the paper claims both);
- **stability**: each run's standard deviation of its evaluations over its last 100k updates, or
  over the last half of its offline RL updates when it ran fewer than 200k of them (a 100k-update
  run: its last 50k), so that the window never reaches back into the climb at the start of offline
  RL; averaged over seeds (the paper: pre-training makes the final performance more stable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.aggregate import Aggregated
from offline_rl.progress import without_pauses

TAIL = 0.1  # share of evaluations the asymptote averages
RISE_POINTS, RISE_SHARE = 2.0, 0.05  # what counts as still rising
FRACTION = 0.9
CLAIM = 0.5
RESAMPLES = 2000
# runs per variant below which no interval (and so no verdict) is given: a bootstrap over one run
# has no spread, and one over two has three distinct resamples (the paper used 3 seeds)
MIN_SEEDS = 3
STABILITY_WINDOW = 100_000


def tail_mean(values: np.ndarray, share: float = TAIL) -> tuple[float, float]:
    """(mean of the last ``share`` of ``values`` (rounded up, at least 2), mean of as many before
    them -- NaN when there are not that many)."""
    values = np.asarray(values, dtype=float)
    if not len(values):  # runs that share no evaluated step
        return float("nan"), float("nan")
    k = max(2, math.ceil(share * len(values) - 1e-9))
    last, before = values[-k:], values[-2 * k:-k]
    return float(np.mean(last)), float(np.mean(before)) if len(before) == k else float("nan")


def converged(values: np.ndarray) -> tuple[bool | None, float, float]:
    """(converged? -- None when the curve is too short to tell, asymptote, rise over the last two
    tail windows)."""
    end, before = tail_mean(values)
    rise = end - before
    if np.isnan(rise):
        return None, end, rise
    return (not rise > max(RISE_POINTS, RISE_SHARE * abs(end))), end, rise


def first_reach(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
    hit = np.flatnonzero(values >= threshold)
    return float(steps[hit[0]]) if hit.size else float("inf")


def compute_seconds(history: pd.DataFrame, start_ms: float) -> pd.Series:
    """Seconds of compute at each evaluation step of one run (pauses capped away)."""
    h = history.sort_values("step")
    times = np.concatenate([[start_ms], h["timestamp"].to_numpy(dtype=float)]) / 1e3
    return pd.Series(np.cumsum(without_pauses(np.diff(times).tolist())), index=h["step"].to_numpy())


@dataclass
class VariantResult:
    variant: str
    seeds: int
    converged: bool | None
    asymptote: float
    rise: float
    updates_to_90: float
    seconds_to_90: float
    update_ratio: float = float("nan")
    update_ci: tuple[float, float] = (float("nan"), float("nan"))
    time_ratio: float = float("nan")
    time_ci: tuple[float, float] = (float("nan"), float("nan"))
    pretrain_updates: float = float("nan")
    stability: float = float("nan")
    stability_sd: float = float("nan")


@dataclass
class DatasetResult:
    panel: str
    baseline: str
    threshold: float
    variants: list[VariantResult] = field(default_factory=list)

    def verdict(self) -> str:
        base = next(v for v in self.variants if v.variant == self.baseline)
        parts = []
        if np.isnan(base.asymptote):
            parts.append("the baseline's runs share no evaluated step: no curve, the paper's \"< 1/2\" "
                         "**cannot be told**")
            return f"**{self.panel}**: " + "; ".join(parts) + "."
        if base.converged is None:
            parts.append("the baseline has too few evaluations to tell whether it converged")
        elif not base.converged:
            parts.append(f"the baseline is still rising at the end (+{base.rise:.1f} over its last "
                         f"{2 * TAIL:.0%} of evaluations): its end is not an asymptote, so 90% of it "
                         f"is a lower bar than the paper's")
        if not base.asymptote > 0:
            parts.append(f"the baseline's asymptote ({base.asymptote:.1f}) is not positive: 90% of it "
                         f"is no bar, the paper's \"< 1/2\" **cannot be told**")
            return f"**{self.panel}**: " + "; ".join(parts) + "."
        for v in self.variants:
            if v.variant == self.baseline:
                continue
            if min(v.seeds, base.seeds) < MIN_SEEDS:
                parts.append(f"{v.variant}: {v.seeds} run(s) against the baseline's {base.seeds}, "
                             f"fewer than the {MIN_SEEDS} per variant an interval needs: the "
                             f"paper's \"< 1/2\" **cannot be told** yet (updates ratio of the "
                             f"seed means {_num(v.update_ratio)})")
                continue
            interval = f"[{_num(v.update_ci[0])}, {_num(v.update_ci[1])}]"
            if np.isfinite(v.update_ratio):
                reach = (f"reaches 90% of the baseline's asymptote ({self.threshold:.1f}) at an "
                         f"updates ratio of {v.update_ratio:.2f} {interval}")
            else:
                reach = (f"never reaches 90% of the baseline's asymptote ({self.threshold:.1f}) on "
                         f"its seed-mean curve (updates ratio {_num(v.update_ratio)}, 95% CI {interval})")
            if any(np.isnan(v.update_ci)):
                reach += " (no interval: the baseline's asymptote is not positive in some resamples)"
            parts.append(f"{v.variant} {reach}: the paper's \"< 1/2\" of the updates **{said(v.update_ci)}**; "
                         f"of the compute time (ratio {_num(v.time_ratio)} [{_num(v.time_ci[0])}, "
                         f"{_num(v.time_ci[1])}]) **{said(v.time_ci)}**")
        return f"**{self.panel}**: " + "; ".join(parts) + "."


def said(interval: tuple[float, float]) -> str:
    """The paper's "< 1/2" for a ratio's 95% interval."""
    low, high = interval
    if np.isnan(low) or np.isnan(high):
        return "cannot be told"
    return "holds" if high < CLAIM else ("does not hold" if low > CLAIM else "cannot be told")


def _num(x: float) -> str:
    return "∞" if x == float("inf") else ("—" if np.isnan(x) else f"{x:.2f}")


def _matrix(aligned: pd.DataFrame, variant: str, grid: np.ndarray) -> np.ndarray:
    rows = aligned[aligned["variant"] == variant].pivot_table(index="run_id", columns="step",
                                                            values="value")
    return rows.reindex(columns=grid).to_numpy(dtype=float)


def _curve(matrix: np.ndarray) -> np.ndarray:
    """The seed-mean curve of a variant's runs (rows) on the grid: NaN at a step where any run has
    no value (before it started evaluating, after it stopped)."""
    return matrix.mean(axis=0)


def _steps_to(matrix: np.ndarray, grid: np.ndarray, threshold: float) -> float:
    """The first grid step at which the runs' seed-mean curve reaches ``threshold`` (inf: never)."""
    return first_reach(grid, np.nan_to_num(_curve(matrix), nan=-np.inf), threshold)


def _threshold(base_matrix: np.ndarray) -> float:
    """90% of the baseline curve's asymptote; NaN when that is not positive (no bar)."""
    curve = _curve(base_matrix)
    asymptote = tail_mean(curve[~np.isnan(curve)])[0]
    return FRACTION * asymptote if asymptote > 0 else float("nan")


def _ratio(variant: float, baseline: float) -> float:
    """A variant's updates (or seconds) over the baseline's; NaN without a baseline to divide by."""
    return variant / baseline if np.isfinite(baseline) and baseline > 0 else float("nan")


def dataset_result(agg: Aggregated, rs_history: pd.DataFrame, runs: pd.DataFrame, panel: str,
                   baseline: str, seed: int = 0) -> DatasetResult:
    """Everything the page says about one dataset (``panel``) of an aggregate."""
    aligned = agg.aligned[agg.aligned["panel"] == panel]
    panel_runs = agg.grouping.runs[agg.grouping.runs["panel"] == panel]
    grid = np.sort(aligned["step"].unique())
    seconds = {}  # run -> compute seconds by step
    for run_id, h in rs_history[rs_history["run_id"].isin(panel_runs["run_id"])].groupby("run_id"):
        start = float(runs.loc[runs["run_id"] == run_id, "start_time"].iloc[0])
        seconds[run_id] = compute_seconds(h, start)
    matrices = {v: _matrix(aligned, v, grid) for v in panel_runs["variant"].unique()}
    threshold = _threshold(matrices[baseline])
    result = DatasetResult(panel, baseline, threshold)
    ids = {v: list(aligned[aligned["variant"] == v].pivot_table(index="run_id", columns="step",
                                                             values="value").index)
           for v in matrices}

    def time_at(variant: str, rows: np.ndarray, step: float) -> float:
        if not np.isfinite(step):
            return float("inf")
        values = [np.interp(step, s.index, s.to_numpy()) for s in
                  (seconds[ids[variant][i]] for i in rows) if len(s)]
        return float(np.mean(values)) if values else float("nan")

    rng = np.random.default_rng(seed)
    base_m = matrices[baseline]
    draws = {v: [rng.integers(0, len(m), len(m)) for _ in range(RESAMPLES)] for v, m in matrices.items()}
    for variant, matrix in matrices.items():
        curve = _curve(matrix)
        v_ok, v_end, v_rise = converged(curve[~np.isnan(curve)])
        every = np.arange(len(matrix))
        steps = _steps_to(matrix, grid, threshold)
        group = panel_runs[panel_runs["variant"] == variant]
        res = VariantResult(variant, len(matrix), v_ok, v_end, v_rise, steps,
                            time_at(variant, every, steps))
        # each run's global step where offline RL began (unknown: NaN, read as 0 below)
        offline_starts = (pd.to_numeric(group["pretrain_steps"], errors="coerce")
                          if "pretrain_steps" in group else pd.Series(np.nan, index=group.index))
        res.pretrain_updates = float(offline_starts.mean())
        spreads = []
        for run_id, offline_start in zip(group["run_id"], offline_starts.fillna(0)):
            h = rs_history[rs_history["run_id"] == run_id].sort_values("step")
            end = h["step"].max()
            window = min(STABILITY_WINDOW, (end - offline_start) / 2)
            tail = h[h["step"] > end - window]["value"]
            if len(tail) >= 2:
                spreads.append(float(tail.std(ddof=1)))
        if spreads:
            res.stability = float(np.mean(spreads))
            res.stability_sd = float(np.std(spreads, ddof=1)) if len(spreads) > 1 else float("nan")
        result.variants.append(res)
    base = next(v for v in result.variants if v.variant == baseline)
    for res in result.variants:
        res.update_ratio = _ratio(res.updates_to_90, base.updates_to_90)
        res.time_ratio = _ratio(res.seconds_to_90, base.seconds_to_90)
        if res.variant == baseline or min(res.seeds, base.seeds) < MIN_SEEDS or np.isnan(threshold):
            continue  # no interval from fewer runs (MIN_SEEDS) or without a bar: the table shows "—"
        update_ratios, time_ratios = [], []
        for b_rows, v_rows in zip(draws[baseline], draws[res.variant]):
            b_matrix = base_m[b_rows]
            t = _threshold(b_matrix)  # the baseline's asymptote recomputed in each resample
            if np.isnan(t):
                update_ratios.append(t)
                time_ratios.append(t)
                continue
            b_steps = _steps_to(b_matrix, grid, t)
            v_steps = _steps_to(matrices[res.variant][v_rows], grid, t)
            update_ratios.append(_ratio(v_steps, b_steps))
            time_ratios.append(_ratio(time_at(res.variant, v_rows, v_steps), time_at(baseline, b_rows, b_steps)))
        res.update_ci = _percentiles(update_ratios)
        res.time_ci = _percentiles(time_ratios)
    return result


def _percentiles(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the resamples' ratios; none (NaN) if any resample has no ratio
    (the baseline's asymptote not positive there): dropping them would bias the interval."""
    values = np.asarray(values, dtype=float)
    if not len(values) or np.isnan(values).any():
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    # 'inverted_cdf' picks observed values (no interpolation), so an end made of resamples that
    # never reach the threshold is infinite instead of inf - inf = NaN
    return tuple(float(np.quantile(values, q, method="inverted_cdf")) for q in (alpha, 1 - alpha))


def table(result: DatasetResult) -> list[str]:
    rows = [f"| variant | seeds | end of curve (mean of its last {TAIL:.0%}) | converged | updates to 90% (pre-training incl.) | "
            "of which pre-training | updates ratio [95% CI] | compute time to 90% | "
            "time ratio [95% CI] | stability (std over the last 100k, or half) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for v in result.variants:
        conv = ("too short to tell" if v.converged is None else
                "yes" if v.converged else f"no, still rising (+{v.rise:.1f})")
        updates = "not reached" if not np.isfinite(v.updates_to_90) else f"{int(v.updates_to_90):,}"
        seconds = "—" if not np.isfinite(v.seconds_to_90) else f"{v.seconds_to_90 / 60:.1f} min"
        base = v.variant == result.baseline
        ratio = "1 (baseline)" if base else f"{_num(v.update_ratio)} [{_num(v.update_ci[0])}, {_num(v.update_ci[1])}]"
        tratio = "1 (baseline)" if base else f"{_num(v.time_ratio)} [{_num(v.time_ci[0])}, {_num(v.time_ci[1])}]"
        pre = "—" if np.isnan(v.pretrain_updates) or v.pretrain_updates == 0 else f"{int(v.pretrain_updates):,}"
        if pre != "—" and v.updates_to_90 < v.pretrain_updates:  # the bar reached while pre-training
            pre = f"all (reached during its {int(v.pretrain_updates):,})"
        stab = "—" if np.isnan(v.stability) else (f"{v.stability:.1f}" + (
            f" ± {v.stability_sd:.1f}" if not np.isnan(v.stability_sd) else ""))
        rows.append(f"| {v.variant} | {v.seeds} | {v.asymptote:.1f} | {conv} | {updates} | {pre} | "
                    f"{ratio} | {seconds} | {tratio} | {stab} |")
    return rows
