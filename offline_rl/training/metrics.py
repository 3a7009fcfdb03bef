"""An update step's metrics, and the window the loop keeps them in until the next log point.

A compiled step returns its metrics packed into one float32 vector (``pack``, inside the graph)
with their names: ``StepMetrics``, a read-only mapping name -> 0-d tensor. The loop's
``MetricWindow`` keeps those vectors as they come -- a list append per update, no tensor
operation, no host synchronisation -- and reads the whole window back at a log point with one
stack per step function and one copy to the host. The per-key running sums it kept before cost
~20 small tensor operations per update (~5% of a compiled TD3+BC update's time on 2 CPU cores,
profiled: docs/bench.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np
import torch

from offline_rl.errors import NonFiniteLossError


def pack(metrics: Mapping[str, torch.Tensor]) -> tuple[tuple[str, ...], torch.Tensor]:
    """(names, one float32 vector of the values): the step's scalar metrics, detached."""
    names = tuple(metrics)
    if not names:  # a step that reports nothing (a dataset generator's warm-up)
        return names, torch.zeros(0)
    values = torch.stack([torch.as_tensor(v).detach().reshape(()).float() for v in metrics.values()])
    return names, values


class StepMetrics(Mapping):
    """One update's metrics: ``names`` and the float32 vector ``values`` (on the device)."""

    __slots__ = ("names", "values")

    def __init__(self, names: tuple[str, ...], values: torch.Tensor):
        self.names, self.values = names, values

    @classmethod
    def of(cls, metrics: Mapping[str, torch.Tensor]) -> "StepMetrics":
        return metrics if isinstance(metrics, StepMetrics) else cls(*pack(metrics))

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self.values[self.names.index(key)]
        except ValueError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"StepMetrics({dict(zip(self.names, self.values.tolist()))})"


class MetricWindow:
    """The metrics of every update since the last log point, as they came (on the device): read
    back as means per metric, and the first update step whose loss was not finite."""

    def __init__(self) -> None:
        self.rows: list[tuple[tuple[str, ...], int, torch.Tensor]] = []  # (names, step, values)

    def add(self, metrics: Mapping[str, torch.Tensor], step: int) -> None:
        metrics = StepMetrics.of(metrics)
        self.rows.append((metrics.names, int(step), metrics.values))

    def _groups(self) -> dict[tuple[str, ...], tuple[list[int], list[torch.Tensor]]]:
        groups: dict[tuple[str, ...], tuple[list[int], list[torch.Tensor]]] = {}
        for names, step, values in self.rows:
            steps, tensors = groups.setdefault(names, ([], []))
            steps.append(step)
            tensors.append(values)
        return groups

    def state_dict(self) -> dict[str, Any]:
        """The partial window (a checkpoint may fall between two log points), grouped by the
        step function that produced the rows."""
        return {"groups": [{"names": list(names), "steps": steps, "values": torch.stack(tensors).cpu()}
                           for names, (steps, tensors) in self._groups().items()]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        if "groups" not in state:  # written before 2720c5f: per-key sums, counts, first bad steps
            state = _groups_of_sums(state)
        rows = []
        for group in state["groups"]:
            values = group["values"] if device is None else group["values"].to(device)
            rows += [(tuple(group["names"]), int(step), row) for step, row in zip(group["steps"], values)]
        self.rows = sorted(rows, key=lambda row: row[1])

    def read(self, phase: str) -> dict[str, float]:
        """Means over the window (one host sync); raises on a non-finite loss."""
        if not self.rows:
            return {}
        groups = self._groups()
        stacked = [torch.stack(tensors) for _, tensors in groups.values()]
        host = torch.cat([s.flatten() for s in stacked]).cpu().numpy().astype(np.float64)
        self.rows = []
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        failures = []
        offset = 0
        for (names, (steps, _)), block in zip(groups.items(), stacked):
            n, k = block.shape
            values = host[offset: offset + n * k].reshape(n, k)
            offset += n * k
            for j, key in enumerate(names):
                column = values[:, j]
                sums[key] = sums.get(key, 0.0) + float(column.sum())
                counts[key] = counts.get(key, 0) + n
                if key.endswith("loss"):
                    bad = np.flatnonzero(~np.isfinite(column))
                    if bad.size:
                        failures.append((steps[bad[0]], key))
        if failures:
            step, key = min(failures)
            raise NonFiniteLossError(
                f"loss '{key}' became non-finite (NaN or inf) at update step {step} in phase "
                f"'{phase}'. Lower the learning rate, check the dataset's rewards/observations for "
                f"NaNs, or enable LayerNorm (network.critic_layer_norm=true).")
        return {key: sums[key] / counts[key] for key in sums}


def _groups_of_sums(state: dict[str, Any]) -> dict[str, Any]:
    """The window of a checkpoint written before metrics were packed (2720c5f: per-key running
    sums, counts, and for losses the first update step whose value was not finite, -1 while all
    were) as rows: each key's mean repeated ``count`` times, so that the means read at the next
    log point are the same; a loss that had turned non-finite keeps its first bad step."""
    groups = []
    for key, total in state["sums"].items():
        count = int(state["counts"][key])
        first_bad = int(state.get("first_bad", {}).get(key, -1))
        mean = torch.as_tensor(total).detach().float().cpu() / count
        groups.append({"names": [key], "steps": [max(first_bad, 0)] * count,
                       "values": mean.reshape(1, 1).expand(count, 1).clone()})
    return {"groups": groups}
