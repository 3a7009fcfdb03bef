"""The run loops ``make bench`` times beside the bare update steps: what a user's run does per
update, without evaluation or checkpoints.

  ours       this package's ``Trainer`` running one phase whose update samples a batch from a
             1M-transition ``ReplayBuffer`` on the device and runs the (compiled) step, metrics
             kept in the loop's window and read back every 1,000 updates -- as
             ``offline_rl/run.py: Run.offline_update`` and the pre-training phases do;
  CORL-style CORL's loop: its ReplayBuffer (one tensor per field, indices drawn with
             ``np.random.randint``, one indexing per field), ``[b.to(device) for b in batch]``, the
             CORL-style step (``.item()`` for every logged value) and its log dict kept every step
             (CORL hands it to ``wandb.log`` every step; here it is appended to a list).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from offline_rl.dataset.replay import ReplayBuffer
from offline_rl.tracker import NullTracker
from offline_rl.training.metrics import StepMetrics
from offline_rl.training.loop import Phase, Trainer

TRANSITIONS = 1_000_000


def random_replay(obs_dim: int, act_dim: int, device: torch.device, transitions: int = TRANSITIONS,
                  seed: int = 0) -> ReplayBuffer:
    """A full replay of ``transitions`` random transitions (actions in [-1, 1], 1% terminal)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    replay = ReplayBuffer(transitions, obs_dim, act_dim, device, seed=seed)
    for key, column in replay.storage.items():
        if key == "actions":
            column.copy_(torch.rand(column.shape, generator=g) * 2 - 1)
        elif key == "dones":
            column.copy_((torch.rand(column.shape, generator=g) < 0.01).float())
        else:
            column.copy_(torch.randn(column.shape, generator=g))
    replay.size = replay.position = transitions
    return replay


class CorlReplay:
    """CORL's ReplayBuffer (td3_bc.py / edac.py): one device tensor per field, sampled with numpy's
    global generator and one indexing per field; rewards and dones as [N, 1]."""

    def __init__(self, replay: ReplayBuffer):
        n = replay.size
        self._states = replay.storage["observations"][:n].contiguous()
        self._actions = replay.storage["actions"][:n].contiguous()
        self._rewards = replay.storage["rewards"][:n].reshape(-1, 1).contiguous()
        self._next_states = replay.storage["next_observations"][:n].contiguous()
        self._dones = replay.storage["dones"][:n].reshape(-1, 1).contiguous()
        self._returns = replay.storage["returns_to_go"][:n].reshape(-1, 1).contiguous()
        self._size = self._pointer = n
        self.device = replay.device

    def sample(self, batch_size: int) -> list[torch.Tensor]:
        indices = np.random.randint(0, min(self._size, self._pointer), size=batch_size)
        return [self._states[indices], self._actions[indices], self._rewards[indices],
                self._next_states[indices], self._dones[indices], self._returns[indices]]


def our_loop(update: Callable[[], object]) -> Callable[[int], None]:
    """``calls`` updates through the Trainer (one phase, no evaluation, no checkpoints)."""

    def run(calls: int) -> None:
        trainer = Trainer([Phase("offline_rl", update, calls)], NullTracker(), None,
                          log_every=1000, eval_every=0, progress=False)
        trainer.run()

    return run


def corl_loop(step: Callable[[tuple], dict], replay: CorlReplay, batch_size: int = 256) -> Callable[[int], None]:
    """``calls`` iterations of CORL's training loop around the CORL-style ``step``."""
    logged: list[dict] = []

    def run(calls: int) -> None:
        for _ in range(calls):
            batch = replay.sample(batch_size)
            batch = [b.to(replay.device) for b in batch]
            logged.append(step(batch))
        logged.clear()

    return run


def loop_cost(replay: ReplayBuffer, calls: int = 20_000, windows: int = 5) -> float:
    """Microseconds per update our loop spends outside the step: the Trainer's bookkeeping and a
    batch sampled into the phase's buffers (``replay.sampler``), with a step that does nothing --
    the best of ``windows`` windows. The interleaved loop/step ratios drift by +-10% on a shared
    host; this cost does not, and ``step time / (step time + cost)`` is the ratio it allows."""
    sample, metrics = replay.sampler(256), StepMetrics(("loss",), torch.zeros(1, device=replay.device))

    def update() -> StepMetrics:
        sample()
        return metrics

    loop = our_loop(update)
    loop(calls // 10)
    best = float("inf")
    for _ in range(windows):
        if replay.device.type == "cuda":
            torch.cuda.synchronize(replay.device)
        t0 = time.perf_counter()
        loop(calls)
        if replay.device.type == "cuda":
            torch.cuda.synchronize(replay.device)
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best
