"""``make mlflow-ui``: MLflow's UI on this checkout's store (loopback, port 5000), and the link
that opens the experiment on its runs table.

MLflow 3.17's UI opens an experiment on the page of the browser's "GenAI | Model training"
switch (GenAI in a new browser: traces and token usage), whatever the experiment's
``mlflow.experimentKind`` tag says; a link with ``?workflowType=machine_learning`` opens the runs
table (and choosing "Model training" once is remembered by the browser)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = "machine_learning"


def runs_link(tracking_uri: str, host: str, port: int, experiment: str = "offline_rl") -> str:
    """The runs table of ``experiment`` (the experiments list when the store has no such one)."""
    base = f"http://{host}:{port}/#/experiments"
    store = Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None
    if store is not None and not store.exists():
        return f"{base}?workflowType={WORKFLOW}"
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return f"{base}?workflowType={WORKFLOW}"
    return f"{base}/{found.experiment_id}/runs?workflowType={WORKFLOW}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    host, port = "127.0.0.1", int(args[0]) if args else 5000
    uri = f"sqlite:///{ROOT / 'mlflow' / 'mlflow.db'}"  # this checkout's store, as launch.py writes it
    print(f"MLflow UI for {uri}\n  open {runs_link(uri, host, port)}\n  (Ctrl-C stops it)",
          flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                              "--host", host, "--port", str(port)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
