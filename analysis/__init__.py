"""From MLflow runs to the paper's figures and tables.

    from analysis import load_runs, aggregate, plot_learning_curves, efficiency_table
    rs = load_runs(parent_run_id="...")            # or experiment="offline_rl", filter_string=...
    agg = aggregate(rs)                            # mean / std / 95% Student-t CI over seeds
    plot_learning_curves(rs, out="results/curves.png")
    print(efficiency_table(rs).markdown())
    m = score_matrix(rs, final="last")             # final scores: variant -> task -> runs
    print(aggregate_table(m).markdown())           # IQM / median / mean / optimality gap, CIs

CLI: ``python -m analysis --help``.
"""

from analysis.aggregate import (AXES, Aggregated, aggregate, default_panel, default_variant,
                                describe_ci, final_scores, group_runs, interval, window_scores)
from analysis.figures import FigureResult, plot_ablation, plot_learning_curves
from analysis.load import SCORE, AnalysisError, RunSet, default_tracking_uri, load_runs
from analysis.report import PaperOutputs, log_artifacts, paper, statistics
from analysis.score_statistics import (ScoreMatrix, aggregate_table, improvement_table,
                                       profiles_table, score_matrix)
from analysis.tables import Table, efficiency_table, finetune_table, window_table

__all__ = [
    "AXES", "Aggregated", "AnalysisError", "FigureResult", "PaperOutputs", "RunSet", "SCORE",
    "ScoreMatrix", "Table", "aggregate", "aggregate_table", "improvement_table", "profiles_table",
    "score_matrix", "statistics", "default_panel", "default_tracking_uri", "default_variant",
    "describe_ci", "efficiency_table", "final_scores", "finetune_table", "group_runs",
    "interval", "load_runs", "log_artifacts", "paper", "plot_ablation", "plot_learning_curves",
    "window_scores", "window_table",
]
