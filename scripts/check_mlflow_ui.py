"""Check the MLflow UI the way a researcher sees it: a small sweep over two datasets, ``mlflow ui``
on loopback, the experiment's pages rendered in headless Chromium, and in what they render: the
parent run named after what was swept, its child runs nested under it, and the Dataset column
filled with each child's own dataset.

    python scripts/check_mlflow_ui.py                        # a 2 x 2 sweep on two tiny datasets
    python scripts/check_mlflow_ui.py --screenshots docs/ui  # runs table, chart view, compare-runs
    python scripts/check_mlflow_ui.py --store DIR [--parent-run-id ID]   # an existing sweep

Needs Debian's Chromium (``apt-get install -y chromium``). Without ``--store`` it writes two small
random-action datasets (Hopper and Walker2d, the test suite's generator) and runs the sweep
``dataset.dataset_id=<both> x pretrain=ac,none`` (TD3+BC, tiny networks, a few hundred updates) into
a temporary store. ``mlflow ui`` is started in its own process group and stopped by it (its worker
processes outlive their parent otherwise); on a busy machine it took up to 174 s to answer, hence
the 300 s default ``--timeout``. Exit status 0 when every check passes, 1 otherwise, 2 when it
cannot run (no Chromium, no store, the UI or the browser did not answer in time: one line).
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
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_TRAINING = "custom_model_development"
WORKFLOW = "machine_learning"
DATASETS = {"ui/hopper/random-v0": "Hopper-v5", "ui/walker2d/random-v0": "Walker2d-v5"}
SWEEP = [f"dataset.dataset_id={','.join(DATASETS)}", "pretrain=ac,none"]
TINY = ["dataset=minari", "network=small", "updates=300",
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
    """The two tiny datasets and the 2 x 2 sweep, into ``store``."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import make_random_dataset

    minari = store / "minari"
    os.environ["MINARI_DATASETS_PATH"] = str(minari)
    for dataset_id, env_id in DATASETS.items():
        make_random_dataset(dataset_id, episodes=12, env_id=env_id)
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


@dataclass
class Store:
    """What the store says the UI should show."""

    experiment_id: str
    kind: str | None
    parent: str
    children: dict[str, str]          # run id -> run name
    datasets: dict[str, int]          # dataset name -> how many children used it


def expected(uri: str, parent_run_id: str | None) -> Store:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("offline_rl")
    if experiment is None:
        raise CannotRun(f"no experiment 'offline_rl' in {uri}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    if parent_run_id is None:
        parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
        if not parents:
            raise CannotRun("no sweep parent run in the store; pass --parent-run-id")
        parent_run_id = parents[0].info.run_id
    parent = client.get_run(parent_run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    datasets = Counter(d.dataset.name for r in children for d in r.inputs.dataset_inputs)
    return Store(experiment.experiment_id, experiment.tags.get("mlflow.experimentKind"),
                 parent.info.run_name, {r.info.run_id: r.info.run_name for r in children},
                 dict(sorted(datasets.items())))


def checks(store: Store, landing: str, shown: bool, nested: bool, grid: str) -> dict[str, bool]:
    """What the rendered runs table (``grid``: its text) must show. Each dataset appears in the
    Dataset column as ``<name> (<digest>)`` once per child that used it (not once per child: on
    a sweep over datasets each child has one of them)."""
    children = sorted(store.children.values())
    return {
        f"experiment tagged mlflow.experimentKind={MODEL_TRAINING} ({store.kind})":
            store.kind == MODEL_TRAINING,
        f"the link with ?workflowType={WORKFLOW} opens the runs table": "/runs" in landing,
        f"parent run '{store.parent}' shown": shown and store.parent in grid,
        f"{len(children)} child runs nested under it (shown after expanding the parent: "
        f"{', '.join(children)})": nested and all(c in grid for c in children),
        "Dataset column filled (" + (", ".join(f"{d} x {n}" for d, n in store.datasets.items())
                                     or "no dataset input") + ")":
            bool(store.datasets) and "Dataset" in grid and
            all(grid.count(f"{d} (") >= n for d, n in store.datasets.items()),
    }


class CannotRun(Exception):
    """The check could not run (exit status 2)."""


SEARCH_CHARTS = """(() => {
  const box = [...document.querySelectorAll('input')].find(i =>
      (i.placeholder || '').toLowerCase().includes('search'));
  if (!box) return false;
  const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;
  set.call(box, %s);
  box.dispatchEvent(new Event('input', {bubbles: true}));
  return true;
})()"""


# compare-runs: the parameters that differ between the runs (the first "Show diff only" switch),
# scrolled into view
SHOW_PARAMETER_DIFFERENCES = """(() => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let heading = null;
  while (walker.nextNode()) {
    if (walker.currentNode.nodeValue.trim() === 'Parameters') { heading = walker.currentNode.parentElement; break; }
  }
  const toggle = document.querySelector('[role=switch]');
  if (toggle && toggle.getAttribute('aria-checked') !== 'true') toggle.click();
  if (heading) heading.scrollIntoView({block: 'start'});
  return !!(heading && toggle);
})()"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="an existing store folder (holding mlflow.db)")
    parser.add_argument("--parent-run-id", help="the sweep to look at (default: the first one)")
    parser.add_argument("--screenshots", type=Path,
                        help="save runs.png (the runs table, parent expanded), chart.png (the chart "
                             "view of the normalised score) and compare.png (compare-runs) here")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds to wait for the UI to answer (default 300)")
    args = parser.parse_args(argv)
    try:
        return check(args)
    except (CannotRun, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def check(args) -> int:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        raise CannotRun("Chromium is not installed: apt-get install -y chromium")
    temporary = None
    if args.store is None:
        temporary = tempfile.TemporaryDirectory(prefix="offline_rl-ui-")
        folder = Path(temporary.name)
        make_sweep(folder)
    else:
        folder = args.store.resolve()
        if not (folder / "mlflow.db").is_file():
            raise CannotRun(f"{folder} holds no mlflow.db: pass the folder of the store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    store = expected(uri, args.parent_run_id)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                           "--host", "127.0.0.1", "--port", str(port)], cwd=folder,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)  # its own process group, stopped as a whole
    base = f"http://127.0.0.1:{port}/#/experiments/{store.experiment_id}"
    browser = None
    shots = args.screenshots
    try:
        start = time.monotonic()
        try:
            wait_for(f"http://127.0.0.1:{port}/health", args.timeout)
        except TimeoutError:
            raise TimeoutError(f"mlflow ui did not answer within {args.timeout:.0f} s (a busy "
                               f"machine can take minutes): pass a larger --timeout") from None
        print(f"mlflow ui answered on 127.0.0.1:{port} after {time.monotonic() - start:.0f} s")
        browser = Browser()
        # MLflow 3.17 picks the experiment's first page from the browser's "GenAI | Model
        # training" switch (default GenAI), or from ?workflowType= in the link
        browser.open(base, "location.hash.includes('/overview') || location.hash.includes('/runs')")
        plain = browser.js("location.hash")
        browser.open(f"{base}?workflowType={WORKFLOW}", "location.hash.includes('/runs')", 60)
        landing = browser.js("location.hash")
        shown = browser.wait(text_has(store.parent))
        expander = "button[data-component-id*='runnamecellrenderer']"
        clicked = shown and browser.js(f"(() => {{ const b = document.querySelector(\"{expander}\");"
                                       f" if (!b) return false; b.click(); return true; }})()")
        children = sorted(store.children.values())
        nested = bool(clicked) and browser.wait(" && ".join(text_has(c) for c in children) or "false")
        browser.wait(" && ".join(text_has(f"{d} (") for d in store.datasets) or "false", 30)
        close_assistant(browser)
        grid = browser.js("(document.querySelector('.ag-root') || document.body).innerText") or ""
        if shots:
            browser.screenshot(shots / "runs.png")
            # the chart view: one chart per metric; the search box narrows them to the score
            browser.open(f"{base}/runs?workflowType={WORKFLOW}&compareRunsMode=CHART",
                         text_has("normalized_score_mean"), 60)
            browser.js(SEARCH_CHARTS % json.dumps("normalized_score_mean"))
            time.sleep(3)
            close_assistant(browser)
            browser.screenshot(shots / "chart.png")
            ids = json.dumps(sorted(store.children))
            browser.open(f"http://127.0.0.1:{port}/#/compare-runs?runs={quote(ids)}&experiments="
                         f"{quote(json.dumps([store.experiment_id]))}&workflowType={WORKFLOW}",
                         text_has("pretrain"), 60)
            time.sleep(3)
            close_assistant(browser)
            browser.js(SHOW_PARAMETER_DIFFERENCES)
            time.sleep(2)
            browser.screenshot(shots / "compare.png")
    finally:
        if browser is not None:
            browser.close()
        stop_group(ui)
        if temporary is not None:
            temporary.cleanup()
    print(f"info: {base} opened {plain.split('?')[0].rsplit('/', 2)[-2:]} in a fresh browser "
          f"profile; the link with ?workflowType={WORKFLOW} opened {landing.split('?')[0]}")
    results = checks(store, landing, bool(shown), bool(nested), grid)
    for what, ok in results.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if shots:
        print(f"screenshots: {', '.join(str(shots / n) for n in ('runs.png', 'chart.png', 'compare.png'))}")
    return 0 if all(results.values()) else 1


def close_assistant(browser: Browser) -> None:
    """Close MLflow's assistant panel, which covers part of the page in a screenshot."""
    browser.js("(() => { const b = [...document.querySelectorAll('button')].find(b => "
               "(b.getAttribute('aria-label') || '').toLowerCase().includes('close')); "
               "if (b) b.click(); })()")
    time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
