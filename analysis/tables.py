"""The paper's tables from a :class:`RunSet`: efficiency (updates to reach a fraction of the
baseline's final score), the appendix-G window summary (Tables 2 and 5) and the fine-tuning
summary (Table 1 of "finetuning from offline RL"). Each returns a :class:`Table` (numbers as a
frame, a Markdown rendering, warnings) that ``write`` saves as ``<stem>.csv`` and ``<stem>.md``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.aggregate import (AnalysisError, aggregate, final_scores, first_step_at_or_above,
                                group_runs, mean_std, resolve_column, window_scores)
from analysis.load import SCORE, RunSet

FINETUNE_ENV_STEPS = "finetune/env_steps"
OFFLINE_SCORE_KEYS = ("finetune/offline_score", "offline_score")


@dataclass
class Table:
    title: str
    frame: pd.DataFrame          # the numbers, one row per (panel, variant)
    display: pd.DataFrame        # what the Markdown shows
    notes: list[str] = field(default_factory=list)     # how the numbers were computed
    warnings: list[str] = field(default_factory=list)  # what was odd about the runs

    def markdown(self) -> str:
        parts = [f"### {self.title}", "", to_markdown(self.display), ""]
        parts += [f"- {n}" for n in self.notes]
        if self.warnings:
            parts += ["", "Warnings:", *[f"- {w}" for w in self.warnings]]
        return "\n".join(parts).rstrip() + "\n"

    def write(self, out: str | Path, stem: str) -> list[Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        csv, md = out / f"{stem}.csv", out / f"{stem}.md"
        self.frame.to_csv(csv, index=False)
        md.write_text(self.markdown())
        return [csv, md]


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency)."""
    if frame.empty:
        return "_(no rows)_"
    cells = [[str(c) for c in frame.columns]] + [[_cell(v) for v in row] for row in
                                                 frame.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *[line(r) for r in cells[1:]]])


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.2f}"
    return str(value)


def pm(mean: float, std: float, digits: int = 1) -> str:
    if mean is None or np.isnan(mean):
        return "—"
    if std is None or np.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _steps(value) -> str:
    return "not reached" if value is None or np.isnan(value) else f"{int(value):,}"


def match_baseline(runs: pd.DataFrame, variant: list[str], spec: str | None
                    ) -> tuple[dict[str, str], str]:
    """A baseline spec (``pretrain=none``, ``pretrain=none, network=default``, or a bare value
    of a variant column) -> column/value constraints, and how it was chosen."""
    if spec is None:
        if "pretrain" in variant and (runs["pretrain"].astype(str) == "none").any():
            return {"pretrain": "none"}, "no pre-training (pretrain=none)"
        first = sorted(runs["variant"].unique())[0]
        return {"variant": first}, f"{first} (first variant; pass --baseline to choose)"
    if spec in set(runs["variant"]):
        return {"variant": spec}, spec
    constraints = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if "=" in part:
            key, value = part.split("=", 1)
            column = "pretrain.lambda" if key.strip() == "λ" else resolve_column(runs, key.strip())
            constraints[column] = value.strip()
        else:
            hits = [c for c in variant if (runs[c].astype(str) == part).any()]
            if len(hits) != 1:
                raise AnalysisError(f"baseline {spec!r}: {part!r} is a value of "
                                    f"{hits or 'no variant column'}; write column=value")
            constraints[hits[0]] = part
    return constraints, spec


def efficiency_table(rs: RunSet, metric: str = SCORE, variant=None, panel=None, *,
                     baseline: str | None = None, fraction: float = 0.9, final_last: int = 1,
                     min_seeds: int | None = None) -> Table:
    """Updates (pre-training included) for each variant's seed-mean curve to first reach
    ``fraction`` x the baseline's final score (seed mean of each baseline run's mean over its last
    ``final_last`` evaluations), and the ratio to the baseline's own updates. Per-seed updates
    (each run's first evaluation at or above the threshold) are given too."""
    agg = aggregate(rs, metric, variant, panel, min_seeds=min_seeds)
    runs = agg.grouping.runs
    finals = final_scores(rs, metric, final_last)
    history = rs.history(metric).sort_values("step")
    by_run = {r: h for r, h in history.groupby("run_id")}
    constraints, how = match_baseline(runs, agg.grouping.variant, baseline)
    warnings = list(agg.warnings)
    rows = []
    for panel_label, in_panel in runs.groupby("panel", sort=False):
        mask = pd.Series(True, index=in_panel.index)
        for column, value in constraints.items():
            mask &= in_panel[column].astype(str).map(norm_value) == norm_value(value)
        base_variants = in_panel.loc[mask, "variant"].unique()
        if len(base_variants) != 1:
            warnings.append(f"[{panel_label}]: baseline {how!r} matches {len(base_variants)} "
                            f"variants {list(base_variants)}; no efficiency row for this panel")
            continue
        base = base_variants[0]
        base_final, _, _ = mean_std(finals.reindex(in_panel.loc[in_panel["variant"] == base, "run_id"]))
        threshold = fraction * base_final
        if not base_final > 0:
            warnings.append(f"[{panel_label}]: baseline final score {base_final:.3g} is not positive; "
                            f"{fraction:.0%} of it is not a meaningful target")
        panel_rows = []
        for variant_label, group in in_panel.groupby("variant", sort=False):
            curve = agg.curves[(agg.curves["panel"] == panel_label) &
                               (agg.curves["variant"] == variant_label)]
            reach = first_step_at_or_above(curve["step"].to_numpy(), curve["mean"].to_numpy(),
                                           threshold)
            per_seed = [first_step_at_or_above(by_run[r]["step"].to_numpy(),
                                               by_run[r]["value"].to_numpy(), threshold)
                        for r in group["run_id"] if r in by_run]
            seed_mean, seed_std, reached = mean_std(per_seed)
            final_mean, final_std, n = mean_std(finals.reindex(group["run_id"]))
            pre = (group["pretrain_steps"].mean() if "pretrain_steps" in group else np.nan)
            panel_rows.append({
                **{c: group.iloc[0][c] for c in agg.grouping.panel + agg.grouping.variant},
                "panel": panel_label, "variant": variant_label, "baseline": variant_label == base,
                "seeds": n, "final_mean": final_mean, "final_std": final_std,
                "threshold": threshold, "updates_to_threshold": reach,
                "pretrain_updates": pre, "seed_updates_mean": seed_mean,
                "seed_updates_std": seed_std, "seeds_reached": reached})
        base_steps = next(r["updates_to_threshold"] for r in panel_rows if r["baseline"])
        for r in panel_rows:
            r["ratio_to_baseline"] = r["updates_to_threshold"] / base_steps if base_steps else np.nan
        rows += panel_rows
    frame = pd.DataFrame(rows)
    display = pd.DataFrame({
        "panel": frame.get("panel", []), "variant": frame.get("variant", []),
        "final score": [pm(m, s) for m, s in zip(frame.get("final_mean", []), frame.get("final_std", []))],
        f"{fraction:.0%} of baseline": [f"{t:.1f}" for t in frame.get("threshold", [])],
        "updates to reach": [_steps(v) for v in frame.get("updates_to_threshold", [])],
        "of which pre-training": [_steps(v) if not np.isnan(v) else "—"
                                  for v in frame.get("pretrain_updates", [])],
        "ratio to baseline": [f"{v:.2f}" if not np.isnan(v) else "—"
                              for v in frame.get("ratio_to_baseline", [])],
        "seeds reaching": [f"{a}/{b}" for a, b in zip(frame.get("seeds_reached", []),
                                                      frame.get("seeds", []))],
    })
    notes = [f"Baseline: {how}. Its final score: the seed mean of each run's "
             f"{'last evaluation' if final_last == 1 else f'mean over its last {final_last} evaluations'}"
             f" of {metric}.",
             f"Updates to reach: the first evaluation step, pre-training updates included, where the "
             f"seed-mean curve is at or above {fraction:.0%} of that score; ratio = variant / "
             f"baseline (the paper's claim: < 0.5 with pre-training).",
             "Seeds reaching: runs whose own curve reaches the threshold."]
    return Table(f"Efficiency: updates to reach {fraction:.0%} of the baseline's final score",
                 frame, display, notes, warnings)


def norm_value(value) -> str:
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text.lower()
    return repr(number)


def default_window(rs: RunSet, metric: str = SCORE) -> tuple[int, int]:
    """The last third of training: [2/3 H, H], H = the shortest run's last step (the paper's
    200k-300k of 300k updates)."""
    last = rs.history(metric).groupby("run_id")["step"].max()
    if last.empty:
        raise AnalysisError(f"no {metric} history to choose a window from")
    high = int(last.min())
    return int(round(high * 2 / 3)), high


def window_table(rs: RunSet, low: float | None = None, high: float | None = None,
                 metric: str = SCORE, variant=None, panel=None, *,
                 columns: str = "variant") -> Table:
    """Appendix G (Tables 2 and 5): each run's mean of ``metric`` over the evaluations at
    low <= step <= high, then mean ± std (ddof=1) over seeds; rows = panels, columns = variants."""
    if low is None or high is None:
        d_low, d_high = default_window(rs, metric)
        low = d_low if low is None else low
        high = d_high if high is None else high
    if low > high:
        raise AnalysisError(f"window {low}-{high}: low is above high")
    grouping = group_runs(rs, variant, panel)
    per_run = window_scores(rs, low, high, metric)
    warnings = list(grouping.warnings)
    rows = []
    for (panel_label, variant_label), group in grouping.runs.groupby(["panel", "variant"], sort=False):
        stats = per_run.reindex(group["run_id"])
        empty = group.loc[stats["n_evals"].to_numpy() == 0, "run_name"].tolist()
        if empty:
            warnings.append(f"[{panel_label}] {variant_label}: no evaluation in {low}-{high} in "
                            f"run(s) {empty}; left out")
        counts = stats["n_evals"][stats["n_evals"] > 0]
        if counts.nunique() > 1:
            warnings.append(f"[{panel_label}] {variant_label}: runs have different numbers of "
                            f"evaluations in the window ({sorted(counts.unique().tolist())}); each "
                            f"run's own mean is used")
        mean, std, n = mean_std(stats["window_mean"])
        rows.append({**{c: group.iloc[0][c] for c in grouping.panel + grouping.variant},
                     "panel": panel_label, "variant": variant_label, "mean": mean, "std": std,
                     "seeds": n, "evals_per_run": int(counts.max()) if len(counts) else 0,
                     "window_low": low, "window_high": high})
    frame = pd.DataFrame(rows)
    if frame.empty:
        display = pd.DataFrame()
    else:
        cell = frame.assign(cell=[pm(m, s) for m, s in zip(frame["mean"], frame["std"])])
        display = cell.pivot(index="panel", columns=columns, values="cell")
        display = display.reindex(index=list(dict.fromkeys(frame["panel"])),
                                  columns=list(dict.fromkeys(frame[columns]))).reset_index()
        display.columns.name = None
    notes = [f"Normalised score averaged over the evaluations between {int(low):,} and "
             f"{int(high):,} updates (pre-training included), then mean ± std (ddof=1) over seeds "
             f"(appendix G.2/G.5).",
             f"Seeds per cell: {sorted(set(frame['seeds']))}." if len(frame) else "No runs."]
    return Table(f"Normalised score, updates {int(low):,}-{int(high):,}", frame, display, notes,
                 warnings)


def finetune_table(rs: RunSet, env_steps: int | None = None, metric: str = SCORE, variant=None,
                   panel=None) -> Table:
    """Table 1 of "finetuning from offline RL": per run the offline score (``finetune/offline_score``
    if logged, else the last ``metric`` at or before ``phase_start/finetune``), the online score
    (the first evaluation at or after the update where ``finetune/env_steps`` reaches
    ``env_steps``; the final evaluation when ``env_steps`` is None) and δ = online - offline; then
    mean ± std over seeds."""
    grouping = group_runs(rs, variant, panel)
    history = rs.history(metric).sort_values("step")
    evals = {r: h for r, h in history.groupby("run_id")}
    env = {}
    if env_steps is not None:
        env_hist = rs.history(FINETUNE_ENV_STEPS).sort_values("step")
        env = {r: h for r, h in env_hist.groupby("run_id")}
    warnings = list(grouping.warnings)
    per_run = []
    for _, run in grouping.runs.iterrows():
        name, run_id = run["run_name"], run["run_id"]
        start = run.get("phase_start/finetune", np.nan)
        offline = next((run[k] for k in OFFLINE_SCORE_KEYS
                        if k in run and not pd.isna(run[k])), np.nan)
        h = evals.get(run_id)
        if pd.isna(start) and pd.isna(offline):
            warnings.append(f"run {name}: no fine-tuning phase (no phase_start/finetune); left out")
            continue
        if pd.isna(offline) and h is not None:
            before = h[h["step"] <= start]
            offline = before["value"].iloc[-1] if len(before) else np.nan
            if not len(before):
                warnings.append(f"run {name}: no evaluation at or before the fine-tuning start")
        online = np.nan
        if h is not None and len(h):
            if env_steps is None:
                online = h["value"].iloc[-1]
            elif run_id not in env:
                warnings.append(f"run {name}: no {FINETUNE_ENV_STEPS} history; online score unknown")
            else:
                e = env[run_id]
                reached = e[e["value"] >= env_steps]
                if reached.empty:
                    warnings.append(f"run {name}: reached only {int(e['value'].max()):,} of "
                                    f"{env_steps:,} environment steps; online score unknown")
                else:
                    after = h[h["step"] >= reached["step"].iloc[0]]
                    if after.empty:
                        warnings.append(f"run {name}: no evaluation after {env_steps:,} env steps")
                    else:
                        online = after["value"].iloc[0]
        per_run.append({"run_id": run_id, "panel": run["panel"], "variant": run["variant"],
                        "offline": offline, "online": online, "delta": online - offline})
    per_run = pd.DataFrame(per_run, columns=["run_id", "panel", "variant", "offline", "online", "delta"])
    rows = []
    for (panel_label, variant_label), group in per_run.groupby(["panel", "variant"], sort=False):
        off_m, off_s, n_off = mean_std(group["offline"])
        on_m, on_s, n_on = mean_std(group["online"])
        delta, _, n = mean_std(group["delta"])
        if n and (n < n_off or n < n_on):
            warnings.append(f"[{panel_label}] {variant_label}: δ uses the {n} run(s) that have both "
                            f"scores (offline: {n_off}, online: {n_on})")
        rows.append({"panel": panel_label, "variant": variant_label, "offline_mean": off_m,
                     "offline_std": off_s, "online_mean": on_m, "online_std": on_s,
                     "delta": delta, "seeds": n, "seeds_offline": n_off, "seeds_online": n_on})
    frame = pd.DataFrame(rows, columns=["panel", "variant", "offline_mean", "offline_std",
                                        "online_mean", "online_std", "delta", "seeds",
                                        "seeds_offline", "seeds_online"])
    when = "the final evaluation" if env_steps is None else f"{env_steps:,} environment steps"
    display = pd.DataFrame({
        "panel": frame["panel"], "variant": frame["variant"],
        "offline": [pm(m, s, 2) for m, s in zip(frame["offline_mean"], frame["offline_std"])],
        f"online ({when})": [pm(m, s, 2) for m, s in zip(frame["online_mean"], frame["online_std"])],
        "δ": [f"{d:.2f}" if not np.isnan(d) else "—" for d in frame["delta"]],
        "seeds": frame["seeds"]})
    notes = ["Offline: finetune/offline_score when logged, else the last evaluation at or before "
             "phase_start/finetune.",
             f"Online: the evaluation at {when} of fine-tuning; δ = online - offline, the mean over the "
             f"runs that have both (= mean online - mean offline when every run has both); ± is "
             f"the std over seeds (ddof=1)."]
    return Table(f"Fine-tuning: offline score, online score after {when}, δ", frame, display,
                 notes, warnings)
