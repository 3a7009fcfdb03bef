"""Is the in-graph Adam of offline_rl/algo/adam.py worth keeping? The TD3+BC update (Hopper shapes,
2x256, batch 256, float32) with the optimiser stepped four ways, interleaved in one process:

  in-graph   this package: the whole update (losses, torch.autograd.grad, Adam) one compiled graph
  compiled   torch's recipe: the losses compiled, backward through AOTAutograd's compiled backward,
             ``torch.compile(optimizer.step)`` (foreach Adam) -- torch's "compiled optimizer"
  fused      the losses compiled as above, torch's fused Adam (``fused=True``) stepped eagerly
  eager      nothing compiled, foreach Adam (the reference)

    python -m benchmarks.optimiser [--threads 2] [--repeats 3] [--seconds 10]

Prints updates/s per variant and repetition and each one's median ratio to ``in-graph``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from benchmarks.common import SHAPES, make_algorithms, random_batch
from offline_rl.training.compiled import attach_compiler

VARIANTS = ("in-graph", "compiled", "fused", "eager")


def _torch_optimiser_update(algo, fused: bool) -> Callable:
    """TD3+BC's update with torch's own Adam: the losses compiled, ``backward()``, then
    ``optimizer.step()`` -- compiled (foreach) or fused. Same delays and target updates."""
    if fused:
        for optimizer in (algo.actor_optimizer, algo.critic_optimizer):
            for group in optimizer.param_groups:
                group["foreach"], group["fused"] = False, True
    critic_loss = torch.compile(lambda batch: algo.critic_loss(batch)[0])
    actor_loss = torch.compile(lambda batch: algo.actor_loss(batch)[0])
    critic_step = algo.critic_optimizer.step if fused else torch.compile(algo.critic_optimizer.step)
    actor_step = algo.actor_optimizer.step if fused else torch.compile(algo.actor_optimizer.step)

    def update(batch):
        algo.total_updates += 1
        algo.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss(batch).backward()
        critic_step()
        if algo.total_updates % algo.policy_delay == 0:
            algo.actor_optimizer.zero_grad(set_to_none=True)
            loss = actor_loss(batch)
            # the actor's gradients only, as minimise() computes them
            grads = torch.autograd.grad(loss, list(algo.actor.parameters()))
            for p, g in zip(algo.actor.parameters(), grads):
                p.grad = g
            actor_step()
            algo.update_critic_target()
            algo.update_actor_target()
    return update


def build(variant: str):
    obs_dim, act_dim = SHAPES["hopper"]
    torch.manual_seed(0)
    algo = make_algorithms(obs_dim, act_dim, torch.device("cpu"))["td3_bc"]()
    if variant == "in-graph":
        attach_compiler(algo, "compile")
        return algo.update
    if variant == "eager":
        return algo.update
    return _torch_optimiser_update(algo, fused=variant == "fused")


def rate(update: Callable, batches: list, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        update(batches[done % len(batches)])
        done += 1
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    obs_dim, act_dim = SHAPES["hopper"]
    g = torch.Generator().manual_seed(0)
    batches = [random_batch(obs_dim, act_dim, 256, torch.device("cpu"), g) for _ in range(8)]
    updates = {}
    for variant in VARIANTS:  # build and warm up (compilation) before any timing
        start = time.perf_counter()
        updates[variant] = build(variant)
        for i in range(20):
            updates[variant](batches[i % len(batches)])
        print(f"{variant}: built and warmed up in {time.perf_counter() - start:.1f} s", flush=True)
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            rates[variant].append(rate(updates[variant], batches, args.seconds))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{v} {rates[v][-1]:.0f}" for v in VARIANTS),
              flush=True)
    print(f"\nTD3+BC update, Hopper shapes, batch 256, float32, {args.threads} thread(s), updates/s")
    print("| variant | " + " | ".join(f"rep {i + 1}" for i in range(args.repeats))
          + " | median ratio to in-graph |")
    print("|---|" + "---|" * args.repeats + "---|")
    for variant in VARIANTS:
        ratio = statistics.median(r / b for r, b in zip(rates[variant], rates["in-graph"]))
        print(f"| {variant} | " + " | ".join(f"{r:.0f}" for r in rates[variant]) + f" | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
