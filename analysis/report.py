"""Write outputs to a folder and log them as artifacts on the sweep's parent run; ``paper`` makes
the whole set (curves, efficiency, window, fine-tuning when present) in one call."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis.aggregate import aggregate
from analysis.figures import plot_learning_curves
from analysis.load import SCORE, RunSet, make_client
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


@dataclass
class PaperOutputs:
    files: list[Path] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    logged_to: str | None = None


def paper(rs: RunSet, out: str | Path, *, metric: str = SCORE, variant=None, panel=None,
          ci: str = "t", level: float = 0.95, band: str = "ci", title: str | None = None,
          min_seeds: int | None = None,
          fraction: float = 0.9, baseline: str | None = None, final_last: int = 1,
          window: tuple | None = None,
          env_steps: int | None = None, log_to: str | None = None, log: bool = True,
          artifact_path: str = ARTIFACT_PATH) -> PaperOutputs:
    """Fig. 2-style curves (``curves.png``), the efficiency table (``efficiency.{csv,md}``), the
    window table (``window.{csv,md}``), the fine-tuning table when any run has a fine-tuning phase
    (``finetune.{csv,md}``) and ``summary.md`` (all tables, the interval method, warnings) in
    ``out``; logged as artifacts on ``log_to`` (default: the sweep's parent run) unless ``log`` is
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
    result.tables = tables
    warnings = list(dict.fromkeys(rs.warnings + agg.warnings +
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
