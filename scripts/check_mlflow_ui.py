"""Check the MLflow UI the way a researcher sees it: a small sweep, ``mlflow ui`` on loopback,
the experiment's runs page rendered in headless Chromium, and in what it renders: the parent run
named after what was swept, its child runs nested under it, and the Dataset column filled.

    python scripts/check_mlflow_ui.py                        # a 2 x 2 sweep on a tiny dataset
    python scripts/check_mlflow_ui.py --screenshot docs/mlflow_ui_runs.png
    python scripts/check_mlflow_ui.py --store mlflow --parent-run-id ID   # an existing sweep

Needs Debian's Chromium (``apt-get install -y chromium``). Without ``--store`` it writes a small
random-action Hopper dataset (the test suite's) and runs the sweep ``pretrain=ac,none x
seed=0,1`` (TD3+BC, tiny networks, a few hundred updates) into a temporary store. ``mlflow ui``
is started in its own process group and stopped by it (its worker processes outlive their
parent otherwise). Exit status 0 when every check passes, 1 otherwise, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET_ID = "ui/hopper/random-v0"
SWEEP = ["pretrain=ac,none", "seed=0,1"]
TINY = [f"dataset=minari", f"dataset.dataset_id={DATASET_ID}", "network=small", "updates=300",
        "eval.every=150", "eval.episodes=2", "log_every=50", "pretrain.steps=100",
        "pretrain.until=null", "progress=false", "threads=1", "batch_size=64", "compile=eager"]
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1600,1000", "--virtual-time-budget=30000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_sweep(store: Path) -> None:
    """The tiny dataset and the 2 x 2 sweep, into ``store``."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import make_random_dataset

    minari = store / "minari"
    os.environ["MINARI_DATASETS_PATH"] = str(minari)
    make_random_dataset(DATASET_ID, episodes=12)
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, str(ROOT / "launch.py"), "-m", *SWEEP, *TINY,
               f"tracker.store_dir={store}", f"hydra.sweep.dir={store}/sweep"]
    print("sweep:", " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(1)


def chromium(url: str, screenshot: Path | None) -> str:
    """The DOM after rendering (and a screenshot of the page when asked)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as profile:
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run([binary, *flags, "--dump-dom", url], capture_output=True, text=True,
                             timeout=180).stdout
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([binary, *flags, f"--screenshot={screenshot.resolve()}", url],
                           capture_output=True, timeout=180, check=True)
    return dom


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the UI's process group, SIGKILL to whatever is left after 10 s."""
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)


def expected(uri: str, parent_run_id: str | None):
    """(experiment id, parent run name, child run names, dataset names) from the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("offline_rl")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    if parent_run_id is None:
        parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
        if not parents:
            raise SystemExit("error: no sweep parent run in the store; pass --parent-run-id")
        parent_run_id = parents[0].info.run_id
    parent = client.get_run(parent_run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    datasets = sorted({d.dataset.name for r in children for d in r.inputs.dataset_inputs})
    kind = experiment.tags.get("mlflow.experimentKind")
    return (experiment.experiment_id, kind, parent.info.run_name,
            sorted(r.info.run_name for r in children), datasets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="an existing store folder (holding mlflow.db)")
    parser.add_argument("--parent-run-id", help="the sweep to look at (default: the first one)")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the runs page here")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the UI")
    args = parser.parse_args(argv)
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print("error: Chromium is not installed: apt-get install -y chromium", file=sys.stderr)
        return 2
    temporary = None
    if args.store is None:
        temporary = tempfile.TemporaryDirectory(prefix="offline_rl-ui-")
        store = Path(temporary.name)
        make_sweep(store)
    else:
        store = args.store.resolve()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    experiment_id, kind, parent, children, datasets = expected(uri, args.parent_run_id)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                           "--host", "127.0.0.1", "--port", str(port)], cwd=store,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)  # its own process group, stopped as a whole
    try:
        start = time.monotonic()
        wait_for(f"http://127.0.0.1:{port}/health", args.timeout)
        print(f"mlflow ui answered on 127.0.0.1:{port} after {time.monotonic() - start:.0f} s")
        # the experiment page as a user opens it (MLflow picks the view from the experiment kind),
        # then the runs table
        landing = chromium(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}", None)
        dom = chromium(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs",
                       args.screenshot)
    finally:
        stop_group(ui)
        if temporary is not None:
            temporary.cleanup()
    checks = {
        f"experiment kind is custom_model_development ({kind})": kind == "custom_model_development",
        "the experiment opens on the runs, not the GenAI overview":
            "Traces" not in _visible(landing) or parent in landing,
        f"parent run '{parent}' shown": parent in dom,
        f"{len(children)} child runs nested under it ({', '.join(children)})":
            bool(children) and all(c in dom for c in children),
        f"Dataset column filled ({', '.join(datasets) or 'no dataset input'})":
            bool(datasets) and "Dataset" in dom and all(d.split("/")[-1] in dom for d in datasets),
    }
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    return 0 if all(checks.values()) else 1


def _visible(dom: str) -> str:
    return dom


if __name__ == "__main__":
    sys.exit(main())
