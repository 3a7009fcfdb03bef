"""Write outputs to a folder and log them as artifacts on the sweep's parent run; ``paper`` makes
the whole set (curves, efficiency, window, fine-tuning when present, and the aggregate statistics
of Agarwal et al. 2021) in one call; ``statistics`` makes the latter alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis.aggregate import aggregate
from analysis.figures import plot_learning_curves
from analysis.load import SCORE, AnalysisError, RunSet, make_client
from analysis import score_statistics as st
from analysis.tables import (FINETUNE_ENV_STEPS, efficiency_table, finetune_table, to_markdown,
                             window_table)

ARTIFACT_PATH = "analysis"


def log_artifacts(rs_or_uri: RunSet | str | None, run_id: str, paths: list[Path],
                  artifact_path: str = ARTIFACT_PATH) -> list[str]:
    """Log files as artifacts of ``run_id`` under ``artifact_path``; returns their artifact paths."""
    uri = rs_or_uri.tracking_uri if isinstance(rs_or_uri, RunSet) else rs_or_uri
    client = make_client(uri)
    logged = []
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)
        logged.append(f"{artifact_path}/{Path(path).name}")
    return logged


STATISTICS = ("aggregate", "profiles", "improvement")


@dataclass
class Outputs:
    files: list[Path] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class StatisticsOutputs(Outputs):
    matrix: "st.ScoreMatrix | None" = None


def statistics(rs: RunSet, out: str | Path, which: tuple[str, ...] | list[str] = STATISTICS, *,
               metric: str = SCORE, variant=None, task=None, final: str = "last",
               window: tuple | None = None, level: float = 0.95, n_resamples: int | None = None,
               seed: int = 0, target: float = st.OPTIMALITY_TARGET, x: str | None = None,
               y: str | None = None, baseline: str | None = None, taus: int = 101,
               title: str | None = None) -> StatisticsOutputs:
    """The aggregate statistics of Agarwal et al. (2021) in ``out``: ``aggregate.{csv,md,png}``
    (IQM, median, mean, optimality gap with CIs), ``profiles.{csv,md,png}`` (performance profiles
    with bands), ``improvement.{csv,md,png}`` (P(X > Y) with CIs; skipped with a warning when
    there is one variant only and no pair was asked for)."""
    out = Path(out)
    res = StatisticsOutputs()
    m = st.score_matrix(rs, metric, variant, task, final=final, window=window)
    res.matrix = m
    res.warnings += m.warnings
    if "aggregate" in which:
        table = st.aggregate_table(m, level=level, seed=seed, target=target,
                                   n_resamples=n_resamples or st.AGGREGATE_RESAMPLES)
        _keep(res, out, "aggregate", table, st.plot_aggregate, level, title)
    if "profiles" in which:
        table = st.profiles_table(m, st.default_taus(m, taus), level=level, seed=seed,
                                  n_resamples=n_resamples or st.PROFILE_RESAMPLES)
        _keep(res, out, "profiles", table, st.plot_profiles, level, title)
    if "improvement" in which:
        if len(m.variants) < 2 and x is None and y is None and list(which) != ["improvement"]:
            res.warnings.append(f"probability of improvement: one variant only ({m.variants}); "
                                f"nothing to compare")
        else:
            try:
                pairs, how = st.comparison_pairs(m, x, y, baseline)
            except AnalysisError as exc:
                if list(which) == ["improvement"]:
                    raise
                res.warnings.append(f"probability of improvement: {exc}")
                pairs = []
            if pairs:
                table = st.improvement_table(m, pairs, level=level, seed=seed, how=how,
                                             n_resamples=n_resamples or st.IMPROVEMENT_RESAMPLES)
                _keep(res, out, "improvement", table, st.plot_improvement, level, title)
    for table in res.tables.values():
        res.warnings += table.warnings
    res.warnings = list(dict.fromkeys(res.warnings))
    return res


def _keep(res: Outputs, out: Path, name: str, table, plot, level: float, title) -> None:
    """Write ``name``.{csv,md} and its figure ``name``.png; record them in ``res``."""
    res.figures[name] = plot(table, level=level, title=title, out=out / f"{name}.png")
    res.tables[name] = table
    res.files += [*table.write(out, name), out / f"{name}.png"]


@dataclass
class PaperOutputs(Outputs):
    logged_to: str | None = None


def paper(rs: RunSet, out: str | Path, *, metric: str = SCORE, variant=None, panel=None,
          ci: str = "t", level: float = 0.95, band: str = "ci", title: str | None = None,
          min_seeds: int | None = None,
          fraction: float = 0.9, baseline: str | None = None, final_last: int = 1,
          window: tuple | None = None,
          env_steps: int | None = None, statistics_options: dict | None = None,
          log_to: str | None = None, log: bool = True,
          artifact_path: str = ARTIFACT_PATH) -> PaperOutputs:
    """Fig. 2-style curves (``curves.png``), the efficiency table (``efficiency.{csv,md}``), the
    window table (``window.{csv,md}``), the fine-tuning table when any run has a fine-tuning phase
    (``finetune.{csv,md}``), the aggregate statistics of Agarwal et al. 2021 (``aggregate``,
    ``profiles``, ``improvement``: see ``statistics``, whose options ``statistics_options`` passes on) and
    ``summary.md`` (all tables, the interval method, warnings) in ``out``; logged as artifacts on ``log_to`` (default: the sweep's parent run) unless ``log`` is
    False."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = PaperOutputs()
    agg = aggregate(rs, metric, variant, panel, ci=ci, level=level, min_seeds=min_seeds)
    fig = plot_learning_curves(rs, metric, variant, panel, agg=agg, band=band, title=title,
                               out=out / "curves.png")
    result.figures["curves"] = fig
    result.files.append(fig.path)
    low, high = window if window else (None, None)
    tables = {"efficiency": efficiency_table(rs, metric, variant, panel, baseline=baseline,
                                             fraction=fraction, final_last=final_last,
                                             min_seeds=min_seeds),
              "window": window_table(rs, low, high, metric, variant, panel)}
    if "phase_start/finetune" in rs.runs or any(k in rs.runs for k in ("finetune/offline_score",
                                                                       "offline_score")):
        if env_steps is not None:
            rs.add_metrics([FINETUNE_ENV_STEPS])
        tables["finetune"] = finetune_table(rs, env_steps, metric, variant, panel)
    for name, table in tables.items():
        result.files += table.write(out, name)
    options = {"window": window, "variant": variant, "metric": metric, "level": level,
               "baseline": baseline, **(statistics_options or {})}
    stats_out = statistics(rs, out, STATISTICS, **options)
    result.files += stats_out.files
    result.figures.update(stats_out.figures)
    tables.update(stats_out.tables)
    result.tables = tables
    warnings = list(dict.fromkeys(rs.warnings + agg.warnings + stats_out.warnings +
                                  [w for t in tables.values() for w in t.warnings]))
    result.warnings = warnings
    summary = ["# Analysis", "",
               f"Runs: {len(rs.runs)} ({', '.join(sorted(map(str, rs.runs['run_name'])))})"
               if len(rs.runs) <= 30 else f"Runs: {len(rs.runs)}",
               f"Parent run: {rs.parent_run_id or '—'}; store: {rs.tracking_uri}",
               f"Panels: {', '.join(agg.grouping.panel) or '—'}; variants: "
               f"{', '.join(agg.grouping.variant) or '—'}", "",
               f"![learning curves](curves.png)", "",
               f"Curves: seed mean of {metric}, shaded {agg.method}.", ""]
    summary += [f"![{name}]({name}.png)" for name in STATISTICS if name in stats_out.figures]
    summary.append("")
    for table in tables.values():
        summary.append(table.markdown())
    summary += ["## Warnings", ""] + ([f"- {w}" for w in warnings] or ["none"])
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    result.files.append(out / "summary.md")
    target = log_to or rs.parent_run_id
    if log and target:
        log_artifacts(rs, target, result.files, artifact_path)
        result.logged_to = target
    return result


__all__ = ["paper", "log_artifacts", "PaperOutputs", "to_markdown"]
