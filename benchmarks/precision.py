"""``python -m benchmarks.precision``: where ``precision=bf16`` puts the float32 / bf16 boundary,
measured, and how far bf16 moves the numbers; writes docs/precision.md.

1. **The boundary** (TD3+BC, Hopper shapes, batch 256, default networks, compiled, one thread,
   interleaved repetitions in one process): updates/s and one batch's numerics of
   - ``fp32``: no autocast (``precision=fp32``);
   - ``naive``: the whole step in bf16 autocast, output layers and LayerNorm included;
   - ``ln-bf16``: output layers in float32, LayerNorm on bf16 inputs;
   - ``bf16``: output layers and LayerNorm in float32 (what ``precision=bf16`` does).
   The variants are made by swapping the network layers' forward methods for plain ones while
   that variant runs (this file only).
2. **One batch, per tensor** (TD3+BC and EDAC N = 10, same weights, batch and random numbers):
   relative error of bf16 against float32 for the TD target, the losses and every critic
   gradient, next to the error that rounding only the batch to bf16 causes in float32 arithmetic
   (the gradients' own sensitivity).
3. **After 10k updates** on ``hopper-medium-local`` (TD3+BC, seed 0): the critic's Q-values on
   10,000 dataset pairs, bf16 against fp32, next to fp32 compiled against fp32 eager (the
   difference float rounding alone grows into over as many updates).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import ROOT, make_algorithms, random_batch
from offline_rl.dataset.replay import Batch
from offline_rl.machine import cpu_model
from offline_rl.network import EnsembleLayerNorm, EnsembleLinear, LayerNorm, OutputLinear
from offline_rl.precision import autocast, cpu_bf16
from offline_rl.training.compiled import attach_compiler

# ----- the boundary variants --------------------------------------------------------------------


def _plain_ensemble_forward(self, x):
    return torch.baddbmm(self.bias, x, self.weight)


def _plain_ensemble_member(self, index, x):
    return torch.addmm(self.bias[index], x, self.weight[index])


def _plain_ensemble_norm(self, x):
    x = nn.functional.layer_norm(x, x.shape[-1:], eps=self.eps)
    return x if self.weight is None else x * self.weight + self.bias


def _plain_ensemble_norm_member(self, index, x):
    x = nn.functional.layer_norm(x, x.shape[-1:], eps=self.eps)
    return x if self.weight is None else x * self.weight[index] + self.bias[index]


OUTPUT_PLAIN = {(OutputLinear, "forward"): nn.Linear.forward,
                (EnsembleLinear, "forward"): _plain_ensemble_forward,
                (EnsembleLinear, "member"): _plain_ensemble_member}
NORM_PLAIN = {(LayerNorm, "forward"): nn.LayerNorm.forward,
              (EnsembleLayerNorm, "forward"): _plain_ensemble_norm,
              (EnsembleLayerNorm, "member"): _plain_ensemble_norm_member}
#: variant -> (precision, the layer methods replaced by plain ones)
VARIANTS = {"fp32": ("fp32", {}), "naive": ("bf16", {**OUTPUT_PLAIN, **NORM_PLAIN}),
            "ln-bf16": ("bf16", NORM_PLAIN), "bf16": ("bf16", {})}
DESCRIPTIONS = {
    "fp32": "no autocast (`precision=fp32`)",
    "naive": "the whole step in bf16 autocast, output layers and LayerNorm in bf16",
    "ln-bf16": "output layers float32, LayerNorm on bf16 inputs",
    "bf16": "output layers and LayerNorm float32 (`precision=bf16`)",
}


@contextlib.contextmanager
def variant_layers(name: str):
    """The network layers as variant ``name`` has them, for the duration of the block."""
    replaced = VARIANTS[name][1]
    saved = {key: key[0].__dict__[key[1]] for key in replaced}
    try:
        for (cls, attr), fn in replaced.items():
            setattr(cls, attr, fn)
        yield
    finally:
        for (cls, attr), fn in saved.items():
            setattr(cls, attr, fn)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def one_batch(algo, data: Batch, precision: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """The TD target, Q-values, losses and critic gradients of one batch in ``precision``."""
    params = list(algo.critic.parameters())
    with autocast(precision, "cpu"):
        torch.manual_seed(seed)
        target = algo.td_target(data)
        q, _ = algo.critic_values(data)
        critic_loss, _ = algo.critic_loss(data, target)
        grads = torch.autograd.grad(critic_loss, params)
        torch.manual_seed(seed)
        actor_loss, _ = algo.actor_loss(data)
    out = {"TD target": target, "Q(s, a)": q, "critic loss": critic_loss, "actor loss": actor_loss}
    names = [n for n, _ in algo.critic.named_parameters()]
    out.update({f"grad critic.{n}": g for n, g in zip(names, grads)})
    out["grad critic (all)"] = torch.cat([g.flatten() for g in grads])
    return out


def rounded(data: Batch) -> Batch:
    return Batch(data.observations.bfloat16().float(), data.actions.bfloat16().float(), *data[2:])


# ----- 1. speed and numerics per variant -------------------------------------------------------


def boundary(reps: int, window: float) -> list[str]:
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    pool = [random_batch(11, 3, 256, device, g) for _ in range(16)]
    torch.manual_seed(0)
    base = make_algorithms(11, 3, device)["td3_bc"]()
    reference = one_batch(base, pool[0], "fp32")
    algos, numerics = {}, {}
    for name, (precision, _) in VARIANTS.items():
        with variant_layers(name):
            numerics[name] = one_batch(base, pool[0], precision)
            algo = copy.deepcopy(base)
            attach_compiler(algo, "compile", precision=precision)
            for i in range(4):  # compile both step functions
                algo.update(pool[i % 16])
        algos[name] = algo
    rates: dict[str, list[float]] = {name: [] for name in algos}
    calls = {}
    for name, algo in algos.items():
        with variant_layers(name):
            t0 = time.perf_counter()
            for i in range(20):
                algo.update(pool[i % 16])
            calls[name] = max(2, 2 * int(window * 20 / (time.perf_counter() - t0) / 2))
    names = list(algos)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            with variant_layers(name):
                t0 = time.perf_counter()
                for i in range(calls[name]):
                    algos[name].update(pool[i % 16])
                rates[name].append(calls[name] / (time.perf_counter() - t0))
    rows = ["| variant | what runs in bf16 | updates/s | / fp32 | TD target | Q(s, a) | critic loss "
            "| actor loss | critic gradient |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates["fp32"]))
        errs = [relative_error(numerics[name][k], reference[k])
                for k in ("TD target", "Q(s, a)", "critic loss", "actor loss", "grad critic (all)")]
        rows.append(f"| {name} | {DESCRIPTIONS[name]} | {statistics.median(rates[name]):.0f} | "
                    f"**{ratio:.2f}x** | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
        print(rows[-1], flush=True)
    return rows


# ----- 2. one batch, per tensor ----------------------------------------------------------------


def per_tensor(algo_name: str) -> list[str]:
    device = torch.device("cpu")
    data = random_batch(11, 3, 256, device, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    algo = make_algorithms(11, 3, device)[algo_name]()
    fp32 = one_batch(algo, data, "fp32")
    bf16 = one_batch(algo, data, "bf16")
    data_rounded = one_batch(algo, rounded(data), "fp32")
    rows = [f"| {algo_name} tensor | shape | bf16 vs fp32 | batch rounded to bf16, fp32 arithmetic |",
            "|---|---|---|---|"]
    for key in fp32:
        rows.append(f"| {key} | {tuple(fp32[key].shape)} | {relative_error(bf16[key], fp32[key]):.1e} | "
                    f"{relative_error(data_rounded[key], fp32[key]):.1e} |")
    return rows


# ----- 3. Q-values after 10k updates ----------------------------------------------------------


def after_updates(updates: int, dataset_id: str) -> list[str]:
    from offline_rl.dataset.minari_source import read_minari_dataset
    from offline_rl.dataset.replay import ReplayBuffer

    device = torch.device("cpu")
    data = read_minari_dataset(dataset_id)
    probe_rows = torch.arange(0, len(data), max(1, len(data) // 10_000))[:10_000]
    trained = {}
    seconds = {}
    for name, (precision, mode) in {"fp32": ("fp32", "compile"), "bf16": ("bf16", "compile"),
                                     "fp32 eager": ("fp32", "eager")}.items():
        torch.manual_seed(0)
        algo = make_algorithms(data.obs_dim, data.act_dim, device)["td3_bc"]()
        replay = ReplayBuffer.from_offline(data, device, gamma=algo.gamma, normalize_states=True, seed=0)
        attach_compiler(algo, mode, precision=precision)
        t0 = time.perf_counter()
        for _ in range(updates):
            algo.update(replay.sample(256))
        seconds[name] = time.perf_counter() - t0
        probe = replay.gather(probe_rows.to(device))
        with torch.no_grad():
            trained[name] = algo.critic(probe.observations, probe.actions)[0]
        print(f"{name}: {updates} updates in {seconds[name]:.0f} s", flush=True)
    rows = ["| compared | mean Q (first) | mean abs. difference | mean relative difference |",
            "|---|---|---|---|"]
    for a, b in (("bf16", "fp32"), ("fp32 eager", "fp32")):
        diff = (trained[a] - trained[b]).abs()
        rows.append(f"| {a} vs {b} | {float(trained[b].mean()):.2f} | {float(diff.mean()):.3f} | "
                    f"{float((diff / trained[b].abs().clamp_min(1e-6)).mean()):.2e} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--updates", type=int, default=10_000, help="for part 3 (0: skip)")
    parser.add_argument("--dataset", default="local/hopper/medium-v0")
    parser.add_argument("--out", default=str(ROOT / "docs" / "precision.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    has_bf16, why = cpu_bf16()
    header = (f"{cpu_model()}, {os.cpu_count()} cores ({why}), {args.threads} torch thread(s), "
              f"torch {torch.__version__}, Python {platform.python_version()}")
    print(header, flush=True)
    lines = ["# bf16 update steps: the boundary and the numbers (`python -m benchmarks.precision`)", "",
             f"Measured {datetime.date.today().isoformat()} on: {header}.", "",
             "## 1. Where the boundary goes", "",
             f"TD3+BC update (Hopper shapes, batch 256, 2x256 with LayerNorm), compiled; updates/s are "
             f"medians of {args.reps} interleaved repetitions of ~{args.window:g} s, `/ fp32` the median "
             "of per-repetition ratios. The error columns: relative error (L2 norm of the difference "
             "over the L2 norm of the float32 value) of one batch, same weights and random numbers.", "",
             *boundary(args.reps, args.window), ""]
    lines += ["## 2. One batch, per tensor (`precision=bf16`)", "",
              "Same weights, batch and random numbers; relative error against float32. The right column "
              "is float32 arithmetic on the batch rounded to bf16 (observations and actions): how "
              "sensitive each tensor is to a change of the inputs of bf16's size.", ""]
    for algo_name in ("td3_bc", "edac"):
        lines += per_tensor(algo_name) + [""]
    if args.updates:
        lines += [f"## 3. After {args.updates:,} updates on `{args.dataset}`", "",
                  f"TD3+BC from the same seed and batches; the first critic's Q(s, a) on 10,000 dataset "
                  f"pairs spread over the dataset. `fp32 eager vs fp32` is the difference float rounding "
                  f"alone (the compiled step's fused kernels) grows into over as many updates.", "",
                  *after_updates(args.updates, args.dataset), ""]
    command = " ".join(["python -m benchmarks.precision", *(argv if argv is not None else sys.argv[1:])])
    lines += [f"Command: `{command}` ({(time.perf_counter() - began) / 60:.1f} min).", ""]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
