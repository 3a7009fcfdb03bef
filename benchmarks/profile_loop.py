"""Where an iteration of the run loop goes (issue 26): torch.profiler over our loop in steady state
beside the bare compiled step, on the CPU or a GPU.

    python -m benchmarks.profile_loop                          # TD3+BC, this machine's device
    python -m benchmarks.profile_loop --algo edac --device cuda --out docs/profile_cuda.md

Each update of the loop is split, with ``record_function`` labels, into **sample** (the phase's
sampler: one ``randint`` and one row gather into its buffers, offline_rl/dataset/replay.py),
**step** (the compiled update step, from its call to its return) and the rest, the **Trainer's
bookkeeping** (its metric window, phase and step counters, the every-``log_every`` read-back),
reported as time per update from the profile's own clock. The bare step runs the same compiled
algorithm on a fixed pool of batches, as ``make bench`` times it. Then the profiler's top entries
(self time; on a GPU also the device's kernels) for each. Profiling adds its own cost per recorded
operation: the split is the point, not the absolute rates (``make bench`` measures those).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.common import SHAPES, make_algorithms, random_batch
from benchmarks.loops import our_loop, random_replay
from offline_rl.machine import cpu_model
from offline_rl.training.compiled import attach_compiler

LABELS = ("sample", "step")


def labelled_update(algo, sample):
    def update():
        with record_function("sample"):
            batch = sample()
        with record_function("step"):
            return algo.update(batch)

    return update


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profiled(fn, calls: int, device: torch.device):
    """(profile, wall seconds) of ``fn(calls)``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn(calls)
        sync(device)
        seconds = time.perf_counter() - start
    return prof, seconds


def label_us(prof, calls: int) -> dict[str, float]:
    """Microseconds per update inside each label (CPU time, the label's whole span)."""
    totals = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key in LABELS}
    return {k: totals.get(k, 0.0) / calls for k in LABELS}


def top_table(prof, device: torch.device, rows: int) -> str:
    """The top entries by self CPU time; on a GPU also by self GPU time. A launch-bound step's
    cost is the host's (launches, input copies into a CUDA graph's buffers): it shows in the
    first table, the kernels in the second."""
    averages = prof.key_averages()
    text = averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)
    if device.type == "cuda":
        text += "\nBy self GPU time:\n" + averages.table(sort_by="self_cuda_time_total", row_limit=rows,
                                                          max_name_column_width=60)
    return text


def main(argv: list[str] | None = None) -> dict[str, float]:
    """The report printed (and written with --out); returns its per-update microseconds."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="td3_bc", choices=["td3_bc", "edac", "iql"])
    parser.add_argument("--shape", default="hopper", choices=list(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--updates", type=int, default=2000, help="profiled updates (each of the two)")
    parser.add_argument("--transitions", type=int, default=1_000_000, help="the loop's replay")
    parser.add_argument("--warmup", type=int, default=200,
                        help="updates before profiling (compilation, CUDA-graph recording)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rows", type=int, default=20, help="top entries per table")
    parser.add_argument("--compile", default="compile", choices=["compile", "eager"],
                        help="the steps compiled (what a run does) or eager")
    parser.add_argument("--out", default=None, help="write the report here too (Markdown)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return report(args, device)
    finally:
        torch.set_num_threads(threads_before)


def report(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    obs_dim, act_dim = SHAPES[args.shape]
    torch.manual_seed(0)
    base = make_algorithms(obs_dim, act_dim, device)[args.algo]()
    loop_algo, step_algo = copy.deepcopy(base), copy.deepcopy(base)
    attach_compiler(loop_algo, args.compile)
    attach_compiler(step_algo, args.compile)
    replay = random_replay(obs_dim, act_dim, device, args.transitions)
    loop = our_loop(labelled_update(loop_algo, replay.sampler(256)))
    g = torch.Generator().manual_seed(0)
    pool = [random_batch(obs_dim, act_dim, 256, device, g) for _ in range(16)]

    def bare(calls: int) -> None:
        for i in range(calls):
            step_algo.update(pool[i % len(pool)])

    for fn in (loop, bare):  # compile and warm up (CUDA graphs record on their first calls)
        fn(args.warmup)
    sync(device)
    loop_prof, loop_s = profiled(loop, args.updates, device)
    bare_prof, bare_s = profiled(bare, args.updates, device)
    parts = label_us(loop_prof, args.updates)
    loop_us, bare_us = 1e6 * loop_s / args.updates, 1e6 * bare_s / args.updates
    rest = loop_us - parts["sample"] - parts["step"]
    lines = [
        f"# Where a run-loop iteration goes: {args.algo}, {args.shape} shapes, {device}",
        "",
        f"Measured {datetime.date.today().isoformat()} on {cpu_model()}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
        + f", torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.updates:,} profiled updates each, after {args.warmup} of warm-up; replay {args.transitions:,} "
        "transitions. `python -m benchmarks.profile_loop "
        f"--algo {args.algo} --device {device.type} --updates {args.updates} --compile {args.compile}`.",
        "",
        "| per update, under the profiler | us | share of the loop |",
        "|---|---|---|",
        f"| our loop, whole iteration | {loop_us:.1f} | 100% |",
        f"| - sample (randint + row gather into the phase's buffers) | {parts['sample']:.1f} | "
        f"{100 * parts['sample'] / loop_us:.1f}% |",
        f"| - step (the {'compiled' if args.compile == 'compile' else 'eager'} update, call to return) | {parts['step']:.1f} | "
        f"{100 * parts['step'] / loop_us:.1f}% |",
        f"| - the Trainer's bookkeeping (the rest) | {rest:.1f} | {100 * rest / loop_us:.1f}% |",
        f"| bare step on a fixed pool of batches | {bare_us:.1f} | "
        f"{100 * bare_us / loop_us:.1f}% |",
        "",
        f"Loop / step rate under the profiler: {100 * bare_us / loop_us:.0f}%.",
        "",
        "## Our loop: top entries",
        "",
        "```",
        top_table(loop_prof, device, args.rows),
        "```",
        "",
        "## The bare step: top entries",
        "",
        "```",
        top_table(bare_prof, device, args.rows),
        "```",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"written to {args.out}")
    return {"loop_us": loop_us, "bare_us": bare_us, "rest_us": rest, **{f"{k}_us": v for k, v in parts.items()}}


if __name__ == "__main__":
    main()
