"""Offline RL algorithms, one file each. Each exposes ``update(batch) -> metrics`` (device tensors,
no host sync), ``act(obs)``, its networks as attributes and its losses as visible methods."""
