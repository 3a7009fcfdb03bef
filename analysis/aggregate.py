"""Across-seed aggregation on a common step grid, and the per-run numbers the tables are made of.

Grouping: runs are grouped by *panel* columns (default: the dataset, and the algorithm when several
are present) and *variant* columns (default: every config choice or param that differs between
runs of a panel, seed excluded). Inside a group there should be one run per seed:

* a seed missing from a group (present elsewhere in the selection) is reported;
* two runs with the same seed in a group are reported with the params they differ in; the latest
  started one is kept (add the differing column to ``variant`` to keep both apart);
* step grids: the group's grid is the union of its runs' evaluation steps. A run's value at a grid
  step it did not log is linearly interpolated *only inside the run's own step range* (reported,
  counted in the ``interpolated`` column); outside it the run has no value. A grid step enters the
  curve only when at least ``min_seeds`` runs have a value there (default: all runs of the group),
  and the steps dropped for that are reported, so a mean is never silently taken over fewer seeds.

Intervals (``ci``): ``"t"`` (default): Student-t interval over seeds,
mean ± t_{(1+level)/2, n-1} * s / sqrt(n), s the sample standard deviation (ddof=1); ``"bootstrap"``:
percentile bootstrap of the mean over seeds (``n_boot`` resamples, fixed RNG seed). With one seed
the interval and the std are NaN. ``std`` is the sample standard deviation (ddof=1) everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.load import GROUPS, SCORE, AnalysisError, RunSet

CI_METHODS = {
    "t": "Student-t {pct}% interval over seeds: mean ± t(q={q}, df=n-1) · s/√n "
         "(s: sample std, ddof=1; n: seeds)",
    "bootstrap": "percentile bootstrap {pct}% interval of the mean over seeds ({n_boot} "
                 "resamples, fixed RNG seed)",
}

# ablation axes by their paper names -> the run column that carries them
AXES = {
    "lambda": "pretrain.lambda",
    "layernorm": "layernorm",
    "pretrain": "pretrain",
    "pretrain_ablation": "pretrain",
    "qt_max": "pretrain",
    "algo": "algo",
    "network": "network",
    "dataset": "dataset_name",
    "cql": "pretrain.cql_weight",
}
PRETTY = {"pretrain.lambda": "λ", "pretrain.cql_weight": "CQL weight"}
_NOT_VARIANT = {"seed", "run_id", "run_name", "status", "start_time", "end_time", "experiment_id",
                "parent_run_id", "_signature", "overrides", "phase", "device", "eval.seed",
                "pretrain_steps", "dataset_id", "dataset_name", "sweep", "layernorm",
                # per-run bookkeeping tags written by the training loop, never plot variants
                "run_identity", "checkpoint_dir", "resumed_from", "resumed_from_step", "interrupted",
                "checkpoint_corrupt", "slurm_job_id", "sweep.axes", "sweep.role", "error"}
# config groups that say where a run keeps its records, never what it computes: two sweeps with
# their own stores (tracker.store_dir, checkpoint.dir) are not two variants
_WHERE_NOT_WHAT = ("tracker.", "checkpoint.")
# tags a run writes about how it went (``<phase>.converged_at``): outcomes, never plot variants
_OUTCOME_SUFFIXES = (".converged_at",)


def describe_ci(ci: str = "t", level: float = 0.95, n_boot: int = 10000, short: bool = False) -> str:
    if ci not in CI_METHODS:
        raise AnalysisError(f"ci must be one of {sorted(CI_METHODS)}, not {ci!r}")
    pct = f"{level * 100:g}"
    if short:
        return f"{pct}% {'Student-t' if ci == 't' else 'bootstrap'} CI over seeds"
    return CI_METHODS[ci].format(pct=pct, q=f"{(1 + level) / 2:g}", n_boot=n_boot)


def resolve_column(runs: pd.DataFrame, name: str) -> str:
    """A column of ``runs`` by its name, an axis alias (``lambda`` -> ``pretrain.lambda``), or a
    unique dotted suffix (``actor_layer_norm`` -> ``network.actor_layer_norm``)."""
    if name in runs.columns:
        return name
    if name in AXES and AXES[name] in runs.columns:
        return AXES[name]
    matches = [c for c in runs.columns if c.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    raise AnalysisError(f"no run column {name!r} (axes: {sorted(AXES)}; columns: "
                        f"{sorted(c for c in runs.columns if not c.startswith('_'))})")


def default_panel(runs: pd.DataFrame) -> list[str]:
    """The dataset, with the algorithm in front when several algorithms are present (Fig. 2)."""
    panel = ["dataset_name"] if "dataset_name" in runs else []
    if "algo" in runs and runs["algo"].nunique() > 1:
        panel.insert(0, "algo")
    return panel


def _nunique(series: pd.Series) -> int:
    return series.astype(str).nunique()


def default_variant(runs: pd.DataFrame, panel: Sequence[str],
                    params: Sequence[str] | None = None) -> list[str]:
    """What makes a line: the sweep's swept axes (tag ``sweep.axes``, seed excluded), the
    config-group choices that differ between runs, then any param (``params``; default: every
    dotted column) that still differs between runs with the same panel and choices (e.g.
    ``pretrain.lambda`` set by hand). Columns that do not differ are dropped."""
    def differs(column: str) -> bool:
        return column in runs and _nunique(runs[column]) > 1

    def shown(column: str) -> bool:  # already drawn as panels
        return column in panel or (column == "dataset" and "dataset_name" in panel)

    variant: list[str] = []
    if "sweep.axes" in runs:
        for axes in runs["sweep.axes"].dropna().astype(str):
            for axis in [a.strip() for a in axes.split(",") if a.strip()]:
                try:
                    column = resolve_column(runs, axis)
                except AnalysisError:
                    continue
                if column != "seed" and not shown(column) and differs(column) and column not in variant:
                    variant.append(column)
    variant += [g for g in GROUPS if g not in variant and not shown(g) and differs(g)]
    cells = [c for c in [*panel, *variant, *GROUPS] if c in runs]
    cells = list(dict.fromkeys(cells))
    pool = params if params is not None else [c for c in runs.columns if "." in c]
    candidates = [c for c in pool
                  if c in runs and c not in _NOT_VARIANT and c not in cells
                  and not c.startswith(("phase_start/", "phase_end/", "_", *_WHERE_NOT_WHAT))
                  and not c.endswith(_OUTCOME_SUFFIXES)]
    if not candidates or not cells:
        return variant
    keyed = runs[cells].astype(str).agg("|".join, axis=1)
    for column in candidates:
        values = runs[column].astype(str)
        if len(runs) > 2 and values.nunique() == len(runs):
            continue  # a different value for every run (a path, an id): not a variant
        if (values.groupby(keyed).nunique() > 1).any():
            variant.append(column)
    return variant


def _fmt(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def labels(runs: pd.DataFrame, columns: Sequence[str], empty: str = "") -> pd.Series:
    """``pretrain=ac, λ=0.1``-style labels (``key=value``, one per column)."""
    if not columns:
        return pd.Series([empty] * len(runs), index=runs.index, dtype=object)
    parts = [runs[c].map(lambda v, c=c: f"{PRETTY.get(c, c)}={_fmt(v)}") for c in columns]
    out = parts[0]
    for part in parts[1:]:
        out = out + ", " + part
    return out


def panel_labels(runs: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    if not columns:
        return pd.Series(["all runs"] * len(runs), index=runs.index, dtype=object)
    return runs[list(columns)].astype(str).agg(" / ".join, axis=1)


@dataclass
class Grouping:
    panel: list[str]
    variant: list[str]
    runs: pd.DataFrame          # kept runs with "panel" and "variant" label columns
    warnings: list[str] = field(default_factory=list)
    seeds: list = field(default_factory=list)  # the seeds of the whole selection


def group_runs(rs: RunSet, variant: Sequence[str] | str | None = None,
               panel: Sequence[str] | str | None = None) -> Grouping:
    """Label each run with its panel and variant; report missing and duplicate seeds."""
    runs = rs.runs.copy()
    if runs.empty:
        raise AnalysisError("no runs selected (check the parent run id, experiment or filter)")
    as_list = lambda x: [x] if isinstance(x, str) else list(x)  # noqa: E731
    panel = default_panel(runs) if panel is None else [resolve_column(runs, p) for p in as_list(panel)]
    variant = (default_variant(runs, panel, rs.param_columns or None) if variant is None
               else [resolve_column(runs, v) for v in as_list(variant)])
    warnings: list[str] = []
    runs["panel"] = panel_labels(runs, panel)
    empty = str(runs["algo"].iloc[0]) if "algo" in runs and runs["algo"].nunique() == 1 else "runs"
    runs["variant"] = labels(runs, variant, empty=empty)
    if "seed" not in runs:
        runs["seed"] = range(len(runs))
        warnings.append("runs have no seed tag: each run is counted as its own seed")
    seeds = sorted(runs["seed"].dropna().unique().tolist())
    keep = []
    for (panel_label, variant_label), group in runs.groupby(["panel", "variant"], sort=False):
        name = f"[{panel_label}] {variant_label}"
        for seed, same in group.groupby("seed"):
            if len(same) > 1:
                config = set(rs.param_columns) | set(GROUPS) if rs.param_columns else None
                differ = [c for c in same.columns if not c.startswith("_") and c not in
                          ("run_id", "run_name", "start_time", "end_time", "status")
                          and (config is None or c in config) and _nunique(same[c]) > 1]
                chosen = same.sort_values("start_time").iloc[-1]
                warnings.append(
                    f"{name}: {len(same)} runs with seed {seed} ({', '.join(same['run_name'].astype(str))})"
                    f"; kept the latest ({chosen['run_name']}). They differ in: "
                    f"{', '.join(differ) or 'nothing (a repeated run)'}; pass that as a variant to "
                    f"keep them apart")
                keep.append(chosen["run_id"])
            else:
                keep.append(same["run_id"].iloc[0])
        missing = [s for s in seeds if s not in set(group["seed"])]
        if missing:
            warnings.append(f"{name}: missing seed(s) {missing}: its mean/std/interval use "
                            f"{group['seed'].nunique()} of {len(seeds)} seeds")
    runs = runs[runs["run_id"].isin(keep)].reset_index(drop=True)
    return Grouping(panel, variant, runs, warnings, seeds)


@dataclass
class Aggregated:
    """``curves``: one row per (panel, variant, step) with n, mean, std, sem, ci_low, ci_high,
    interpolated; ``aligned``: each run's value on its group's grid; ``warnings``."""

    curves: pd.DataFrame
    aligned: pd.DataFrame
    grouping: Grouping
    warnings: list[str]
    method: str
    method_short: str = ""


def _t_quantile(q: float, df: np.ndarray) -> np.ndarray:
    from scipy import stats

    return stats.t.ppf(q, df)


def interval(values: np.ndarray, ci: str = "t", level: float = 0.95, n_boot: int = 10000,
             rng: np.random.Generator | None = None) -> tuple[float, float]:
    """The interval of the mean of ``values`` (one per seed)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    if n < 2:
        return (np.nan, np.nan)
    mean = values.mean()
    if ci == "t":
        half = _t_quantile((1 + level) / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)
        return (mean - half, mean + half)
    if ci == "bootstrap":
        rng = rng or np.random.default_rng(0)
        means = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        alpha = (1 - level) / 2
        return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))
    raise AnalysisError(f"ci must be one of {sorted(CI_METHODS)}, not {ci!r}")


def _align(histories: dict[str, pd.DataFrame], grid: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """Values (runs x grid), interpolated mask, grid, and for each run whose steps differ from the
    grid: (grid steps interpolated, grid steps outside its range, its first step, its last step)."""
    steps = {r: h["step"].to_numpy() for r, h in histories.items()}
    if grid is None:
        grid = np.unique(np.concatenate(list(steps.values()))) if steps else np.array([], int)
    values = np.full((len(histories), len(grid)), np.nan)
    interp = np.zeros_like(values, dtype=bool)
    odd = {}
    for i, (run_id, h) in enumerate(histories.items()):
        s, v = steps[run_id], h["value"].to_numpy(dtype=float)
        if len(s) == 0:
            continue
        inside = (grid >= s[0]) & (grid <= s[-1])
        values[i, inside] = np.interp(grid[inside], s, v)
        exact = np.isin(grid, s)
        interp[i] = inside & ~exact
        n_interp, n_outside = int(interp[i].sum()), int((~inside).sum())
        if n_interp or n_outside:
            odd[run_id] = (n_interp, n_outside, int(s[0]), int(s[-1]))
    return values, interp, grid, odd


def _grid_note(n_interp: int, n_outside: int, first: int, last: int) -> str:
    return ", ".join(([f"{n_interp} grid step(s) interpolated"] if n_interp else []) +
                     ([f"no value at {n_outside} grid step(s) outside its range {first}-{last}"]
                      if n_outside else []))


def _grid_warning(name: str, odd: dict[str, tuple[int, int, int, int]], names: dict, seeds: dict,
                  n_runs: int) -> str:
    """One line per group: the run itself when one run's steps differ from the grid; when several
    do (pre-training of different lengths shifts every run's evaluation steps), what they add up to,
    each short run's range kept."""
    if len(odd) == 1:
        (run_id, note), = odd.items()
        return (f"{name}: run {names[run_id]} (seed {seeds[run_id]}) steps differ from the group's "
                f"grid: {_grid_note(*note)}")
    by_seed = sorted(odd.items(), key=lambda item: seeds[item[0]])
    n_interp = sum(note[0] for note in odd.values())
    parts = [f"{n_interp} value(s) (run x step) interpolated inside their ranges"] if n_interp else []
    short = [f"seed {seeds[r]} ({first}-{last}: {n_outside})"
             for r, (_, n_outside, first, last) in by_seed if n_outside]
    if short:
        parts.append(f"grid steps without a value outside a run's range: {', '.join(short)}")
    return (f"{name}: the steps of {len(odd)} of {n_runs} runs (seeds "
            f"{', '.join(str(seeds[r]) for r, _ in by_seed)}) differ from the group's grid: "
            f"{'; '.join(parts)}")


def aggregate(rs: RunSet, metric: str = SCORE, variant=None, panel=None, *, ci: str = "t",
              level: float = 0.95, min_seeds: int | None = None, grid: Sequence[int] | None = None,
              n_boot: int = 10000, seed: int = 0) -> Aggregated:
    """Mean, std and interval across seeds of ``metric`` on each group's step grid."""
    method = describe_ci(ci, level, n_boot)
    short = describe_ci(ci, level, n_boot, short=True)
    grouping = group_runs(rs, variant, panel)
    history = rs.history(metric)
    history = history[history["run_id"].isin(grouping.runs["run_id"])]
    by_run = {r: h.sort_values("step") for r, h in history.groupby("run_id")}
    warnings = list(grouping.warnings)
    if min_seeds is not None:
        runs_with_metric = grouping.runs[grouping.runs["run_id"].isin(by_run)]
        most = int(runs_with_metric.groupby(["panel", "variant"]).size().max()) if len(runs_with_metric) else 0
        if min_seeds > most:  # every curve would be empty: an empty page is no answer
            raise AnalysisError(f"min_seeds={min_seeds}: no line has that many runs with {metric} "
                                f"(the most: {most}); ask for {most} or fewer")
    rng = np.random.default_rng(seed)
    curve_rows, aligned_rows = [], []
    meta = grouping.panel + grouping.variant
    for (panel_label, variant_label), group in grouping.runs.groupby(["panel", "variant"], sort=False):
        name = f"[{panel_label}] {variant_label}"
        ids = [r for r in group["run_id"] if r in by_run]
        lacking = group.loc[~group["run_id"].isin(ids), "run_name"].tolist()
        if lacking:
            warnings.append(f"{name}: no {metric} in run(s) {lacking}; left out")
        if not ids:
            continue
        values, interp, steps, odd = _align({r: by_run[r] for r in ids},
                                            None if grid is None else np.asarray(grid))
        names = dict(zip(group["run_id"], group["run_name"]))
        seeds = dict(zip(group["run_id"], group["seed"]))
        if odd:
            warnings.append(_grid_warning(name, odd, names, seeds, len(ids)))
        need = len(ids) if min_seeds is None else min_seeds
        n = (~np.isnan(values)).sum(axis=0)
        dropped = steps[(n < need) & (n > 0)]
        if len(dropped):
            warnings.append(f"{name}: {len(dropped)} step(s) ({_span(dropped)}) left out of the "
                            f"curve: fewer than {need} runs have a value there (min_seeds)")
        first = group.iloc[0]
        for j, step in enumerate(steps):
            column = values[:, j]
            present = column[~np.isnan(column)]
            for i, run_id in enumerate(ids):
                if not np.isnan(values[i, j]):
                    aligned_rows.append({**{c: first[c] for c in meta}, "panel": panel_label,
                                         "variant": variant_label, "run_id": run_id,
                                         "seed": seeds[run_id], "step": int(step),
                                         "value": values[i, j], "interpolated": bool(interp[i, j])})
            if n[j] < max(need, 1):
                continue
            low, high = interval(present, ci, level, n_boot, rng)
            std = present.std(ddof=1) if len(present) > 1 else np.nan
            curve_rows.append({**{c: first[c] for c in meta}, "panel": panel_label,
                               "variant": variant_label, "step": int(step), "n": int(n[j]),
                               "mean": present.mean(), "std": std,
                               "sem": std / np.sqrt(len(present)), "ci_low": low, "ci_high": high,
                               "interpolated": int(interp[:, j].sum())})
    curves = pd.DataFrame(curve_rows, columns=[*meta, "panel", "variant", "step", "n", "mean", "std",
                                               "sem", "ci_low", "ci_high", "interpolated"])
    aligned = pd.DataFrame(aligned_rows, columns=[*meta, "panel", "variant", "run_id", "seed", "step",
                                                  "value", "interpolated"])
    return Aggregated(curves, aligned, grouping, _dedupe(warnings), method, short)


def _span(steps: np.ndarray) -> str:
    return f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}..{steps[-1]}"


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def first_step_at_or_above(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """The first step whose value reaches ``threshold`` (NaN if none does)."""
    hit = np.flatnonzero(np.asarray(values) >= threshold)
    return float(np.asarray(steps)[hit[0]]) if len(hit) else np.nan


def final_scores(rs: RunSet, metric: str = SCORE, last: int = 1) -> pd.Series:
    """Per run: the mean of its last ``last`` logged values (index: run_id)."""
    h = rs.history(metric).sort_values(["run_id", "step"])
    return h.groupby("run_id")["value"].apply(lambda v: v.iloc[-last:].mean())


def window_scores(rs: RunSet, low: float, high: float, metric: str = SCORE) -> pd.DataFrame:
    """Per run: mean and count of the values logged at low <= step <= high."""
    h = rs.history(metric)
    inside = h[(h["step"] >= low) & (h["step"] <= high)]
    out = inside.groupby("run_id")["value"].agg(["mean", "count"]).rename(
        columns={"mean": "window_mean", "count": "n_evals"})
    return out.reindex(rs.runs["run_id"]).fillna({"n_evals": 0}).astype({"n_evals": int})


def mean_std(values) -> tuple[float, float, int]:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return (np.nan, np.nan, 0)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else np.nan, len(v))
