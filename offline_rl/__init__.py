"""offline_rl: first imitate, then improve -- an experiment platform for efficient offline RL."""

__version__ = "0.1.0"
