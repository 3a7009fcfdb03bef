"""``make bench``: updates/s of the TD3+BC and EDAC update steps on this machine.

Random batches with Hopper's shapes (obs 11, act 3), the paper's networks (TD3+BC 2x256, EDAC
3x256 with N = 10), batch 256, LayerNorm on. Prints one line per algorithm.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from offline_rl.algo.edac import EDAC
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch
from offline_rl.network import DeterministicActor, EnsembleCritic, TanhGaussianActor


def random_batch(obs_dim: int, act_dim: int, batch_size: int, device: torch.device) -> Batch:
    g = torch.Generator(device="cpu").manual_seed(0)
    tensors = (torch.randn(batch_size, obs_dim, generator=g), torch.rand(batch_size, act_dim, generator=g) * 2 - 1,
               torch.randn(batch_size, generator=g), torch.randn(batch_size, obs_dim, generator=g),
               torch.zeros(batch_size), torch.randn(batch_size, generator=g))
    return Batch(*(t.to(device) for t in tensors))


def make_algorithms(obs_dim: int, act_dim: int, device: torch.device) -> dict:
    return {
        "td3_bc": lambda: TD3BC(obs_dim, act_dim, partial(DeterministicActor, depth=2),
                                partial(EnsembleCritic, depth=2), device=device),
        "edac": lambda: EDAC(obs_dim, act_dim, partial(TanhGaussianActor, depth=3),
                             partial(EnsembleCritic, depth=3), num_critics=10, device=device),
    }


def updates_per_second(algo, batch: Batch, seconds: float, warmup: int = 5) -> float:
    for _ in range(warmup):
        algo.update(batch)
    if batch.observations.is_cuda:
        torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        algo.update(batch)
        count += 1
    if batch.observations.is_cuda:
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per algorithm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--algos", nargs="+", default=["td3_bc", "edac"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = random_batch(11, 3, 256, device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    for name, factory in make_algorithms(11, 3, device).items():
        if name in args.algos:
            rate = updates_per_second(factory(), batch, args.seconds)
            print(f"{name:8s} {rate:8.1f} updates/s")


if __name__ == "__main__":
    main()
