"""The names of the metrics that more than one module reads: written by the evaluator
(training/evaluation.py), read by the loop's progress bar, the run's summary, the sweep's progress,
fine-tuning, the policy tool and the analysis package."""

EVAL_PREFIX = "eval/"
SCORE = "eval/normalized_score_mean"       # D4RL-normalised: 0 = random, 100 = expert
SCORE_STD = "eval/normalized_score_std"
RETURN = "eval/return_mean"                # the episodes' undiscounted return
RETURN_STD = "eval/return_std"
