"""A dataset's contents checked once, as it is read, before anything trains on it.

Whole-array numpy checks (a million transitions in a fraction of a second): observation and action
sizes against the environment's spaces, finite values, sane magnitudes, actions within the
environment's bounds. The first problem found is one DatasetError naming the dataset, the field,
the first bad transition (with its episode and step) and what to do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from offline_rl.dataset.episodes import OfflineData
from offline_rl.errors import DatasetError

MAX_MAGNITUDE = 1e6  # larger values are garbage (an uninitialised value, wrong units), not states
ACTION_TOLERANCE = 1e-3  # actions recorded as float32, or clipped a hair past the bound


def environment_spaces(env_spec: Any) -> tuple[Any, Any] | None:
    """The observation and action spaces of the dataset's environment (where evaluation runs),
    None when it cannot be made here (evaluation reports that itself)."""
    if env_spec is None:
        return None
    import gymnasium as gym

    try:
        env = gym.make(env_spec)
    except Exception:  # noqa: BLE001 -- a missing optional package, an unknown id
        return None
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def check_offline_data(data: OfflineData, files: str = "", spaces: tuple[Any, Any] | None = None) -> None:
    """Raise DatasetError at the first problem in ``data``; ``files`` says where it lives (for the
    message), ``spaces`` are the environment's (default: made from ``data.env_spec``)."""
    name = f"dataset '{data.dataset_id}'" + (f" ({files})" if files else "")
    ends = np.flatnonzero(data.episode_ends)

    def where(row: int, column: int | None = None) -> str:
        episode = int(np.searchsorted(ends, row))
        start = int(ends[episode - 1]) + 1 if episode > 0 else 0
        element = "" if column is None else f", element {column}"
        return f"transition {row} (episode {episode}, step {row - start}{element})"

    def fail(field: str, problem: str, row: int, column: int | None, todo: str) -> None:
        raise DatasetError(f"{name}: {field} {problem} at {where(row, column)}; nothing was "
                           f"trained. {todo}")

    spaces = environment_spaces(data.env_spec) if spaces is None else spaces
    env_id = getattr(data.env_spec, "id", "?")
    if spaces is not None:
        for field, space, size in (("observations", spaces[0], data.obs_dim),
                                   ("actions", spaces[1], data.act_dim)):
            shape = getattr(space, "shape", None)
            if shape is not None and len(shape) == 1 and shape[0] != size:
                raise DatasetError(f"{name}: {field} have {size} values each but its environment "
                                   f"{env_id} has {shape[0]}; nothing was trained. The dataset "
                                   f"was recorded in another environment: fix its environment "
                                   f"spec or choose the dataset of this environment")

    fields = {"observations": data.observations, "actions": data.actions,
              "rewards": data.rewards, "next_observations": data.next_observations}
    regenerate = "Repair or regenerate the dataset (a local one: delete its folder to generate it again)"
    for field, values in fields.items():
        table = values.reshape(len(values), -1)
        bad = ~np.isfinite(table)
        if bad.any():
            row, column = np.argwhere(bad)[0]
            fail(field, f"hold a non-finite value ({table[row, column]})", row,
                 column if table.shape[1] > 1 else None, regenerate)
        huge = np.abs(table) > MAX_MAGNITUDE
        if huge.any():
            row, column = np.argwhere(huge)[0]
            fail(field, f"hold {table[row, column]:.3g}, beyond any sane magnitude "
                        f"(|x| > {MAX_MAGNITUDE:.0e})", row, column if table.shape[1] > 1 else None,
                 f"{regenerate}; check how it was recorded (units, uninitialised values)")

    action_space = spaces[1] if spaces is not None else None
    low, high = getattr(action_space, "low", None), getattr(action_space, "high", None)
    if low is not None and high is not None and np.shape(low) == (data.act_dim,):
        outside = (data.actions < low - ACTION_TOLERANCE) | (data.actions > high + ACTION_TOLERANCE)
        if outside.any():
            row, column = np.argwhere(outside)[0]
            fail("actions", f"hold {data.actions[row, column]:.6g}, outside the environment's "
                            f"bounds [{low[column]:.6g}, {high[column]:.6g}] for {env_id}", row,
                 column, "Rescale or clip the dataset's actions to the action space, or choose the "
                         "dataset of this environment")
