"""Algorithms side by side from committed results files: ``python -m analysis compare``.

Each ``--csv FILE[:COLUMN=VALUE,...]`` is a file written by ``analysis results --export`` (or
``compare --export``), narrowed to the runs whose columns have those values; the runs of all files
together make one page, ``<out>/<name>.md`` with its figure: the learning curves (one line per
algorithm, 95% Student-t band over seeds), and per algorithm the seeds, the final score (each run's
last evaluation), the mean over the last 10% of evaluations (analysis/efficiency.py's asymptote),
their means with 95% t intervals, and the IQM of the final scores with P(algorithm > the first one)
(Agarwal et al. 2021, stratified bootstrap, analysis/score_statistics.py). Deterministic for the
same files, so a test regenerates the committed page from its committed data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.aggregate import interval
from analysis.efficiency import tail_mean
from analysis.figures import plot_learning_curves
from analysis.load import SCORE, AnalysisError, RunSet, from_csv
from analysis.score_statistics import improvement_probability, iqm, stratified_bootstrap


def read(spec: str) -> RunSet:
    """``FILE`` or ``FILE:col=value,col=value``."""
    path, _, selection = spec.partition(":")
    rs = from_csv(path)
    equals = dict(item.split("=", 1) for item in selection.split(",") if item)
    return rs.select(**equals) if equals else rs


def combine(sets: list[RunSet]) -> RunSet:
    runs = pd.concat([s.runs for s in sets], ignore_index=True)
    metrics = pd.concat([s.metrics for s in sets], ignore_index=True)
    params = sorted({c for s in sets for c in s.param_columns})
    return RunSet(runs, metrics, [w for s in sets for w in s.warnings], None, None, None, params)


def _mean_ci(values: np.ndarray) -> str:
    low, high = interval(values)
    return f"{values.mean():.1f} [{low:.1f}, {high:.1f}]"


def compare(specs: list[str], out: str | Path = "docs", name: str = "compare",
            command: str | None = None, seed: int = 0) -> Path:
    rs = combine([read(s) for s in specs])
    if rs.runs.empty:
        raise AnalysisError("no runs in " + ", ".join(specs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_learning_curves(rs, SCORE, variant=["algo"], panel=["dataset_name"],
                                  out=out / f"{name}.png",
                                  title="Normalised score against gradient updates")
    history = rs.history(SCORE)
    algos = list(dict.fromkeys(rs.runs["algo"]))
    rows, finals = [], {}
    for algo in algos:
        ids = rs.runs.loc[rs.runs["algo"] == algo, "run_id"]
        last, tail, seeds, updates = [], [], [], []
        for run_id in ids:
            h = history[history["run_id"] == run_id].sort_values("step")
            last.append(float(h["value"].iloc[-1]))
            tail.append(tail_mean(h["value"].to_numpy())[0])
            updates.append(int(h["step"].iloc[-1]))
            seeds.append(int(rs.runs.loc[rs.runs["run_id"] == run_id, "seed"].iloc[0]))
        finals[algo] = np.array(last)
        order = np.argsort(seeds)
        rows.append(f"| {algo} | {len(ids)} ({', '.join(str(seeds[i]) for i in order)}) | "
                    f"{max(updates):,} | {', '.join(f'{last[i]:.1f}' for i in order)} | "
                    f"{_mean_ci(np.array(last))} | {_mean_ci(np.array(tail))} |")
    first = algos[0]
    stats = []
    for algo in algos:
        point, low, high = stratified_bootstrap([finals[algo]], iqm, n_resamples=2000, seed=seed)
        line = f"| {algo} | {float(point):.1f} [{float(low):.1f}, {float(high):.1f}] |"
        if algo != first:
            def better(x, y, axis=-1):  # P(a run of x scores above a run of y)
                return improvement_probability([x], [y], axis=axis)

            p, p_low, p_high = stratified_bootstrap([finals[algo], finals[first]], better,
                                                    n_resamples=2000, seed=seed)
            line += f" {float(p):.2f} [{float(p_low):.2f}, {float(p_high):.2f}] |"
        else:
            line += " — |"
        stats.append(line)
    datasets = ", ".join(sorted(set(rs.runs["dataset_name"].astype(str))))
    lines = [f"# {', '.join(algos)} on {datasets}", "",
             f"![learning curves]({name}.png)", "",
             f"Seed mean of `{SCORE}` against gradient updates; shaded: "
             f"{figure.data.method}.", "",
             "| algo | seeds | updates | final score per seed | final: mean [95% CI] | "
             "last 10% of evaluations: mean [95% CI] |", "|---|---|---|---|---|---|", *rows, "",
             f"| algo | IQM of the final scores [95% CI] | P(algo > {first}) [95% CI] |",
             "|---|---|---|", *stats, "",
             "Final score: each run's last evaluation. Intervals over seeds: Student-t for the "
             "means; stratified bootstrap (2,000 resamples, seed "
             f"{seed}) for the IQM and the probability of improvement (Agarwal et al. 2021).", ""]
    if command:
        lines += [f"`python -m analysis {command}` writes this page again from its data.", ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path
