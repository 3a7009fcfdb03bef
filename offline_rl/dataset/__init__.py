"""The data layer: Minari datasets -> flat arrays -> on-device replay. Knows nothing about algorithms."""

from offline_rl.dataset.episodes import OfflineData, flatten_episodes, returns_to_go, discounted_cumsum
from offline_rl.dataset.replay import Batch, ReplayBuffer

__all__ = ["OfflineData", "flatten_episodes", "returns_to_go", "discounted_cumsum", "Batch",
           "ReplayBuffer"]
