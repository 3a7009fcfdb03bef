"""``make bench --runs-per-gpu``: how many independent TD3+BC runs one GPU sustains side by side,
each its own process (``python -m benchmarks.bench --loop-worker``) running a full update loop."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, SHAPES, make_algorithms
from offline_rl.training.compiled import attach_compiler


def loop_worker(go: Path, device: torch.device, seconds: float, seed: int, warmup: int | None = None) -> None:
    """One process of ``runs_per_gpu``: a TD3+BC run's update loop as offline_rl/training/loop.py runs it --
    a batch sampled from an on-device replay of 1M transitions, the compiled update (CUDA graphs
    on CUDA), the metrics summed on the device and read back every 1,000 updates. After
    ``warmup`` updates (compilation, graph capture) it says it is ready and waits for ``go``, then
    runs for ``seconds`` and prints one JSON line: updates, seconds, GPU memory."""
    from offline_rl.dataset.replay import ReplayBuffer
    from offline_rl.training.metrics import MetricWindow

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    obs_dim, act_dim = SHAPES["hopper"]
    algo = make_algorithms(obs_dim, act_dim, device)["td3_bc"]()
    attach_compiler(algo, "compile")
    replay = ReplayBuffer(1_000_000, obs_dim, act_dim, device, seed=seed)
    for key, tensor in replay.storage.items():
        tensor.normal_() if key != "dones" else tensor.bernoulli_(0.001)
    replay.size = replay.capacity
    sample = replay.sampler(256)
    window = MetricWindow()
    step = 0

    def update() -> None:
        nonlocal step
        window.add(algo.update(sample()), step)
        step += 1
        if step % 1000 == 0:
            window.read("offline_rl")

    for _ in range(warmup if warmup is not None else 3000 if device.type == "cuda" else 100):
        update()
    window.read("offline_rl")
    (go.parent / f"ready-{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.002)
    t0, count = time.perf_counter(), 0
    while count % 100 or time.perf_counter() - t0 < seconds:
        update()
        count += 1
    window.read("offline_rl")  # waits for the device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    memory = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    print(json.dumps({"updates": count, "seconds": elapsed, "memory_gib": memory}), flush=True)


def runs_per_gpu(counts: list[int], device: torch.device, seconds: float,
                 timeout: float = 300) -> list[dict]:
    """How many independent TD3+BC runs one GPU sustains: for each N in ``counts``, N processes
    (``loop_worker``, different seeds) compile and warm up, start together, run ``seconds``;
    the aggregate is the sum of their updates/s. Small networks leave a GPU mostly idle: the
    aggregate's growth with N is what a sweep gains per GPU-hour."""
    rows = []
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            go = Path(tmp) / "go"
            logs = [(Path(tmp) / f"out-{i}", Path(tmp) / f"err-{i}") for i in range(n)]  # not pipes:
            procs = []  # a worker that fills a pipe before it is read would stall
            for i, (out_path, err_path) in enumerate(logs):
                with open(out_path, "w") as out, open(err_path, "w") as err:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.bench", "--loop-worker", str(go), "--device",
                         str(device), "--runs-seconds", str(seconds), "--seed", str(i)],
                        stdout=out, stderr=err, cwd=ROOT))
            deadline = time.monotonic() + timeout
            failed = ""
            while len(list(Path(tmp).glob("ready-*"))) < n and not failed:
                if any(p.poll() is not None for p in procs):
                    failed = "a worker exited before it was ready"
                elif time.monotonic() > deadline:
                    failed = f"not all {n} workers ready within {timeout:.0f} s"
                time.sleep(0.05)
            go.touch()
            results = []
            for proc, (out_path, err_path) in zip(procs, logs):
                try:
                    proc.wait(timeout=seconds + 120 if not failed else 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    failed = failed or "a worker did not finish"
                out, err = out_path.read_text(), err_path.read_text()
                lines = [line for line in out.splitlines() if line.startswith("{")]
                if proc.returncode == 0 and lines:
                    results.append(json.loads(lines[-1]))
                else:
                    failed = failed or f"a worker failed: {err.strip()[-600:]}"
        rates = [r["updates"] / r["seconds"] for r in results]
        row = {"runs": n, "failed": failed, "aggregate": sum(rates) if not failed else float("nan"),
               "per_run_median": statistics.median(rates) if rates else float("nan"),
               "per_run_min": min(rates) if rates else float("nan"),
               "memory_gib": max((r["memory_gib"] for r in results), default=float("nan"))}
        rows.append(row)
        print(runs_table(rows)[-1] + (f"  ({failed})" if failed else ""), flush=True)
    return rows


def runs_table(rows: list[dict]) -> list[str]:
    out = ["| runs side by side | aggregate upd/s | per run upd/s (median) | slowest run upd/s | "
           "x one run | 1M-update runs per hour | GPU memory per run (GiB) |", "|---|---|---|---|---|---|---|"]
    single = next((r["aggregate"] for r in rows if r["runs"] == 1), float("nan"))
    for r in rows:
        out.append(f"| {r['runs']} | {r['aggregate']:.0f} | {r['per_run_median']:.0f} | {r['per_run_min']:.0f} | "
                   f"{r['aggregate'] / single:.2f}x | {r['aggregate'] * 3600 / 1e6:.1f} | {r['memory_gib']:.2f} |")
    return out
