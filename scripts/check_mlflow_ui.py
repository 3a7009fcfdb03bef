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
import base64
import itertools
import json
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
MODEL_TRAINING = "custom_model_development"
WORKFLOW = "machine_learning"
DATASET_ID = "ui/hopper/random-v0"
SWEEP = ["pretrain=ac,none", "seed=0,1"]
TINY = ["dataset=minari", f"dataset.dataset_id={DATASET_ID}", "network=small", "updates=300",
        "eval.every=150", "eval.episodes=2", "log_every=50", "pretrain.steps=100",
        "pretrain.until=null", "progress=false", "threads=1", "batch_size=64", "compile=eager"]
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1600,1000"]


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


class Browser:
    """Headless Chromium driven over the DevTools protocol (websockets): load a page, wait for
    what it renders, click, read the text, take a screenshot."""

    def __init__(self) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        self.profile = tempfile.TemporaryDirectory(prefix="offline_rl-chromium-")
        port = free_port()
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile.name}",
             f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [p for p in json.load(r) if p["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium's DevTools endpoint did not answer within 60 s")
            time.sleep(0.3)
        from websockets.sync.client import connect

        self.connection = connect(pages[0]["webSocketDebuggerUrl"], max_size=2**26)
        self.socket = self.connection.__enter__()
        self.ids = itertools.count(1)
        self.call("Page.enable")

    def call(self, method: str, **params):
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, until: str, timeout_s: float = 90) -> bool:
        """Navigate, then wait until the JavaScript expression ``until`` is true."""
        self.call("Page.navigate", url=url)
        return self.wait(until, timeout_s)

    def wait(self, until: str, timeout_s: float = 90) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.js(until):
                return True
            time.sleep(0.5)
        return False

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot")["data"]))

    def close(self) -> None:
        try:
            self.connection.__exit__(None, None, None)
        finally:
            stop_group(self.process)
            self.profile.cleanup()


def text_has(text: str) -> str:
    return f"document.body && document.body.innerText.includes({json.dumps(text)})"


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
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}"
    browser = None
    try:
        start = time.monotonic()
        wait_for(f"http://127.0.0.1:{port}/health", args.timeout)
        print(f"mlflow ui answered on 127.0.0.1:{port} after {time.monotonic() - start:.0f} s")
        browser = Browser()
        # MLflow 3.17 picks the experiment's first page from the browser's "GenAI | Model
        # training" switch (default GenAI), or from ?workflowType= in the link
        browser.open(base, "location.hash.includes('/overview') || location.hash.includes('/runs')")
        plain = browser.js("location.hash")
        browser.open(f"{base}?workflowType={WORKFLOW}", "location.hash.includes('/runs')", 60)
        landing = browser.js("location.hash")
        shown = browser.wait(text_has(parent))
        expander = "button[data-component-id*='runnamecellrenderer']"
        clicked = shown and browser.js(f"(() => {{ const b = document.querySelector(\"{expander}\");"
                                       f" if (!b) return false; b.click(); return true; }})()")
        nested = clicked and browser.wait(" && ".join(text_has(c) for c in children) or "false")
        browser.wait(" && ".join(text_has(f"{d} (") for d in datasets) or "false", 30)
        browser.js("(() => { const b = [...document.querySelectorAll('button')].find(b => "
                   "(b.getAttribute('aria-label') || '').toLowerCase().includes('close')); "
                   "if (b) b.click(); })()")  # the assistant panel, for the screenshot
        time.sleep(1)
        grid = browser.js("(document.querySelector('.ag-root') || document.body).innerText") or ""
        if args.screenshot:
            browser.screenshot(args.screenshot)
    finally:
        if browser is not None:
            browser.close()
        stop_group(ui)
        if temporary is not None:
            temporary.cleanup()
    print(f"info: {base} opened {plain.split('?')[0].rsplit('/', 2)[-2:]} in a fresh browser "
          f"profile; the link with ?workflowType={WORKFLOW} opened {landing.split('?')[0]}")
    checks = {
        f"experiment tagged mlflow.experimentKind={MODEL_TRAINING} ({kind})": kind == MODEL_TRAINING,
        f"the link with ?workflowType={WORKFLOW} opens the runs table": "/runs" in landing,
        f"parent run '{parent}' shown": bool(shown) and parent in grid,
        f"{len(children)} child runs nested under it (shown after expanding the parent: "
        f"{', '.join(children)})": bool(nested) and all(c in grid for c in children),
        f"Dataset column filled ({', '.join(datasets) or 'no dataset input'})":
            bool(datasets) and "Dataset" in grid and
            all(grid.count(f"{d} (") >= len(children) for d in datasets),
    }
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
