"""Compiled update steps: each step function (TD3+BC's critic step and critic+actor step, EDAC's
whole update, the pre-training steps) becomes one ``torch.compile`` graph -- forward, backward
(``torch.autograd.grad`` traced), the in-graph foreach Adam of ``algo.adam.adam_step`` and the
``_foreach_lerp_`` Polyak update -- with no host synchronisation. Python chooses which graph to run
(TD3+BC's policy delay), so no step counter enters a graph. Step functions call the algorithm's
(possibly overridden) methods, so a subclass's losses are compiled as they are; whatever dynamo
cannot trace makes that step run eagerly, with a warning (mode auto).

    report = attach_compiler(algo, mode="auto", updates=cfg.updates)

modes
    eager    never compile: the same step functions, run by PyTorch op by op (for debugging)
    auto     compile a step function when the phase that runs it is long enough to repay the
             compilation (``min_updates`` calls, default 10,000; see below); if compiling fails,
             warn and run that step eagerly
    compile  compile every step function whatever the run's length; a failure is an error

The rule of ``auto``. Compilation happens lazily, at a step function's first call, and costs
~5-30 s per graph on a 2-core CPU (a few seconds when Inductor's on-disk cache already holds it);
it saves ~1.9 ms per TD3+BC update and ~30 ms per EDAC update there (docs/bench.md). A phase of
fewer than ~10,000 updates would spend about as long compiling as it saves, so it stays eager
(tests, smoke runs); a 1M-update run compiles in well under a minute and saves ~30 min (TD3+BC) to
~7 h (EDAC). The decision depends only on the configured length of the phase (never on how far a
run got), so a run resumed from a checkpoint takes the same path as before it stopped -- which
keeps a resumed run bit-identical to an uninterrupted one.

Numerics: on the CPU, Inductor's random numbers are replaced by PyTorch's own
(``fallback_random``), so a compiled step draws the same noise from the same global generator as
the eager one; the remaining differences are float rounding (fused kernels), ~1e-7 to 1e-6
relative after a few updates (tests/test_speed.py). On CUDA the graphs use Inductor's own Philox
random numbers (CUDA-graph safe), seeded from the global generator: reproducible and resumable,
but not the eager path's draws.

On the CPU the graph's wrapper is C++ (``cpp_wrapper``) and ``SkinnyMatmulPass``
(training/inductor_pass.py) turns matrix products with a dimension of size 1 into fused products
and sums. On CUDA the graphs are captured
as CUDA graphs (``triton.cudagraphs``: one launch per step): optimiser states are marked static,
Adam's step counters move to the device (``capturable``; ``Algorithm.load_state_dict`` resets the
flag a checkpoint carries to this process's, so CUDA and CPU checkpoints load on either), and the
returned metrics are cloned out of the graph's memory. A step Inductor runs without a CUDA graph
is counted (``cudagraph_skips``, metric ``compile/cudagraph_skips``) and warned about once.
tests/test_cuda.py checks this path against eager on a GPU, and scripts/device_check.sh runs those
tests and the CUDA benchmark on a lent GPU (docs/device_check.md); until a session has run it
there, the CUDA path is unproven."""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from offline_rl.algo.adam import check_adam, init_adam_state, set_capturable
from offline_rl.config import COMPILE_MODES
from offline_rl.precision import RESOLVED, autocast
from offline_rl.training.metrics import StepMetrics, pack

MODES = COMPILE_MODES
DEFAULT_MIN_UPDATES = 10_000


@dataclass
class StepRecord:
    """What happened to one step function."""

    name: str
    status: str = "pending"  # pending | compiled | eager (by rule or mode) | fallback (failed)
    compile_seconds: float = 0.0  # wall time of the calls that compiled (first call, recompiles)
    graphs: int = 0  # compilations (1 normally; more means recompiles)
    reason: str = ""
    cudagraph_skips: int = 0  # CUDA: times Inductor ran this step without a CUDA graph


@dataclass
class CompileReport:
    """Per step function: compiled or not, why, and the compilation wall time so far."""

    mode: str
    device: str
    min_updates: int
    precision: str = "fp32"
    steps: dict[str, StepRecord] = field(default_factory=dict)

    @property
    def compile_seconds(self) -> float:
        return sum(r.compile_seconds for r in self.steps.values())

    def metrics(self) -> dict[str, float]:
        """For the tracker: total compilation seconds, and counts (on CUDA also the steps that
        run without a CUDA graph)."""
        records = self.steps.values()
        metrics = {"compile/seconds": round(self.compile_seconds, 3),
                   "compile/compiled_steps": float(sum(r.status == "compiled" for r in records)),
                   "compile/eager_steps": float(sum(r.status in ("eager", "fallback") for r in records)),
                   "compile/fallbacks": float(sum(r.status == "fallback" for r in records)),
                   "compile/recompiles": float(sum(max(r.graphs - 1, 0) for r in records))}
        if self.device.startswith("cuda"):
            metrics["compile/cudagraph_skips"] = float(sum(r.cudagraph_skips > 0 for r in records))
        return metrics

    def summary(self) -> str:
        parts = [f"{r.name}: {r.status}"
                 + (f" ({r.compile_seconds:.1f} s)" if r.compile_seconds else "")
                 + (" without CUDA graph" if r.cudagraph_skips else "")
                 + (f" [{r.reason}]" if r.reason else "") for r in self.steps.values()]
        return (f"compile={self.mode} on {self.device} in {self.precision}: "
                + ("; ".join(parts) or "no step run yet"))




def describe(exc: BaseException) -> str:
    """One line: the exception and, for a compiler's own failure, what it raised."""
    inner = getattr(exc, "inner_exception", None) or exc.__cause__
    text = " ".join(str(exc).split())
    if inner is not None and str(inner) not in text:
        text += f" ({type(inner).__name__}: {' '.join(str(inner).split())})"
    return f"{type(exc).__name__}: {text}"[:400]


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _cudagraph_skips() -> int:
    """Inductor's count of graphs it ran without CUDA graphs (a mutated non-static input, a CPU
    tensor, ...); it logs the reason under TORCH_LOGS=perf_hints."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


class CompiledStep:
    """One step function: compiled lazily at its first call, timed; on failure (mode auto) a
    warning and eager execution from then on."""

    def __init__(self, compiler: "StepCompiler", record: StepRecord, fn: Callable):
        self.compiler, self.record, self.fn = compiler, record, fn
        self.compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=compiler.backend,
                                      options=compiler.inductor_options())

    def __call__(self, args: tuple) -> StepMetrics:
        record, fn = self.record, self.fn
        if record.status == "fallback":
            return StepMetrics(*fn(*args))
        graphs = _graph_count()
        skips = _cudagraph_skips() if self.compiler.cudagraphs else 0
        start = time.perf_counter()
        config = torch._dynamo.config
        saved = config.trace_autograd_ops, config.recompile_limit
        try:
            # autograd.grad is traced into the graph only inside these calls, never globally (with
            # it on, split graphs have produced wrong updates); set directly, as
            # config.patch costs ~20 us a call. The recompile limit is per code object and process:
            # many algorithm instances (tests, make bench) each compile the same step methods.
            config.trace_autograd_ops, config.recompile_limit = True, max(saved[1], 64)
            if self.compiler.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = self.compiled(*args)
        except Exception as exc:  # compilation happens before the graph runs: nothing applied
            if self.compiler.mode == "compile":
                raise
            record.status, record.reason = "fallback", describe(exc)
            warnings.warn(f"compile=auto: compiling the update step '{record.name}' failed, running it "
                          f"eagerly ({record.reason})", RuntimeWarning, stacklevel=4)
            return StepMetrics(*fn(*args))
        finally:
            config.trace_autograd_ops, config.recompile_limit = saved
        new_graphs = _graph_count() - graphs
        if new_graphs or record.status == "pending":
            seconds = time.perf_counter() - start
            record.compile_seconds += seconds
            record.graphs += max(new_graphs, 1 if record.status == "pending" else 0)
            record.status = "compiled"
            print(f"compiled the update step '{record.name}' in {seconds:.1f} s"
                  + (f" (graph {record.graphs}: a recompilation)" if record.graphs > 1 else ""),
                  file=sys.stderr, flush=True)
        names, values = out
        if self.compiler.cudagraphs:  # outputs live in the CUDA graph's memory until its next replay
            values = values.clone()
            skipped = _cudagraph_skips() - skips
            if skipped and not record.cudagraph_skips:
                warnings.warn(f"the compiled update step '{record.name}' runs without a CUDA graph "
                              f"(Inductor skipped it; TORCH_LOGS=perf_hints says why): correct, but "
                              f"one kernel launch per operation", RuntimeWarning, stacklevel=4)
            record.cudagraph_skips += skipped
        return StepMetrics(names, values)


class StepCompiler:
    """Holds an algorithm's compiled step functions (``algo.compiler``); see the module doc."""

    def __init__(self, algo, mode: str, updates: int | None, min_updates: int,
                 backend: str | Callable = "inductor", precision: str = "fp32"):
        self.algo, self.mode = algo, mode
        self.updates = updates
        self.min_updates = int(min_updates)
        self.backend = backend
        self.precision = precision
        self.device = torch.device(algo.device)
        self.cudagraphs = self.device.type == "cuda" and backend == "inductor"
        self.report = CompileReport(mode, str(self.device), self.min_updates, precision)
        self.steps: dict[str, CompiledStep | None] = {}
        self.prepared = False

    def inductor_options(self) -> dict[str, Any] | None:
        """Inductor's options on this device. Inductor (and the pass) are imported here, as the
        first step is compiled: importing them costs ~1.5 s of every process that never does."""
        if self.backend != "inductor":
            return None
        from offline_rl.training.inductor_pass import SKINNY_MATMULS

        options: dict[str, Any] = {"post_grad_custom_pre_pass": SKINNY_MATMULS}
        if self.cudagraphs:  # Inductor's own (Philox) random numbers: CUDA-graph safe
            options["triton.cudagraphs"] = True
            # Inductor's loop reordering after fusion failed every step here on an H200 (torch
            # 2.11: AssertionError in Scheduler.reorder_loops_by_dep_pair, 2026-12-04); off, the
            # steps compiled and ran as CUDA graphs (TD3+BC 3,820 upd/s). These launch-bound
            # steps have no loops worth reordering (docs/device_check.md).
            options["loop_ordering_after_fusion"] = False
        else:  # PyTorch's random numbers, the eager draws; a C++ wrapper: ~5% on TD3+BC
            options.update({"fallback_random": True, "cpp_wrapper": self.device.type == "cpu"})
        return options

    def __deepcopy__(self, memo):  # a copied algorithm starts without compiled graphs
        return StepCompiler(memo.get(id(self.algo), self.algo), self.mode, self.updates,
                            self.min_updates, self.backend, self.precision)

    def step_function(self, fn: Callable) -> Callable:
        """What is compiled (or run eagerly) for the step function ``fn``: ``fn`` in the run's
        precision (bf16: inside autocast, offline_rl/precision.py), its metrics packed into one
        vector (training/metrics.py) -- both traced into the graph with the step."""
        precision, device = self.precision, self.device

        def step(*args: Any) -> tuple[tuple[str, ...], torch.Tensor]:
            with autocast(precision, device):
                return pack(fn(*args))

        return step

    def wants_compile(self, planned: int | None) -> tuple[bool, str]:
        if self.mode == "eager":
            return False, "compile=eager"
        if self.mode == "compile":
            return True, ""
        planned = self.updates if planned is None else planned
        if planned is None:
            return True, ""
        if planned < self.min_updates:
            return False, f"{planned} updates < {self.min_updates}: not worth compiling"
        return True, ""

    def prepare(self) -> None:
        """Optimiser states created now (a graph updates them in place); on CUDA, Adam's step
        counters on the device and every state tensor at a static address (CUDA graphs)."""
        if self.prepared:
            return
        for optimizer in self.algo.optimizers():
            try:
                check_adam(optimizer)
            except NotImplementedError:
                continue  # a step that uses it fails to compile and runs eagerly
            set_capturable(optimizer, self.cudagraphs)  # also the states of a loaded checkpoint
            init_adam_state(optimizer)
            if self.cudagraphs:
                for state in optimizer.state.values():
                    for tensor in state.values():
                        torch._dynamo.mark_static_address(tensor)
        self.prepared = True

    def state_loaded(self) -> None:
        """After ``algo.load_state_dict``: the optimisers hold new state tensors, with the flags of
        the process that saved them; prepare them again if steps were already prepared (CUDA
        graphs: static addresses), else leave them as eager Adam wants them until then."""
        if self.prepared:
            self.prepared = False
            self.prepare()
        else:
            for optimizer in self.algo.optimizers():
                set_capturable(optimizer, False)

    def call(self, name: str, fn: Callable, args: tuple, planned: int | None) -> StepMetrics:
        if name not in self.steps:
            record = self.report.steps[name] = StepRecord(name)
            compile_it, record.reason = self.wants_compile(planned)
            step = None
            if compile_it:
                try:
                    self.prepare()
                    step = CompiledStep(self, record, self.step_function(fn))
                except NotImplementedError as exc:  # an optimiser the in-graph Adam does not do
                    if self.mode == "compile":
                        raise
                    record.status, record.reason = "fallback", str(exc)
                    warnings.warn(f"compile=auto: the update step '{name}' runs eagerly ({exc})",
                                  RuntimeWarning, stacklevel=3)
            else:
                record.status = "eager"
            self.steps[name] = step
        step = self.steps[name]
        if step is None:
            return StepMetrics(*self.step_function(fn)(*args))
        return step(args)


def attach_compiler(algo, mode: str = "auto", updates: int | None = None,
                    min_updates: int | None = None, backend: str | Callable = "inductor",
                    precision: str = "fp32") -> CompileReport:
    """Run ``algo``'s update steps (and the pre-training steps built on it) compiled, as ``mode``
    says, in ``precision`` (``fp32`` or ``bf16``, as ``offline_rl.precision.resolve`` gives it);
    returns the report, which fills in as steps run (``report.metrics()`` to log).

    ``updates``: the run's offline RL updates (the length of the phase calling ``algo.update``);
    pre-training phases pass their own length. ``backend``: torch.compile's (tests)."""
    if mode not in MODES:
        raise ValueError(f"compile={mode!r} is not allowed: expected one of {', '.join(MODES)}")
    if precision not in RESOLVED:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(RESOLVED)} (resolved)")
    if mode != "eager" and not hasattr(torch, "compile"):
        warnings.warn("torch.compile is not available: running eagerly", RuntimeWarning, stacklevel=2)
        mode = "eager"
    min_updates = DEFAULT_MIN_UPDATES if min_updates is None else min_updates
    algo.compiler = StepCompiler(algo, mode, updates, min_updates, backend, precision)
    return algo.compiler.report


def compile_metrics(reports: list[CompileReport]) -> dict[str, float]:
    """The reports of several algorithms (the offline one, a fine-tuning agent) as one set of
    tracker metrics: ``compile/seconds`` etc., summed."""
    total: dict[str, float] = {}
    for report in reports:
        for key, value in report.metrics().items():
            total[key] = round(total.get(key, 0.0) + value, 3)
    return total
