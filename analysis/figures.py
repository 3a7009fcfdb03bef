"""Learning-curve figures (the paper's Fig. 2 and its ablation figures) as matplotlib objects.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas; no pyplot state, no display
needed) and returned with their axes and the aggregated data, so tests and notebooks can inspect
them; ``out`` also saves a PNG.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from analysis.aggregate import (PRETTY, Aggregated, aggregate, default_panel, default_variant,
                                resolve_column)
from analysis.load import SCORE, RunSet
from offline_rl.metric_names import RETURN

XLABEL = "gradient updates (pre-training included)"
YLABELS = {SCORE: "normalised score", RETURN: "return"}
PRETRAIN_END = "pre-training ends"


@dataclass
class FigureResult:
    fig: Figure
    axes: dict[str, object]            # panel label -> Axes
    data: Aggregated
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)


def _kilo(x, _pos=None) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:g}M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def _layout(panels: list[str], panel_cols: list[str], runs: pd.DataFrame
            ) -> tuple[int, int, dict[str, tuple[int, int]]]:
    if len(panel_cols) == 2:  # e.g. algo x dataset: rows = algorithms, columns = datasets (Fig. 2)
        first = list(dict.fromkeys(runs[panel_cols[0]].astype(str)))
        second = list(dict.fromkeys(runs[panel_cols[1]].astype(str)))
        where = {}
        for p in panels:
            a, b = p.split(" / ", 1)
            where[p] = (first.index(a), second.index(b))
        return len(first), len(second), where
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    return nrows, ncols, {p: divmod(i, ncols) for i, p in enumerate(panels)}


def plot_learning_curves(rs: RunSet, metric: str = SCORE, variant=None, panel=None, *,
                         ci: str = "t", level: float = 0.95, band: str = "ci",
                         min_seeds: int | None = None, mark_pretrain: bool = True,
                         title: str | None = None, out: str | Path | None = None,
                         agg: Aggregated | None = None) -> FigureResult:
    """Fig. 2: ``metric`` against gradient updates (pre-training included); one panel per
    ``panel`` value, one line per ``variant`` (seed mean), shaded ``band`` ("ci": the ``ci``
    interval at ``level``; "std": mean ± std), the end of pre-training marked by a dotted
    vertical line in the variant's colour (mean over its seeds of ``phase_start/offline_rl``)."""
    if band not in ("ci", "std"):
        raise ValueError(f"band must be 'ci' or 'std', not {band!r}")
    agg = agg or aggregate(rs, metric, variant, panel, ci=ci, level=level, min_seeds=min_seeds)
    runs, curves = agg.grouping.runs, agg.curves
    panels = list(dict.fromkeys(runs["panel"]))
    variants = list(dict.fromkeys(runs["variant"]))
    nrows, ncols, where = _layout(panels, agg.grouping.panel, runs)
    width = max(5.0, 4.2 * ncols)
    fig = Figure(figsize=(width, 3.3 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    colours = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    axes: dict[str, object] = {}
    used = set()
    for p in panels:
        ax = grid[where[p]]
        used.add(where[p])
        axes[p] = ax
        marked = False
        for v in variants:
            c = curves[(curves["panel"] == p) & (curves["variant"] == v)]
            if c.empty:
                continue
            x, y = c["step"].to_numpy(), c["mean"].to_numpy()
            ax.plot(x, y, color=colours[v], label=v, lw=1.6)
            low, high = ((c["ci_low"], c["ci_high"]) if band == "ci"
                         else (c["mean"] - c["std"], c["mean"] + c["std"]))
            ok = np.isfinite(low.to_numpy()) & np.isfinite(high.to_numpy())
            if ok.any():
                ax.fill_between(x, low.to_numpy(), high.to_numpy(), where=ok, color=colours[v],
                                alpha=0.2, lw=0)
            if mark_pretrain and "pretrain_steps" in runs:
                end = runs.loc[(runs["panel"] == p) & (runs["variant"] == v), "pretrain_steps"].mean()
                if np.isfinite(end) and end > 0:
                    line = ax.axvline(end, color=colours[v], ls=":", lw=1.2,
                                      label=None if marked else PRETRAIN_END)
                    line.set_gid(f"{PRETRAIN_END}: {v}")
                    marked = True
        ax.set_title(p, fontsize=10)
        ax.set_xlabel(XLABEL)
        ax.set_ylabel(YLABELS.get(metric, metric))
        ax.xaxis.set_major_formatter(FuncFormatter(_kilo))
        ax.grid(alpha=0.3)
    for r in range(nrows):
        for col in range(ncols):
            if (r, col) not in used:
                grid[r, col].set_visible(False)
    handles, names = [], []
    for ax in axes.values():
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    if PRETRAIN_END in names:  # the marker's entry last, after every variant
        i = names.index(PRETRAIN_END)
        handles.append(handles.pop(i))
        names.append(names.pop(i))
    # one legend for the figure, below the panels: never over the data, one colour per variant
    # in every panel; as many entries a row as fit the figure's width (8 pt text: about 13
    # characters an inch, plus the line sample), so that long labels are not cut off
    fits = int(fig.get_size_inches()[0] * 13 // (max(map(len, names), default=1) + 5))
    fig.legend(handles, names, fontsize=8, loc="outside lower center",
               ncols=max(1, min(len(names), 4, fits)), frameon=False)
    shade = agg.method_short if band == "ci" else "± std over seeds"
    n_seeds = sorted(runs.groupby(["panel", "variant"])["run_id"].nunique().unique().tolist())
    label = YLABELS.get(metric, metric)
    if n_seeds == [1]:  # one run per line: no mean, no interval to shade
        what = f"{label}: one run per line (no seeds to average, no interval)"
    else:
        seeds = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}-{n_seeds[-1]}"
        what = f"{label}: mean of {seeds} seeds, shaded {shade}"
        if n_seeds[0] == 1:
            what += " (lines with one seed have no band)"
    what = textwrap.fill(what, width=int(width * 12))
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=9)
    path = None
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
    return FigureResult(fig, axes, agg, path, list(agg.warnings))


def plot_ablation(rs: RunSet, axis: str, metric: str = SCORE, panel=None, **kwargs) -> FigureResult:
    """The learning curves with ``axis`` (``lambda``, ``layernorm``, ``pretrain``, ``qt_max``, or
    any run column) as the line variable; other differing choices stay in the label."""
    column = resolve_column(rs.runs, axis)
    panel_cols = default_panel(rs.runs) if panel is None else panel
    panel_cols = [panel_cols] if isinstance(panel_cols, str) else list(panel_cols)
    runs = rs.runs.astype({c: str for c in rs.runs.columns if not c.startswith("_")}, errors="ignore")
    others = [c for c in default_variant(rs.runs, panel_cols, rs.param_columns or None)
              if c != column and not _same_partition(runs, column, c)]
    name = PRETTY.get(column, column)
    title = kwargs.pop("title", None) or f"Ablation: {name}" + (f" ({axis})" if axis != name else "")
    return plot_learning_curves(rs, metric, [column, *others], panel_cols, title=title, **kwargs)


def _same_partition(runs: pd.DataFrame, a: str, b: str) -> bool:
    """True when columns a and b split the runs the same way (b adds nothing to a's label)."""
    return bool((runs.groupby(a)[b].nunique() <= 1).all() and
                (runs.groupby(b)[a].nunique() <= 1).all())
