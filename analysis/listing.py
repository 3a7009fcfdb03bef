"""``python -m analysis runs``: the runs of a store as a table -- id, name, status, algorithm,
pre-training, dataset, seed, final score, update step reached, start -- selected like every other
command (``--parent-run-id``, ``--experiment``, ``--sweep``, ``--filter``), every status unless
``--status`` narrows it; newest first. ``--csv FILE`` writes the table."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from analysis.load import SCORE, select_runs

COLUMNS = ["run_id", "name", "status", "algo", "pretrain", "dataset", "seed", "score", "updates",
           "started"]


def list_runs(tracking_uri: str | None = None, *, parent_run_id: str | None = None,
              experiment: str | None = None, filter_string: str = "", sweep: str | None = None,
              statuses: Sequence[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    found, _, _, _, _ = select_runs(tracking_uri, parent_run_id=parent_run_id,
                                    experiment=experiment, filter_string=filter_string,
                                    sweep=sweep, statuses=statuses)
    rows = []
    for run in found:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        rows.append({
            "run_id": run.info.run_id, "name": tags.get("mlflow.runName", run.info.run_name),
            "status": run.info.status,
            "algo": tags.get("algo", params.get("algo")),
            "pretrain": tags.get("pretrain", params.get("pretrain")),
            "dataset": tags.get("dataset_id") or tags.get("dataset"),
            "seed": tags.get("seed", params.get("seed")),
            "score": metrics.get(SCORE),
            # the planned budget is a param (a continued run's grown budget its tag)
            "updates": tags.get("updates", params.get("updates")),
            "started": pd.to_datetime(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
            "_start": run.info.start_time})
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "_start"])
    frame = frame.sort_values("_start", ascending=False).drop(columns="_start")
    return frame.head(limit) if limit else frame.reset_index(drop=True)


def markdown(frame: pd.DataFrame) -> str:
    shown = frame.assign(score=frame["score"].map(lambda v: "—" if pd.isna(v) else f"{v:.1f}"),
                         updates=frame["updates"].map(lambda v: "—" if v is None or pd.isna(v)
                                                      else f"{int(float(v)):,}"))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("—" if v is None else str(v) for v in row) + " |"
              for row in shown[COLUMNS].itertuples(index=False)]
    return "\n".join(lines)
