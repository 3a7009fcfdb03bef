"""The reproduction page: does the paper's efficiency claim hold on this platform?

``results_page`` turns a sweep of runs with and without pre-training (``conf/experiment/
efficiency.yaml``; ``paper_check.yaml`` at 100k) into one Markdown page (default
``docs/results.md``) with its figure beside it:
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
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.aggregate import aggregate
from analysis.efficiency import compute_seconds, dataset_result
from analysis.efficiency import table as efficiency_table
from analysis.figures import plot_learning_curves
from analysis.load import SCORE, RunSet
from analysis.score_statistics import aggregate_table, comparison_pairs, improvement_table, score_matrix
from analysis.tables import match_baseline, norm_value, to_markdown
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
    cap it ran to, and the updates spent pre-training; with its dataset (``panel``) first when the
    runs span several, in panel order, so that two datasets' "ac s0" are told apart."""
    stop_columns = [c for c in runs.columns if str(c).endswith(".converged_at")]
    several = "panel" in runs and runs["panel"].nunique() > 1
    rows = []
    for _, run in runs.iterrows():
        spent = run.get("pretrain_steps")
        if spent is None or not (isinstance(spent, (int, float)) and spent > 0):
            continue
        stops = [f"{c.split('.')[0]} at {int(run[c]):,}" for c in stop_columns
                 if pd.notna(run.get(c))]
        rows.append({**({"dataset": run["panel"]} if several else {}), "run": run["run_name"],
                     "pre-training updates": f"{int(spent):,}",
                     "stopped by the convergence rule": "; ".join(stops) or
                     "no (ran to pretrain.steps)"})
    table = pd.DataFrame(rows)
    if several and not table.empty:
        order = {panel: i for i, panel in enumerate(dict.fromkeys(runs["panel"]))}
        table = table.sort_values("dataset", key=lambda c: c.map(order), kind="stable")
    return table.reset_index(drop=True)


def _wall_time(runs: pd.DataFrame, history: pd.DataFrame) -> str:
    """The runs' span (first start to last end) and the sum of their compute time (pauses
    capped away, as in ``analysis.efficiency.compute_seconds``)."""
    start, end = pd.to_numeric(runs["start_time"]).min(), pd.to_numeric(runs["end_time"]).max()
    if pd.isna(start) or pd.isna(end):
        return "unknown"
    compute = _compute_hours(runs, history)
    each = ((pd.to_numeric(runs["end_time"]) - pd.to_numeric(runs["start_time"])) / 6e4).dropna()
    return (f"{(end - start) / 3.6e6:.1f} h from the first run's start to the last run's end "
            f"(stops, pauses and restarts included); {compute:.1f} h of run compute time "
            f"summed over the {len(runs)} runs (pauses capped away), {each.min():.0f}-{each.max():.0f} "
            f"min per run by the clock")


def _compute_hours(runs: pd.DataFrame, history: pd.DataFrame) -> float:
    compute = 0.0
    for run_id, h in history[history["run_id"].isin(runs["run_id"])].groupby("run_id"):
        begun = float(pd.to_numeric(runs.loc[runs["run_id"] == run_id, "start_time"]).iloc[0])
        seconds = compute_seconds(h, begun)
        compute += float(seconds.iloc[-1]) if len(seconds) else 0.0
    return compute / 3600


def wall_times(runs: pd.DataFrame, history: pd.DataFrame, panels: pd.DataFrame) -> list[str]:
    """The page's wall-time lines: one for the runs, or one per dataset (``panels``: run_id ->
    panel) when they span several (datasets run one after another, with data generation between
    them, make one first-to-last span meaningless), then their compute time in all."""
    panel_of = dict(zip(panels["run_id"], panels["panel"]))
    labelled = runs.assign(panel=runs["run_id"].map(panel_of))
    if labelled["panel"].nunique() < 2:
        return [f"- Wall time: {_wall_time(runs, history)}"]
    lines = [f"- Wall time, {panel}: {_wall_time(rows, history)}"
             for panel, rows in labelled.groupby("panel", sort=False)]
    return lines + [f"- Compute time in all: {_compute_hours(runs, history):.1f} h over "
                    f"{len(runs)} runs"]


def _sweeps(runs: pd.DataFrame) -> str:
    """" of the sweep 'a'", or of the sweeps 'a', 'b' (runs of several put side by side)."""
    names = list(dict.fromkeys(runs["sweep"].dropna().astype(str))) if "sweep" in runs else []
    return (f" of the sweep{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)}"
            if names else "")


def _link(data: str | Path, out: Path) -> str:
    path = Path(data)
    return f"[{path.name}]({path.relative_to(out) if path.is_relative_to(out) else path})"


def _digests(runs: pd.DataFrame):
    """Per panel: (panel, runs per digest in digest order, runs that record none); nothing for
    runs from before the ``dataset_digest`` tag."""
    if "dataset_digest" not in runs:
        return
    for panel, rows in runs.groupby("panel", sort=False):
        counts = rows["dataset_digest"].dropna().astype(str).value_counts().sort_index()
        yield panel, counts, len(rows) - int(counts.sum())


def mixed_data(runs: pd.DataFrame) -> list[str]:
    """One warning per panel whose runs were trained on different data files (the runs'
    ``dataset_digest`` tag; runs from before the tag have none): their seeds do not measure one
    dataset. A generated dataset made again by other code can differ (docs/datasets.md)."""
    return [f"{panel}: its runs were trained on different data (digests {', '.join(counts.index)}"
            + (f"; {unknown} runs record none" if unknown else "")
            + "): their seeds do not all measure one dataset"
            for panel, counts, unknown in _digests(runs) if len(counts) > 1 or (len(counts) and unknown)]


def data_files(runs: pd.DataFrame) -> list[str]:
    """Per panel, the data file(s) its runs trained on (their ``dataset_digest`` tags): what a
    regenerated dataset must match to be the same data (docs/datasets.md)."""
    return [f"{panel}: digest {', '.join(f'{digest} ({_count_runs(n)})' for digest, n in counts.items())}"
            + (f"; {_count_runs(unknown)} record none" if unknown else "")
            for panel, counts, unknown in _digests(runs) if len(counts)]


def _count_runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def results_page(rs: RunSet, out: str | Path = "docs", *, name: str = "results",
                 metric: str = SCORE, baseline: str | None = None, command: str | None = None,
                 data: str | Sequence[str] | None = None, variant: Sequence[str] | None = None,
                 panel: Sequence[str] | None = None, min_seeds: int | None = None,
                 title: str = "Does pre-training make offline RL more efficient here?") -> ResultsPage:
    """The page (``<out>/<name>.md`` and ``<name>.png``). Deterministic for the same runs (no
    date of generation: the date the runs ended), so that it can be regenerated from the
    committed data and compared (tests/test_analysis.py). ``variant`` / ``panel`` / ``min_seeds``:
    as for ``analysis.aggregate`` (defaults: the config choices that differ / the dataset / all
    runs of a line); the command the page quotes to write it again carries them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = [data] if isinstance(data, (str, Path)) else list(data or [])
    agg = aggregate(rs, metric, variant, panel, ci="t", level=0.95, min_seeds=min_seeds)
    figure = plot_learning_curves(rs, metric, agg=agg, band="ci", out=out / f"{name}.png")
    grouping = "".join(f" --{flag} {shlex.quote(value)}" for flag, value in (
        ("variant", ",".join(variant or [])), ("panel", ",".join(panel or [])),
        ("min-seeds", str(min_seeds or ""))) if value)
    runs = rs.runs
    history = rs.history(metric)
    constraints, how = match_baseline(agg.grouping.runs, agg.grouping.variant, baseline)
    base_rows = agg.grouping.runs
    for column, value in constraints.items():
        base_rows = base_rows[base_rows[column].astype(str).map(norm_value) == norm_value(value)]
    base_variant = str(base_rows["variant"].iloc[0]) if len(base_rows) else None
    results = [dataset_result(agg, history, runs, panel, base_variant)
               for panel in dict.fromkeys(agg.grouping.runs["panel"])] if base_variant else []
    ends = pd.to_numeric(runs["end_time"], errors="coerce")
    running = int(ends.isna().sum())  # --all-statuses: runs still going, their evaluations so far
    ended = (f", the last of which ended {pd.to_datetime(ends.max(), unit='ms'):%Y-%m-%d %H:%M} UTC"
             if ends.notna().any() else "") + (
        f" ({running} of them not ended: their evaluations up to the export)" if running else "")
    lines = [f"# {title}", "",
             f"Written by `python -m analysis results` from {len(runs)} runs"
             + _sweeps(runs)
             + (f" (MLflow parent run {rs.parent_run_id})" if rs.parent_run_id else "")
             + f"{ended}."
             + (f" Their evaluations: {', '.join(_link(f, out) for f in data)}; "
                f"`python -m analysis results --from-csv {' '.join(map(str, data))} --out {out}"
                + (f" --name {name}" if name != "results" else "") + grouping
                + (f" --command {shlex.quote(command)}" if command else "") + "` writes this page again "
                f"from them, without the MLflow store." if data else ""), ""]
    if command:
        lines += ["Reproduce the runs:", "", "```bash", command, "```", ""]
    lines += ["## Verdict", "", *(f"- {r.verdict()}" for r in results), "",
              "The paper (§6.2): with pre-training, TD3+BC \"reaches asymptotic performance in less "
              "than 1/2 of the training steps and computation time\" on Hopper and Walker2d medium, "
              "and its final performance is more stable.", "",
              *([] if "algo" in runs and runs["algo"].astype(str).str.startswith("edac").any() else
                [EDAC_NOTE, ""]),
              f"![learning curves]({figure.path.name})", "",
              f"Seed mean of `{metric}` against gradient updates, pre-training included; shaded: "
              f"{agg.method}.", "", "## Definitions", "",
              *[f"- {line.strip()}" for line in _definitions()], "", f"Baseline: {how}.", ""]
    for result in results:
        lines += [f"## {result.panel}", "", *efficiency_table(result), ""]
    statistics = _statistics(rs, metric, baseline, variant)
    lines += ["## Final scores: IQM and probability of improvement", "", *statistics, ""]
    stops = convergence(agg.grouping.runs)
    lines += ["## Pre-training length", "",
              "The paper pre-trains until the supervised losses converge, \"10-50k updates\" "
              "(§6.1). The convergence rule here: the mean loss over the last `pretrain.window` "
              "updates improved by less than `pretrain.tolerance` on the window before.", "",
              to_markdown(stops) if not stops.empty else "no run pre-trained", "",
              "## Where and how long", ""]
    if "machine" in runs:
        lines += [f"- Machine: {runs['machine'].iloc[0]}"]
    if "precision_used" in runs or "precision" in runs:
        column = "precision_used" if "precision_used" in runs else "precision"
        lines += [f"- Precision: {', '.join(sorted(map(str, runs[column].dropna().unique())))}"]
    lines += [f"- Data: {line}" for line in data_files(agg.grouping.runs)]
    lines += [*wall_times(runs, history, agg.grouping.runs), ""]
    warnings = list(dict.fromkeys(rs.warnings + agg.warnings + mixed_data(agg.grouping.runs)))
    if warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return ResultsPage(path=path, figure=figure.path,
                       verdicts={r.panel: r.verdict() for r in results}, table=results,
                       warnings=warnings)


# the paper's claim covers EDAC too; why this page has no EDAC runs
EDAC_NOTE = ("The paper makes the claim for EDAC as well. Its reference budgets (1M-12M updates with "
             "N = 10-50 critics, conf/reference/) are out of reach of a 2-core CPU: EDAC with N = 10 "
             "does 20-33 updates/s here (docs/bench.md), N = 50 about a fifth of that, so Hopper's 3M "
             "updates would take about a week per run. They run on a GPU (`device=cuda`; "
             "scripts/device_check.sh measures one).")


def _definitions() -> list[str]:
    """The bullet points of analysis/efficiency.py's docstring, one string each."""
    from analysis import efficiency

    text = efficiency.__doc__.split("Definitions (stated on the page too):", 1)[1]
    items = [" ".join(part.split()).replace("``", "`") for part in text.split("\n- ") if part.strip()]
    return items


def _statistics(rs: RunSet, metric: str, baseline: str | None, variant=None) -> list[str]:
    """IQM per variant over all datasets, and per dataset P(variant > baseline)."""
    m = score_matrix(rs, metric, variant)
    lines = [aggregate_table(m).markdown()]
    pairs, how = comparison_pairs(m, baseline=baseline)
    lines.append(improvement_table(m, pairs, how=how).markdown())
    for task in m.tasks:
        single = score_matrix(rs.select(dataset_name=task), metric, variant)
        task_pairs, _ = comparison_pairs(single, baseline=baseline)
        table = improvement_table(single, task_pairs, how=f"{task} only")
        table.title = f"Probability of improvement on {task}"
        lines.append(table.markdown())
    return lines
