"""Replay held as tensors on the training device; batches are sampled on the device too."""

from __future__ import annotations

import hashlib
import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch

from offline_rl.dataset.episodes import OfflineData, returns_to_go


class Batch(NamedTuple):
    observations: torch.Tensor  # (B, obs_dim)
    actions: torch.Tensor  # (B, act_dim)
    rewards: torch.Tensor  # (B,)
    next_observations: torch.Tensor  # (B, obs_dim)
    dones: torch.Tensor  # (B,) 1.0 where the transition terminated (no bootstrap)
    returns_to_go: torch.Tensor  # (B,) Monte-Carlo targets (zeros where unknown, e.g. online data)


FIELDS = Batch._fields


class StateNormalizer:
    """TD3+BC's state normalisation: (s - mean) / (std + 1e-3), statistics from the dataset."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, eps: float = 1e-3):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32) + eps

    @classmethod
    def identity(cls, dim: int) -> "StateNormalizer":
        return cls(np.zeros(dim), np.ones(dim), eps=0.0)

    @classmethod
    def fit(cls, observations: np.ndarray) -> "StateNormalizer":
        return cls(observations.mean(0), observations.std(0))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return ((obs - self.mean) / self.std).astype(np.float32)

    def state_dict(self) -> dict:
        return {"mean": torch.as_tensor(self.mean), "std": torch.as_tensor(self.std)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "StateNormalizer":
        return cls(state["mean"].cpu().numpy(), state["std"].cpu().numpy(), eps=0.0)


class ReplayBuffer:
    """Fixed-capacity transition storage on ``device`` with on-device uniform sampling.

    Offline data fills it once (``from_offline``); online fine-tuning appends with ``add``.
    Sampling draws indices with the buffer's own generator, whose state is checkpointed.

    A transition is one row of ``rows`` (observation, action, reward, next observation, done,
    return-to-go side by side: 2 x obs_dim + act_dim + 3 floats); ``storage[field]`` are column
    views of it. A batch is then one gather of whole rows -- B random reads of ~2 cache lines
    each -- and its fields are views of that; one gather per field read 6 B scattered
    locations and took ~5% of a compiled TD3+BC update's time on a 1M-transition replay
    (profiled, docs/bench.md).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str,
                 seed: int = 0, normalizer: StateNormalizer | None = None, reward_scale: float = 1.0):
        self.device = torch.device(device)
        # every reward added is multiplied by this (an algorithm's reward normalisation, e.g.
        # IQL's); evaluation returns and normalised scores are the environment's, unscaled
        self.reward_scale = float(reward_scale)
        self.capacity = int(capacity)
        shapes = {"observations": (obs_dim,), "actions": (act_dim,), "rewards": (),
                  "next_observations": (obs_dim,), "dones": (), "returns_to_go": ()}
        widths = [s[0] if s else 1 for s in shapes.values()]
        self.rows = torch.zeros((self.capacity, sum(widths)), dtype=torch.float32, device=self.device)
        # field -> (first column, last column + 1, a vector field?)
        self.columns: dict[str, tuple[int, int, bool]] = {}
        start = 0
        for (key, shape), width in zip(shapes.items(), widths):
            self.columns[key] = (start, start + width, bool(shape))
            start += width
        self.storage = {k: self._field(self.rows, k) for k in shapes}
        # which transitions ended an episode by a time limit (or a cut): for returns-to-go
        self.timeouts = torch.zeros(self.capacity, dtype=torch.bool, device=self.device)
        self.size = 0
        self.position = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.normalizer = normalizer or StateNormalizer.identity(obs_dim)

    @classmethod
    def from_offline(cls, data: OfflineData, device: torch.device | str, gamma: float,
                     normalize_states: bool, bootstrap_timeouts: bool = False, seed: int = 0,
                     extra_capacity: int = 0, reward_scale: float = 1.0) -> "ReplayBuffer":
        normalizer = (StateNormalizer.fit(data.observations) if normalize_states
                      else StateNormalizer.identity(data.obs_dim))
        buffer = cls(len(data) + extra_capacity, data.obs_dim, data.act_dim, device, seed, normalizer,
                     reward_scale)
        rewards = np.asarray(data.rewards, dtype=np.float64) * reward_scale  # returns-to-go in the same scale
        rtg = returns_to_go(rewards, data.terminals, data.timeouts, gamma, bootstrap_timeouts)
        buffer.add(data.observations, data.actions, data.rewards, data.next_observations,
                   data.terminals, rtg.numpy(), timeouts=data.timeouts)  # add() scales the rewards
        return buffer

    def add(self, observations, actions, rewards, next_observations, dones, returns_to_go=None,
            timeouts=None):
        """Append raw (un-normalised) transitions; overwrites the oldest ones once full."""
        n = len(rewards)
        values = {
            "observations": self.normalizer(np.asarray(observations)),
            "actions": actions, "rewards": np.asarray(rewards, dtype=np.float32) * self.reward_scale,
            "next_observations": self.normalizer(np.asarray(next_observations)),
            "dones": np.asarray(dones, dtype=np.float32),
            "returns_to_go": np.zeros(n) if returns_to_go is None else returns_to_go,
        }
        idx = (self.position + torch.arange(n)) % self.capacity
        idx = idx.to(self.device)
        for key, value in values.items():
            tensor = torch.as_tensor(np.asarray(value), dtype=torch.float32)
            self.storage[key][idx] = tensor.to(self.device).reshape(n, *self.storage[key].shape[1:])
        cut = np.zeros(n, dtype=bool) if timeouts is None else np.asarray(timeouts, dtype=bool)
        self.timeouts[idx] = torch.as_tensor(cut).to(self.device)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
        return self.gather(idx)

    def sampler(self, batch_size: int) -> Callable[[], Batch]:
        """What a training phase samples with: a function drawing the batch ``sample(batch_size)``
        would -- the same indices from the same generator, the same values -- into buffers it
        keeps. Each call overwrites the batch the last one returned (the same tensors): a step
        that uses its batch before asking for the next one loses nothing, and nothing is
        allocated or sliced per update. The six views of a new batch cost ~17 us and its
        allocation more: ~3% of a 2-thread BC pre-training update (issue 26, docs/bench.md)."""
        rows = torch.empty((batch_size, self.rows.shape[1]), dtype=self.rows.dtype, device=self.device)
        idx = torch.empty(batch_size, dtype=torch.long, device=self.device)
        batch = Batch(*(self._field(rows, k) for k in FIELDS))

        def draw() -> Batch:
            torch.randint(0, self.size, (batch_size,), generator=self.generator, out=idx)
            torch.index_select(self.rows, 0, idx, out=rows)
            return batch

        return draw

    def _field(self, rows: torch.Tensor, key: str) -> torch.Tensor:
        """Field ``key`` of ``rows`` [n, width], a view: [n, d] for vectors, [n] for scalars."""
        start, end, vector = self.columns[key]
        return rows[:, start:end] if vector else rows[:, start]

    def gather(self, idx: torch.Tensor) -> Batch:
        """The transitions at storage rows ``idx`` (a tensor on the device): one gather of whole
        rows, the fields views of it."""
        rows = self.rows.index_select(0, idx)
        return Batch(*(self._field(rows, k) for k in FIELDS))

    def all(self) -> Batch:
        return Batch(*(self.storage[k][: self.size] for k in FIELDS))

    def __len__(self) -> int:
        return self.size

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "size": self.size, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Where sampling continues. A generator state saved on another kind of device (a CUDA
        generator's state is a Philox seed and offset, a CPU one's a Mersenne Twister) cannot be
        set: the generator is then seeded from the saved state's bytes -- a deterministic stream,
        but not the batches an uninterrupted run would have drawn -- and a warning says so."""
        saved = state["generator"]
        if saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved)
        else:
            digest = hashlib.sha256(saved.cpu().numpy().tobytes()).digest()
            self.generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            warnings.warn(f"the replay's sampling generator was saved on another kind of device "
                          f"than {self.device.type}; sampling continues from a generator seeded "
                          f"from that state (the batches differ from an uninterrupted run's)",
                          RuntimeWarning, stacklevel=2)
        self.size, self.position = int(state["size"]), int(state["position"])

    def contents(self) -> dict:
        """The stored transitions (on the CPU), for checkpoints of buffers filled online."""
        return {"storage": {k: self.column(k) for k in self.storage},
                "timeouts": self.timeouts[: self.size].cpu(), **self.state_dict()}

    def column(self, key: str) -> torch.Tensor:
        """Field ``key`` of the stored transitions as its own contiguous tensor on the CPU (a view
        would take the whole row storage with it into a checkpoint)."""
        return self.storage[key][: self.size].to("cpu", copy=True).contiguous()

    def load_contents(self, state: dict) -> None:
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(f"replay contents of {n} transitions do not fit a buffer of {self.capacity}")
        for key, value in state["storage"].items():
            self.storage[key][:n] = value.to(self.device)
        self.timeouts[:n] = state["timeouts"].to(self.device)
        self.load_state_dict(state)


class MixedReplay:
    """What online fine-tuning samples from: the offline dataset's buffer and an online buffer
    (section 3.3 and appendix C.1 of "Finetuning from offline RL").

    - ``init_with_offline=False``: online transitions only.
    - ``init_with_offline=True, offline_fraction=None``: the online replay starts as the offline
      dataset and is sampled uniformly, so the share of offline samples is the share of offline
      transitions in it (the paper's default protocol). The replay holds at most ``max_size``
      transitions: once full, the oldest go first -- the offline ones, which came first.
    - ``offline_fraction=f``: every batch has round(f * B) offline transitions (uniform over the
      whole dataset) and the rest online ones (appendix C.1's fixed ratio).
    Indices are drawn on the device with the online buffer's generator.
    """

    def __init__(self, offline: ReplayBuffer, online: ReplayBuffer, init_with_offline: bool,
                 offline_fraction: float | None, max_size: int):
        if offline_fraction is not None and not init_with_offline:
            raise ValueError("a fixed offline fraction needs the offline data (init_with_offline)")
        self.offline, self.online = offline, online
        self.init_with_offline, self.offline_fraction = init_with_offline, offline_fraction
        self.max_size = int(max_size)

    def offline_pool(self) -> tuple[int, int]:
        """[start, end) of the offline rows still in the replay (uniform mode)."""
        if not self.init_with_offline:
            return 0, 0
        if self.offline_fraction is not None:
            return 0, self.offline.size
        evicted = max(0, self.offline.size + self.online.size - self.max_size)
        return min(evicted, self.offline.size), self.offline.size

    def __len__(self) -> int:
        start, end = self.offline_pool()
        return end - start + self.online.size

    def sample(self, batch_size: int) -> tuple[Batch, torch.Tensor]:
        """A batch and the fraction of it drawn from the offline data (a 0-d tensor)."""
        device = self.online.device
        if not self.init_with_offline or self.offline.size == 0:
            return self.online.sample(batch_size), torch.zeros((), device=device)
        if self.offline_fraction is not None:
            k = int(round(self.offline_fraction * batch_size))
            if self.online.size == 0:
                k = batch_size
            parts = [self.offline.sample(k), self.online.sample(batch_size - k)]
            batch = Batch(*(torch.cat(fields) for fields in zip(*parts)))
            return batch, torch.full((), k / batch_size, device=device)
        start, end = self.offline_pool()
        n_offline = end - start
        j = torch.randint(0, n_offline + self.online.size, (batch_size,), device=device,
                          generator=self.online.generator)
        from_offline = j < n_offline
        if self.online.size == 0:
            return self.offline.gather(start + j), torch.ones((), device=device)
        off = self.offline.gather((start + j).clamp(max=self.offline.size - 1))
        on = self.online.gather((j - n_offline).clamp(min=0))
        pick = from_offline.unsqueeze(-1)
        batch = Batch(*(torch.where(pick if a.dim() > 1 else from_offline, a, b)
                        for a, b in zip(off, on)))
        return batch, from_offline.float().mean()
