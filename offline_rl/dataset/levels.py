"""D4RL's dataset levels, as this project generates them for each environment
(offline_rl.generate.datasets: one behaviour run gives all five)."""

LEVELS = ("medium", "medium-replay", "full-replay", "expert", "medium-expert")
