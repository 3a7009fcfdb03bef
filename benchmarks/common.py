"""What the benchmarks time: the problem shapes, the algorithms as the default config builds them
(TD3+BC 2x256, EDAC 3x256 with N = 10, IQL 2x256 with its V network; LayerNorm without affine),
random batches."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from offline_rl.algo.edac import EDAC
from offline_rl.algo.iql import IQL, StateValue
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch
from offline_rl.network import DeterministicActor, EnsembleCritic, TanhGaussianActor

SHAPES = {"hopper": (11, 3), "halfcheetah": (17, 6)}
ALGOS = ("td3_bc", "edac", "iql")
ROOT = Path(__file__).resolve().parents[1]


def random_batch(obs_dim: int, act_dim: int, batch_size: int, device: torch.device,
                 generator: torch.Generator | None = None) -> Batch:
    g = generator or torch.Generator(device="cpu").manual_seed(0)
    tensors = (torch.randn(batch_size, obs_dim, generator=g), torch.rand(batch_size, act_dim, generator=g) * 2 - 1,
               torch.randn(batch_size, generator=g), torch.randn(batch_size, obs_dim, generator=g),
               (torch.rand(batch_size, generator=g) < 0.01).float(), torch.randn(batch_size, generator=g) * 10)
    return Batch(*(t.to(device) for t in tensors))


def make_algorithms(obs_dim: int, act_dim: int, device: torch.device) -> dict:
    return {
        "td3_bc": lambda: TD3BC(obs_dim, act_dim, partial(DeterministicActor, depth=2),
                                partial(EnsembleCritic, depth=2), device=device),
        "edac": lambda: EDAC(obs_dim, act_dim, partial(TanhGaussianActor, depth=3),
                             partial(EnsembleCritic, depth=3), num_critics=10, device=device),
        "iql": lambda: IQL(obs_dim, act_dim, partial(DeterministicActor, depth=2),
                           partial(EnsembleCritic, depth=2), partial(StateValue, depth=2),
                           device=device),
    }

