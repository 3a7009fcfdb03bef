"""``make mlflow-ui``: MLflow's UI on the store launch.py writes to -- the same tracker config,
so ``MLFLOW_TRACKING_URI`` / ``OFFLINE_RL_ROOT`` / ``tracker.store_dir=...`` choose it as they do
for runs (default: this checkout's sqlite store) -- on the loopback, port 5000, and the link that
opens the experiment on its runs table. A tracking server is its own UI: its link is printed.

MLflow 3.17's UI opens an experiment on the page of the browser's "GenAI | Model training"
switch (GenAI in a new browser: traces and token usage), whatever the experiment's
``mlflow.experimentKind`` tag says; a link with ``?workflowType=machine_learning`` opens the runs
table (and choosing "Model training" once is remembered by the browser)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from offline_rl.report import UI_HOST, UI_PORT, WORKFLOW, is_server, ui_base

ROOT = Path(__file__).resolve().parents[1]


def runs_link(tracking_uri: str, host: str, port: int, experiment: str = "offline_rl") -> str:
    """The runs table of ``experiment`` (the experiments list when the store has no such one)."""
    base = f"{ui_base(tracking_uri, host, port)}/#/experiments"
    store = Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None
    if is_server(tracking_uri) or (store is not None and not store.exists()):  # nothing to ask
        return f"{base}?workflowType={WORKFLOW}"
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return f"{base}?workflowType={WORKFLOW}"
    return f"{base}/{found.experiment_id}/runs?workflowType={WORKFLOW}"


def tracker_uri(cfg) -> str:
    """The tracking URI of a composed config's tracker, as launch.py resolves it."""
    from hydra.utils import instantiate

    return instantiate(cfg.tracker).tracking_uri


def compose_config(overrides: list[str] | tuple = ()):
    """The config launch.py composes from ``overrides`` (outside a Hydra run)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def default_store_uri(overrides: list[str] | tuple = ()) -> str:
    """The store launch.py would use with ``overrides`` (MLFLOW_TRACKING_URI, OFFLINE_RL_ROOT,
    else this checkout's)."""
    os.environ.setdefault("OFFLINE_RL_ROOT", str(ROOT))  # as launch.py: the checkout's store
    return tracker_uri(compose_config(overrides))


def main(argv: list[str] | None = None) -> int:
    """``python -m offline_rl.tracking_ui [PORT] [OVERRIDES...]``, e.g. ``tracker.store_dir=st``."""
    args = list(sys.argv[1:] if argv is None else argv)
    port = int(args.pop(0)) if args and args[0].isdigit() else UI_PORT
    uri = default_store_uri(args)
    if is_server(uri):  # a tracking server is already a UI
        print(f"the runs are on the MLflow server {uri}: open {runs_link(uri, UI_HOST, port)}",
              flush=True)
        return 0
    host = UI_HOST
    print(f"MLflow UI for {uri}\n  open {runs_link(uri, host, port)}\n  (Ctrl-C stops it)",
          flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                              "--host", host, "--port", str(port)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
