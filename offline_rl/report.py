"""What a finished run says in its terminal: its final score next to the behaviour policy's, its
MLflow run and store, and the link that opens it in the MLflow UI serving that store.

``launch.py`` prints it at the end of every single run (``summary=false`` leaves it out; a sweep
prints its own table of jobs instead), ``make run`` (offline_rl.first_run) too.
"""

from __future__ import annotations

from urllib.parse import urlparse

WORKFLOW = "machine_learning"  # MLflow 3's UI opens the runs table with this (offline_rl.tracking_ui)
UI_HOST, UI_PORT = "127.0.0.1", 5000  # where `make mlflow-ui` serves a sqlite store


def is_server(tracking_uri: str | None) -> bool:
    return bool(tracking_uri) and urlparse(tracking_uri).scheme in ("http", "https")


def ui_base(tracking_uri: str | None, host: str = UI_HOST, port: int = UI_PORT) -> str:
    """The UI that shows ``tracking_uri``: a tracking server is its own UI; a sqlite store is
    shown by `make mlflow-ui` on the loopback."""
    return tracking_uri.rstrip("/") if is_server(tracking_uri) else f"http://{host}:{port}"


def run_link(tracking_uri: str | None, experiment_id: str, run_id: str) -> str:
    return (f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"
            f"?workflowType={WORKFLOW}")


def how_to_open(tracking_uri: str | None) -> str:
    if is_server(tracking_uri):
        return "open"
    return "make mlflow-ui (the same MLFLOW_TRACKING_URI / OFFLINE_RL_ROOT), then open"


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def summary_lines(*, name: str, status: str, dataset: str, score: float | None, step: int | None,
                  episodes: int | None, behaviour: float | None, run_id: str | None,
                  tracking_uri: str | None, experiment_id: str | None) -> list[str]:
    evaluated = (f"   ({episodes} evaluation episodes at update {step:,})"
                 if step is not None and episodes else "")
    lines = ["", f"Finished: {name} ({status}), dataset {dataset}",
             f"  final normalised score   {fmt(score):>6}{evaluated}",
             f"  behaviour policy         {fmt(behaviour):>6}   (the dataset's own episodes, same "
             f"scale: 0 = random, 100 = the expert)"]
    if run_id is None:
        return [*lines, "  not recorded (tracker=none)"]
    lines.append(f"  MLflow run {run_id} in {tracking_uri}")
    if experiment_id is not None:
        lines.append(f"  {how_to_open(tracking_uri)} {run_link(tracking_uri, experiment_id, run_id)}")
    return lines
