"""Supervised pre-training schemes, one module each. A scheme turns (algorithm, replay) into the
phases that run before offline RL, and checks that it fits the algorithm."""
