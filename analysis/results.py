"""The reproduction page: does the paper's efficiency claim hold on this platform?

``results_page`` turns a sweep of runs with and without pre-training (``conf/experiment/
paper_check.yaml``) into one Markdown page (default ``docs/results.md``) with its figure beside it:
Fig. 2-style learning curves with 95% intervals, the efficiency table (updates, pre-training
included, to reach 90% of the no-pre-training runs' final score, and the ratio: the paper claims
< 1/2 on Hopper and Walker2d medium), where the convergence rule stopped pre-training (the paper:
10-50k updates), the machine and the sweep's wall time, and one sentence per dataset saying whether
the claim holds here.

    python -m analysis results --parent-run-id ID [--out docs]
"""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.aggregate import aggregate
from analysis.figures import plot_learning_curves
from analysis.load import SCORE, RunSet
from analysis.tables import efficiency_table, to_markdown
from offline_rl.machine import cpu_model


@dataclass
class ResultsPage:
    path: Path
    figure: Path
    verdicts: dict[str, str] = field(default_factory=dict)
    table: object = None
    warnings: list[str] = field(default_factory=list)


def machine() -> str:
    """CPU model, cores, Python and torch versions: what the wall times were measured on."""
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def convergence(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run with pre-training: the phase's stopping step (``<phase>.converged_at`` tag) or the
    cap it ran to, and the updates spent pre-training."""
    stop_columns = [c for c in runs.columns if str(c).endswith(".converged_at")]
    rows = []
    for _, run in runs.iterrows():
        spent = run.get("pretrain_steps")
        if spent is None or not (isinstance(spent, (int, float)) and spent > 0):
            continue
        stops = [f"{c.split('.')[0]} at {int(run[c]):,}" for c in stop_columns
                 if pd.notna(run.get(c))]
        rows.append({"run": run["run_name"], "pre-training updates": f"{int(spent):,}",
                     "stopped by the convergence rule": "; ".join(stops) or
                     "no (ran to pretrain.steps)"})
    return pd.DataFrame(rows)


def _wall_time(runs: pd.DataFrame) -> str:
    start, end = runs["start_time"].min(), runs["end_time"].max()
    if pd.isna(start) or pd.isna(end):
        return "unknown"
    hours = (float(end) - float(start)) / 3.6e6
    each = ((runs["end_time"] - runs["start_time"]) / 6e4).dropna()
    return (f"{hours:.2f} h for the whole sweep (runs {each.min():.0f}-{each.max():.0f} min each, "
            f"{len(runs)} runs)")


def verdicts(table, claim: float = 0.5) -> dict[str, str]:
    """One sentence per panel on the paper's '< 1/2 of the training steps' claim."""
    frame = table.frame
    out = {}
    for panel, rows in frame.groupby("panel", sort=False):
        base = rows[rows["baseline"]]
        others = rows[~rows["baseline"]]
        if base.empty or others.empty:
            continue
        base_steps = base.iloc[0]["updates_to_threshold"]
        parts = []
        for _, row in others.iterrows():
            ratio = row["ratio_to_baseline"]
            if np.isnan(row["updates_to_threshold"]):
                parts.append(f"{row['variant']} never reached {row['threshold']:.1f}")
            elif ratio < claim:
                parts.append(f"{row['variant']} reached {row['threshold']:.1f} in "
                             f"{int(row['updates_to_threshold']):,} updates against "
                             f"{int(base_steps):,} without pre-training (ratio {ratio:.2f} < {claim:g}): "
                             f"the claim holds")
            else:
                parts.append(f"{row['variant']} needed {int(row['updates_to_threshold']):,} "
                             f"updates against {int(base_steps):,} without pre-training (ratio "
                             f"{ratio:.2f} ≥ {claim:g}): the claim does not hold")
        out[str(panel)] = f"**{panel}**: " + "; ".join(parts) + "."
    return out


def results_page(rs: RunSet, out: str | Path = "docs", *, name: str = "results",
                 metric: str = SCORE, fraction: float = 0.9, baseline: str | None = None,
                 final_last: int = 1, command: str | None = None,
                 title: str = "Does pre-training make offline RL more efficient here?") -> ResultsPage:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(rs, metric, ci="t", level=0.95)
    figure = plot_learning_curves(rs, metric, agg=agg, band="ci", out=out / f"{name}.png")
    table = efficiency_table(rs, metric, baseline=baseline, fraction=fraction,
                             final_last=final_last)
    said = verdicts(table)
    runs = rs.runs
    lines = [f"# {title}", "",
             f"Generated {datetime.date.today().isoformat()} by `python -m analysis results` "
             f"from {len(runs)} MLflow runs (parent run {rs.parent_run_id or '—'}).", ""]
    if command:
        lines += ["Reproduce:", "", "```bash", command, "```", ""]
    lines += ["## Verdict", "", *(f"- {v}" for v in said.values() or ["no comparison possible"]),
              "", "The paper (§6.2): with pre-training, TD3+BC and EDAC \"reach asymptotic "
              "performance in less than 1/2 of the training steps\" on Hopper and Walker2d medium.",
              "", f"![learning curves]({figure.path.name})", "",
              f"Seed mean of `{metric}` vs gradient updates, pre-training included; shaded: "
              f"{agg.method}.", "", table.markdown(), "## Pre-training length", "",
              "The paper pre-trains until the supervised losses converge, \"10-50k updates\" "
              "(§6.1). The convergence rule here: the mean loss over the last `pretrain.window` "
              "updates improved by less than `pretrain.tolerance` on the window before.", ""]
    stops = convergence(runs)
    lines += [to_markdown(stops) if not stops.empty else "no run pre-trained", "",
              "## Where and how long", "", f"- Machine: {machine()}",
              f"- Wall time: {_wall_time(runs)}", ""]
    warnings = list(dict.fromkeys(rs.warnings + agg.warnings + table.warnings))
    if warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return ResultsPage(path=path, figure=figure.path, verdicts=said, table=table,
                       warnings=warnings)
