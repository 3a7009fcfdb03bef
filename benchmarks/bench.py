"""``make bench``: how fast this package's update steps run, against the same updates written the
way CORL writes them, side by side in one process.

For TD3+BC and EDAC (N = 10), on Hopper (obs 11, act 3) and HalfCheetah (obs 17, act 6) shapes, batch
256, the paper's networks (TD3+BC 2x256, EDAC 3x256, LayerNorm without affine, as the default
config), it times three versions of the offline RL update and of the pre-training steps:

  corl      the reference: an eager update written as CORL's td3_bc.py / edac.py are (one module
            per TD3 critic, torch.distributions, the diversity term from a second critic forward
            and a masked [B, N, N] Gram matrix, EDAC's logging-only critic pass, ``.item()`` for
            every logged number, zero_grad / backward / step, a Python loop for Polyak averaging,
            ``torch.optim.Adam`` with its defaults), initialised with the same weights;
  eager     this package's step functions run eagerly (``compile=eager``);
  compiled  the same step functions, one torch.compile graph each (``compile=auto``, the default);
  bf16      the compiled steps with ``precision=bf16`` (offline_rl/precision.py: the hidden layers'
            matrix products in bf16, the rest float32), where the device has bf16 hardware.

Repetitions are interleaved (corl, eager, compiled, corl, ...; the order rotates) and the
speed-up is the median over repetitions of (compiled updates/s) / (corl updates/s) from the same
repetition, so a machine whose speed drifts (a shared host) affects both sides alike. FLOPs per
update are counted with torch.utils.flop_counter.FlopCounterMode (matrix products; one update of
each), and GFLOP/s is set against a 2048x2048 float32 matmul timed in the same process. Each step's
matmul-only bound (its own matrix products replayed back to back) is measured in float32 and, for
the bf16 column, with the bf16 operands a bf16 step multiplies. Every row is measured at each
``--threads`` count (default 1 and 2). The table is printed and written to docs/bench.md with the
machine's description.

On CUDA (``--device cuda``, the default where there is a GPU) the compiled steps are CUDA graphs;
the peaks are 8192x8192 float32 and bf16 products timed with CUDA events (the updates run in
float32: TF32 stays off, PyTorch's default), the table goes to docs/bench_cuda.md, and
``--runs-per-gpu 1 4 16`` (the default there) measures how many independent TD3+BC runs one GPU
sustains side by side: N processes, each a full update loop, timed together
(``runs_per_gpu``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import ALGOS, ROOT, SHAPES, make_algorithms, random_batch
from benchmarks.corl import CorlEDAC, CorlIQL, CorlTD3BC, corl_batch
from benchmarks.loops import CorlReplay, corl_loop, loop_cost, our_loop, random_replay
from benchmarks.runs_per_gpu import loop_worker, runs_per_gpu, runs_table
from offline_rl.dataset.replay import Batch
from offline_rl.machine import cpu_model
from offline_rl.precision import bf16_support
from offline_rl.pretrain.common import Scheme, soft_returns_to_go
from offline_rl.training.compiled import attach_compiler

# ----- the cases -------------------------------------------------------------------------------


class PoolReplay:
    """Stands in for the replay in the pre-training closures: the next batch of a fixed pool."""

    def __init__(self, batches: list[Batch]):
        self.batches, self.i = batches, 0

    def sample(self, batch_size: int) -> Batch:
        self.i += 1
        return self.batches[self.i % len(self.batches)]

    def sampler(self, batch_size: int) -> Callable[[], Batch]:
        return lambda: self.sample(batch_size)


class BenchScheme(Scheme):
    def phases(self, algo, replay, batch_size):  # only the step closures are used
        return []


class Case:
    """One row: versions of the same step (CORL-style, eager, compiled, compiled in bf16), each a
    function of the batch index; ``bf16_eager`` only records the bf16 step's matrix products."""

    def __init__(self, algo_name: str, shape: str, step: str, contenders: dict[str, Callable[[int], object]],
                 report, bf16_eager: Callable[[int], object] | None = None, pair: int = 1,
                 threads: int = 1, loops: dict[str, Callable[[int], None]] | None = None):
        self.algo_name, self.shape, self.step, self.threads = algo_name, shape, step, threads
        self.contenders = contenders  # corl, eager, compiled[, bf16]: one step per call, batch i
        self.loops = loops or {}  # corl loop, loop[, bf16 loop]: run(calls) updates of a run loop
        self.bf16_eager = bf16_eager
        self.report, self.pair = report, pair  # pair: calls that make one full cycle (TD3: 2)
        self.flops: dict[str, float] = {}
        self.rates: dict[str, list[float]] = {k: [] for k in [*self.contenders, *self.loops]}
        self.compile_seconds = 0.0
        self.agreement = float("nan")  # max relative difference of the losses, CORL vs ours
        self.bound = float("nan")  # updates/s of the matrix products alone
        self.bf16_bound = float("nan")  # the same for the bf16 step's (bf16) products
        self.loop_cost = float("nan")  # us per update our loop spends outside the step


def agreement(corl: Callable[[int], dict], ours: Callable[[int], object], calls: int, seed: int) -> float:
    """Largest relative difference between the CORL-style and our (eager) logged values over
    ``calls`` calls from the same state and random seed: both compute the same update."""
    worst = 0.0
    for i in range(calls):
        torch.manual_seed(seed + i)
        a = corl(i)
        torch.manual_seed(seed + i)
        b = {k: float(v) for k, v in ours(i).items()}
        for key in set(a) & set(b):
            worst = max(worst, abs(a[key] - b[key]) / max(abs(a[key]), 1e-6))
    return worst


def build_cases(algo_name: str, shape: str, steps: list[str], device: torch.device,
                pool_size: int, seed: int, bf16: bool = False, threads: int = 1,
                replay=None) -> list[Case]:
    """The rows of one algorithm and shape; with ``replay`` (a full ReplayBuffer of that shape)
    also the run loops around the compiled steps and the CORL-style one (benchmarks/loops.py)."""
    obs_dim, act_dim = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    pool = [random_batch(obs_dim, act_dim, 256, device, g) for _ in range(pool_size)]
    corl_pool = [corl_batch(b) for b in pool]
    torch.manual_seed(seed)
    base = make_algorithms(obs_dim, act_dim, device)[algo_name]()
    cases = []
    ours = {"eager": ("eager", "fp32"), "compiled": ("compile", "fp32")}
    if bf16:
        ours.update({"bf16": ("compile", "bf16"), "bf16 eager": ("eager", "bf16")})
    for step in steps:
        versions = []
        for _ in range(2):  # the timed versions, and a fresh pair that checks they agree
            ref_algo = {"td3_bc": CorlTD3BC, "edac": CorlEDAC, "iql": CorlIQL}[algo_name](base)
            algos, report = {}, None
            for name, (mode, precision) in ours.items():
                algos[name] = copy.deepcopy(base)
                attached = attach_compiler(algos[name], mode, precision=precision)
                report = attached if name == "compiled" else report
            if step == "update":
                ref_fn = ref_algo.update if algo_name == "edac" else ref_algo.train
                fns = {"corl": lambda i, f=ref_fn: f(corl_pool[i % pool_size])}
                fns.update({name: (lambda i, a=a: a.update(pool[i % pool_size])) for name, a in algos.items()})
            else:
                scheme = BenchScheme(steps=100_000, until=None)
                factory, ref_name = {
                    "pretrain BC": (scheme.actor_update, "bc_step"),
                    "pretrain MC critic": (scheme.critic_update, "mc_critic_step"),
                    "pretrain soft BC": (scheme.soft_actor_update, "soft_bc_step"),
                    "pretrain soft critic": (scheme.critic_update, "soft_critic_step"),
                }[step]
                ref_fn = getattr(ref_algo, ref_name)
                # PoolReplay starts at batch 1
                fns = {"corl": lambda i, f=ref_fn: f(corl_pool[(i + 1) % pool_size])}
                fns.update({name: (lambda i, f=factory(a, PoolReplay(pool), 256): f())
                            for name, a in algos.items()})
            loops = {}
            if replay is not None and not versions:  # around the timed versions' algorithms
                if step == "update":
                    updates = {name: (lambda a=algos[name], sample=replay.sampler(256): a.update(sample()))
                               for name in ("compiled", "bf16") if name in algos}
                else:
                    updates = {name: factory(algos[name], replay, 256)
                               for name in ("compiled", "bf16") if name in algos}
                loops = {"corl loop": corl_loop(ref_fn, CorlReplay(replay)),
                         **{("loop" if name == "compiled" else "bf16 loop"): our_loop(update)
                            for name, update in updates.items()}}
            versions.append((fns, report, loops))
        fns, report, loops = versions[0]
        bf16_eager = fns.pop("bf16 eager", None)
        case = Case(algo_name, shape, step, fns, report, bf16_eager,
                    pair=2 if (algo_name == "td3_bc" and step == "update") else 1, threads=threads,
                    loops=loops)
        check = versions[1][0]
        case.agreement = agreement(check["corl"], check["eager"], 2 * case.pair, seed)
        cases.append(case)
    return cases


def count_flops(fn: Callable[[int], object], calls: int) -> float:
    """Matrix-product FLOPs per call, with FlopCounterMode's formulas (torch.utils.flop_counter);
    a plain dispatch mode, because FlopCounterMode's module tracking breaks
    ``autograd.grad`` with respect to a leaf (CORL's EDAC diversity term)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    with Counter():
        for i in range(calls):
            fn(i)
    return Counter.total / calls


def matmul_bound(fn: Callable[[int], object], calls: int, device: torch.device,
                 seconds: float = 0.3) -> float:
    """Updates/s if an update were nothing but its matrix products: those of ``calls`` calls of
    ``fn`` (our eager step) are recorded with their operands and replayed back to back, best of 3
    windows -- without the matrix-vector products, which the compiled step computes as fused
    reductions (offline_rl/training/inductor_pass.py, SkinnyMatmulPass)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    products = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
    recorded: list = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func._overloadpacket in products:
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                a, b = tensors[-2], tensors[-1]
                if not (a.dim() == 3 and (b.shape[-1] == 1 or a.shape[-1] == 1 or a.shape[-2] == 1)):
                    recorded.append((func, [x.clone() if isinstance(x, torch.Tensor) else x for x in args],
                                     kwargs))
            return func(*args, **kwargs)

    with Recorder():
        for i in range(calls):
            fn(i)

    def replay() -> None:
        for func, args, kwargs in recorded:
            func(*args, **kwargs)

    replay()
    best = 0.0
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            replay()
            count += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, count * calls / (time.perf_counter() - t0))
    return best


def timed(fn: Callable[[int], object], calls: int, start: int, device: torch.device,
          loop: Callable[[int], None] | None = None) -> float:
    """Updates/s of ``calls`` calls ``fn(start)``, ``fn(start + 1)``, ... -- or of ``loop(calls)``,
    a run loop doing ``calls`` updates."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    if loop is not None:
        loop(calls)
    else:
        for i in range(start, start + calls):
            fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return calls / (time.perf_counter() - t0)


def run_case(case: Case, device: torch.device, reps: int, window: float, eager: bool) -> None:
    names = [n for n in case.contenders if eager or n != "eager"]
    # FLOPs of one full cycle (the compiled step has the eager step's arithmetic)
    case.flops["corl"] = count_flops(case.contenders["corl"], case.pair)
    case.flops["eager"] = count_flops(case.contenders["eager"], case.pair)
    case.bound = matmul_bound(case.contenders["eager"], case.pair, device)
    if case.bf16_eager is not None:  # the bf16 step's products, with their bf16 operands
        case.bf16_bound = matmul_bound(case.bf16_eager, case.pair, device)
    # warm-up: compilation (timed by the report), caches, the allocator
    start = time.perf_counter()
    for i in range(2 * case.pair):
        case.contenders["compiled"](i)
        if "bf16" in case.contenders:
            case.contenders["bf16"](i)
    case.compile_seconds = case.report.compile_seconds
    names += list(case.loops)

    def time_it(name: str, calls: int, start: int) -> float:
        return timed(case.contenders.get(name), calls, start, device, case.loops.get(name))

    calls = {}
    for name in names:
        time_it(name, 2 * case.pair, 0)  # a loop's first call: its replay's pages, the allocator
        rate = time_it(name, 4 * case.pair, 0)
        # calls per window, a multiple of the cycle
        calls[name] = max(case.pair, int(round(rate * window / case.pair)) * case.pair)
    del start
    step = 0
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            case.rates[name].append(time_it(name, calls[name], step))
            step += calls[name]


def median_ratio(case: Case, name: str, baseline: str = "corl") -> float:
    pairs = list(zip(case.rates.get(name, []), case.rates[baseline]))
    return statistics.median(a / b for a, b in pairs) if pairs else float("nan")


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 10,
                dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an n x n x n matrix product on random data. CPU: the best of ``reps``. CUDA:
    the mean of ``reps`` products timed with CUDA events after 3 warm-ups (as KINDS.md measured
    the H200), at the size given (8192 there: 2048 leaves a GPU partly idle)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        torch.cuda.synchronize(device)
        return 2 * n ** 3 * reps / (start.elapsed_time(end) / 1e3) / 1e9
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9



def rtg_seconds(device: torch.device, transitions: int) -> float:
    """Soft returns-to-go (Eq. 19) for ``transitions`` transitions with an EDAC actor (Hopper
    shapes, episodes of 1000 steps, time-outs bootstrapped), as pre-training computes them."""
    torch.manual_seed(0)
    algo = make_algorithms(11, 3, device)["edac"]()
    obs = torch.randn(transitions, 11, device=device)
    rewards = torch.randn(transitions, device=device)
    terminals = torch.zeros(transitions, dtype=torch.bool, device=device)
    timeouts = torch.zeros(transitions, dtype=torch.bool, device=device)
    timeouts[999::1000] = True
    soft_returns_to_go(algo, obs[:1000], rewards[:1000], terminals[:1000], timeouts[:1000], 0.99, True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = soft_returns_to_go(algo, obs, rewards, terminals, timeouts, 0.99, True)
    float(out[0])
    return time.perf_counter() - t0


def percent(value: float) -> str:
    """Whole percent, with decimals below 10% (a GPU's share of small networks)."""
    return f"{value:.0f}%" if value >= 10 else f"{value:.1f}%" if value >= 0.1 else f"{value:.2f}%"


def table(cases: list[Case], peak: float, eager: bool, bf16_peak: float | None = None,
          bf16: bool = False) -> list[str]:
    head = ["algo", "shape", "step", "threads", "CORL-style upd/s"]
    if eager:
        head += ["eager upd/s"]
    head += ["compiled upd/s", "compiled / CORL"]
    if eager:
        head += ["eager / CORL"]
    if bf16:
        head += ["bf16 upd/s", "bf16 / fp32"]
    head += ["GFLOP/upd CORL", "GFLOP/upd ours", "GFLOP/s ours", "% of matmul peak"]
    if bf16_peak:
        head += ["% of bf16 peak"]
    head += ["matmul-only upd/s", "compiled / matmul-only"]
    if bf16:
        head += ["bf16 matmul-only upd/s", "bf16 / bf16 matmul-only"]
    head += ["compile s", "losses agree"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cases:
        med = {k: statistics.median(v) if v else float("nan") for k, v in c.rates.items()}
        cells = [c.algo_name, c.shape, c.step, str(c.threads), f"{med['corl']:.1f}"]
        if eager:
            cells += [f"{med['eager']:.1f}"]
        cells += [f"{med['compiled']:.1f}", f"**{median_ratio(c, 'compiled'):.2f}x**"]
        if eager:
            cells += [f"{median_ratio(c, 'eager'):.2f}x"]
        if bf16:
            cells += [f"{med.get('bf16', float('nan')):.1f}",
                      f"**{median_ratio(c, 'bf16', 'compiled'):.2f}x**"]
        ours = c.flops["eager"] / 1e9
        gflops = ours * med["compiled"]
        cells += [f"{c.flops['corl'] / 1e9:.3f}", f"{ours:.3f}", f"{gflops:.0f}", percent(100 * gflops / peak)]
        if bf16_peak:
            cells += [percent(100 * gflops / bf16_peak)]
        cells += [f"{c.bound:.0f}", f"{100 * med['compiled'] / c.bound:.0f}%"]
        if bf16:
            cells += [f"{c.bf16_bound:.0f}", f"{100 * med.get('bf16', float('nan')) / c.bf16_bound:.0f}%"]
        cells += [f"{c.compile_seconds:.1f}", f"{c.agreement:.0e}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def loop_table(cases: list[Case]) -> list[str]:
    """Run loop against bare step, ours and CORL-style, from the same interleaved repetitions."""
    bf16 = any("bf16 loop" in c.loops for c in cases)
    head = ["algo", "shape", "step", "threads", "compiled step upd/s", "our loop upd/s",
            "our loop / step"]
    if bf16:
        head += ["bf16 step upd/s", "bf16 loop upd/s", "bf16 loop / step"]
    head += ["CORL-style step upd/s", "CORL-style loop upd/s", "CORL loop / step",
             "**our loop / CORL loop**", "loop cost us/upd", "loop / step from the cost"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cases:
        if not c.loops:
            continue
        med = {k: statistics.median(v) if v else float("nan") for k, v in c.rates.items()}
        cells = [c.algo_name, c.shape, c.step, str(c.threads), f"{med['compiled']:.1f}",
                 f"{med['loop']:.1f}", f"{100 * median_ratio(c, 'loop', 'compiled'):.0f}%"]
        if bf16:
            cells += [f"{med.get('bf16', float('nan')):.1f}", f"{med.get('bf16 loop', float('nan')):.1f}",
                      f"{100 * median_ratio(c, 'bf16 loop', 'bf16'):.0f}%"]
        cells += [f"{med['corl']:.1f}", f"{med['corl loop']:.1f}",
                  f"{100 * median_ratio(c, 'corl loop', 'corl'):.0f}%",
                  f"**{median_ratio(c, 'loop', 'corl loop'):.2f}x**", f"{c.loop_cost:.1f}",
                  f"{100 / (1 + c.loop_cost * 1e-6 * med['compiled']):.1f}%"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="Hopper only, offline RL updates only, 3 repetitions, no eager column")
    parser.add_argument("--algos", nargs="*", default=list(ALGOS), choices=ALGOS,
                        help="with none: no update-step rows (e.g. only --runs-per-gpu)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--no-pretrain", action="store_true", help="offline RL updates only")
    parser.add_argument("--no-eager", action="store_true", help="leave out the eager column")
    parser.add_argument("--no-bf16", action="store_true",
                        help="leave out the bf16 columns (left out anyway without bf16 hardware)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                        help="torch CPU threads; every row is measured at each count")
    parser.add_argument("--no-loops", action="store_true",
                        help="leave out the run loops (ours and CORL-style, over a 1M-transition replay)")
    parser.add_argument("--transitions", type=int, default=1_000_000,
                        help="transitions in the run loops' replay")
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions per row")
    parser.add_argument("--window", type=float, default=0.7, help="seconds per timing window")
    parser.add_argument("--rtg", type=int, default=1_000_000,
                        help="transitions for the soft returns-to-go timing (0: skip)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda when there is one)")
    parser.add_argument("--out", default=None,
                        help="default docs/bench.md (CPU) or docs/bench_cuda.md (CUDA); '' to write nothing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-per-gpu", nargs="*", type=int, default=None, metavar="N",
                        help="independent TD3+BC runs side by side (default on CUDA: 1 4 16; on the "
                             "CPU: none); with no N: skip")
    parser.add_argument("--runs-seconds", type=float, default=10.0, help="timed seconds per runs-per-GPU row")
    parser.add_argument("--loop-worker", default=None, help=argparse.SUPPRESS)  # a runs_per_gpu process
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.loop_worker:
        loop_worker(Path(args.loop_worker), device, args.runs_seconds, args.seed)
        return
    if args.quick:
        args.shapes, args.no_pretrain, args.no_eager = ["hopper"], True, True
        args.reps = min(args.reps, 3)
    has_bf16, bf16_why = bf16_support(device)
    bf16 = has_bf16 and not args.no_bf16
    if args.runs_per_gpu is None:
        args.runs_per_gpu = [1, 4, 16] if device.type == "cuda" else []
    if args.out is None:
        args.out = str(ROOT / "docs" / ("bench_cuda.md" if device.type == "cuda" else "bench.md"))
    began = time.perf_counter()
    cpu = cpu_model()
    header = (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python "
              f"{platform.python_version()}, device {device}; bf16: {bf16_why}")
    bf16_peak = None
    if device.type == "cuda":
        header += (f" ({torch.cuda.get_device_name(device)}, TF32 "
                   f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})")
    print(header, flush=True)
    if device.type == "cuda":  # sizes that fill the GPU; the update steps run in float32
        peak = matmul_peak(device, n=8192)
        bf16_peak = matmul_peak(device, n=8192, dtype=torch.bfloat16)
        peak_text = (f"8192x8192 matmul: float32 **{peak:.0f} GFLOP/s** (the peak below), bf16 "
                     f"**{bf16_peak:.0f} GFLOP/s**")
    else:
        peak = matmul_peak(device)
        peak_text = f"2048x2048 float32 matmul in the same process: **{peak:.0f} GFLOP/s** (the peak below)"
    print(peak_text.replace("*", ""), flush=True)
    steps_of = {"td3_bc": ["update", "pretrain BC", "pretrain MC critic"],
                "edac": ["update", "pretrain soft BC", "pretrain soft critic"],
                "iql": ["update"]}
    cases: list[Case] = []
    replays = {} if args.no_loops else {shape: random_replay(*SHAPES[shape], device, args.transitions)
                                        for shape in args.shapes}
    threads_before = torch.get_num_threads()
    for threads in (args.threads if device.type == "cpu" else [threads_before]):
        torch.set_num_threads(threads)
        costs = {shape: loop_cost(replay) for shape, replay in replays.items()}
        for algo_name in args.algos:
            for shape in args.shapes:
                steps = steps_of[algo_name][:1] if args.no_pretrain else steps_of[algo_name]
                for case in build_cases(algo_name, shape, steps, device, pool_size=16,
                                        seed=args.seed, bf16=bf16, threads=threads,
                                        replay=replays.get(shape)):
                    case.loop_cost = costs.get(shape, float("nan"))
                    run_case(case, device, args.reps, args.window, not args.no_eager)
                    cases.append(case)
                    print(table([case], peak, not args.no_eager, bf16_peak, bf16)[-1], flush=True)
    torch.set_num_threads(threads_before)
    rtg = rtg_seconds(device, args.rtg) if args.rtg else None
    runs = runs_per_gpu(args.runs_per_gpu, device, args.runs_seconds) if args.runs_per_gpu else []
    elapsed = time.perf_counter() - began
    rows = table(cases, peak, not args.no_eager, bf16_peak, bf16)
    lines = [
        "# Update-step speed (`make bench`)",
        "",
        f"Measured {datetime.date.today().isoformat()} on: {header}.",
        f"{peak_text}.",
        "",
    ]
    if cases:
        lines += [
            "Updates per second, medians over "
            f"{args.reps} interleaved repetitions of ~{args.window:g} s; the speed-ups are medians of "
            "per-repetition ratios (`bf16 / fp32`: the bf16 step against the compiled float32 step "
            "of the same repetition). Batch 256; TD3+BC 2x256, EDAC 3x256 with N = 10 critics; "
            "LayerNorm in actor and critic (the default config). A TD3+BC update alternates critic "
            "steps and critic+actor steps (policy delay 2). GFLOP counts matrix products "
            "(FlopCounterMode), per update; the CORL-style update does more of them (see below).",
            "",
            *rows,
            "",
        ]
    if replays and cases:
        lines += [
            "## The run loop beside the step",
            "",
            f"What a run does per update (benchmarks/loops.py), in the same interleaved repetitions as "
            f"the table above: **our loop** is the `Trainer` running one phase whose update samples a "
            f"batch from a {args.transitions:,}-transition replay on the device and runs the compiled "
            "step (metrics kept in the loop's window, read back every 1,000 updates), as a run's "
            "offline RL and pre-training phases do, without evaluation or checkpoints; "
            "**CORL-style loop** is CORL's: its replay (one tensor per field, `np.random.randint`), "
            "the CORL-style step, its log dict every step. The step columns are the bare steps on a "
            "fixed pool of batches; `loop / step` is the median of per-repetition ratios. Those ratios "
            "drift by about 5% either way on a shared host; **loop cost** does not: the microseconds "
            "per update our loop spends outside the step (the Trainer's bookkeeping and a batch "
            "sampled from the replay, run with a step that does nothing; best of 5 windows of "
            "20,000 updates, benchmarks/loops.py: loop_cost), and `loop / step from the cost` is "
            "the ratio it allows: step time / (step time + loop cost).",
            "",
            *loop_table(cases),
            "",
        ]
    if rtg is not None:
        lines += [f"Soft returns-to-go (Eq. 19) of {args.rtg:,} transitions with an EDAC actor "
                  f"(entropy of every state, two log-depth scans): **{rtg:.2f} s**.", ""]
    if runs:
        lines += [f"Independent TD3+BC runs side by side on one {device.type.upper()} device (Hopper "
                  f"shapes, batch 256, 2x256, compiled; each its own process with a 1M-transition replay "
                  f"on the device and the training loop's metric window, read every 1,000 updates), "
                  f"timed together for {args.runs_seconds:g} s after all had compiled and warmed up:",
                  "", *runs_table(runs), ""]
        lines += [f"Failed: {r['runs']} runs: {r['failed']}" for r in runs if r["failed"]]
    command = " ".join(["python -m benchmarks.bench", *(argv if argv is not None else sys.argv[1:])])
    lines += [
        f"Command: `{command}` ({elapsed / 60:.1f} min). Flags: `--quick` (Hopper, updates only, 3 "
        "repetitions), `--algos`, `--shapes`, `--no-pretrain`, `--no-eager`, `--reps`, `--window`, "
        "`--rtg`, `--device`, `--threads`, `--no-bf16`, `--no-loops`, `--transitions`, `--runs-per-gpu`, `--runs-seconds`, `--out`; from make: "
        "`make bench BENCH_FLAGS=--quick` (`BENCH_FLAGS='--device cuda'` on a GPU machine, the default there).",
        "",
    ]
    if cases:
        lines += [
            ("The host may be shared: absolute rates drift between runs (the CORL-style TD3+BC update "
             "has measured 145-197 updates/s on this 2-core machine), the interleaved ratios much less."
             if device.type == "cpu" else
             "On a GPU these small networks leave most of the device idle: an update is bound by kernel "
             "launches and the host (Python, one CUDA-graph replay per compiled step), not by arithmetic; "
             "the runs-side-by-side table shows how much of the GPU a sweep can still use."),
            "",
            "What the columns compare:",
            "",
            "- **CORL-style**: the update written as CORL's td3_bc.py / edac.py (one module per TD3 "
            "critic, torch.distributions, EDAC's diversity term from a second critic forward with a "
            "masked [B, N, N] Gram matrix and its logging-only critic pass on random actions, `.item()` "
            "for every logged value, zero_grad / backward / step with `torch.optim.Adam` defaults, a "
            "Python loop for Polyak averaging), initialised with the same weights, fed the same batches.",
            "- **eager**: this package's step functions (`compile=eager`): batched twin critics, "
            "gradients only for the stepped optimiser's parameters, no repeated forward, EDAC's "
            "dQ/da written out as first-order operations, losses left on the device.",
            "- **compiled**: the same step functions, each one `torch.compile` graph (forward, "
            "backward, foreach Adam, `_foreach_lerp_` Polyak), `compile=auto`, the default.",
            "- **bf16**: the compiled steps with `precision=bf16`: the hidden layers' matrix "
            "products in bf16 with float32 accumulation, everything else float32 "
            "(offline_rl/precision.py, docs/precision.md); its matmul-only bound replays the bf16 "
            "step's own (bf16) products.",
            "- **compile s**: wall time of the first calls (tracing and Inductor; lower when Inductor's "
            "on-disk cache already holds the graphs).",
            "- **matmul-only**: the updates/s the step's matrix products alone allow -- recorded from "
            "one update (ours) and replayed back to back with the same BLAS calls, without the "
            "matrix-vector products the compiled step fuses. The hardware limit for this arithmetic; "
            "**compiled / matmul-only** is how close the compiled step comes to it.",
            "- **losses agree**: the largest relative difference between the values the CORL-style "
            "and our eager step log over their first two cycles from the same weights, batches and "
            "seed -- both compute the same update.",
            "",
            "See offline_rl/training/compiled.py for the compile rule (`compile=auto` compiles phases "
            "of at least 10,000 updates).",
        ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
