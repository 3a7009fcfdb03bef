"""Compare analysis/score_statistics.py with rliable on the same score matrix (docs/analysis.md,
"Agreement with rliable"). rliable is not a dependency of this project: it needs pandas < 3
(rliable 1.2.0 imports arch < 8; arch 7 fails to import with pandas 3), so it runs in a
throw-away environment:

    python scripts/check_against_rliable.py ours /tmp/scores.json          # this project's venv
    python3 -m venv /tmp/rliable-venv
    /tmp/rliable-venv/bin/pip install 'pandas<3' 'arch==7.2.0' 'rliable==1.2.0'
    /tmp/rliable-venv/bin/python scripts/check_against_rliable.py rliable /tmp/scores.json

The first step makes a seeded score matrix per variant (runs x tasks, normalised scores) and
writes it with this project's estimates; the second computes rliable's on the same matrix (same
resample counts, percentile intervals) and prints both side by side with their differences.
Point estimates must agree exactly; interval ends differ only by bootstrap noise.
"""

from __future__ import annotations

import json
import sys

import numpy as np

TAUS = np.linspace(0.0, 120.0, 25)
AGGREGATE_REPS, PROFILE_REPS, IMPROVEMENT_REPS = 50_000, 2_000, 2_000
NAMES = ("IQM", "Median", "Mean", "Optimality gap")


def score_dict(runs: int = 10, tasks: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Two variants on ``tasks`` tasks: a baseline and one ~8 points better, skewed noise."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(20, 90, size=tasks)
    base = level + rng.gamma(2.0, 6.0, size=(runs, tasks)) - 12
    better = level + 8 + rng.gamma(2.0, 6.0, size=(runs, tasks)) - 12
    return {"pretrain=none": base, "pretrain=ac": better}


def ours(path: str) -> None:
    from analysis import score_statistics as st

    scores = score_dict()
    out = {"scores": {k: v.tolist() for k, v in scores.items()}, "taus": TAUS.tolist(),
           "aggregate": {}, "profiles": {}}
    functions = [st.estimator(n) for n in NAMES]
    for variant, matrix in scores.items():
        tasks = [matrix[:, j] for j in range(matrix.shape[1])]
        point, low, high = st.stratified_bootstrap(
            tasks, lambda *s, axis=-1: np.stack([f(*s, axis=axis) for f in functions]),
            n_resamples=AGGREGATE_REPS)
        out["aggregate"][variant] = [point.tolist(), low.tolist(), high.tolist()]
        point, low, high = st.stratified_bootstrap(
            tasks, lambda *s, axis=-1: st.score_fractions(*s, taus=TAUS, axis=axis),
            n_resamples=PROFILE_REPS)
        out["profiles"][variant] = [point.tolist(), low.tolist(), high.tolist()]
    x, y = scores["pretrain=ac"], scores["pretrain=none"]
    k = x.shape[1]
    point, low, high = st.stratified_bootstrap(
        [*x.T, *y.T], lambda *s, axis=-1: st.improvement_probability(s[:k], s[k:], axis=axis),
        n_resamples=IMPROVEMENT_REPS)
    out["improvement"] = [float(point), float(low), float(high)]
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"wrote {path}")


def theirs(path: str) -> None:
    from rliable import library as rly
    from rliable import metrics

    with open(path) as f:
        data = json.load(f)
    scores = {k: np.asarray(v) for k, v in data["scores"].items()}
    taus = np.asarray(data["taus"])
    functions = lambda s: np.array([metrics.aggregate_iqm(s), metrics.aggregate_median(s),  # noqa: E731
                                    metrics.aggregate_mean(s),
                                    metrics.aggregate_optimality_gap(s, 100.0)])
    points, cis = rly.get_interval_estimates(scores, functions, reps=AGGREGATE_REPS)
    print("aggregate (ours | rliable | difference), point [low, high]:")
    worst_point = worst_ci = 0.0
    for variant in scores:
        mine = np.asarray(data["aggregate"][variant])
        for i, name in enumerate(NAMES):
            a = mine[:, i]
            b = np.array([points[variant][i], cis[variant][0, i], cis[variant][1, i]])
            worst_point = max(worst_point, abs(a[0] - b[0]))
            worst_ci = max(worst_ci, *abs(a[1:] - b[1:]))
            print(f"  {variant:14s} {name:15s} {a[0]:7.3f} [{a[1]:7.3f}, {a[2]:7.3f}] | "
                  f"{b[0]:7.3f} [{b[1]:7.3f}, {b[2]:7.3f}] | {a[0] - b[0]:+.1e} "
                  f"[{a[1] - b[1]:+.3f}, {a[2] - b[2]:+.3f}]")
    profile, bands = rly.create_performance_profile(scores, taus, reps=PROFILE_REPS)
    worst_profile = worst_band = 0.0
    for variant in scores:
        mine = np.asarray(data["profiles"][variant])
        worst_profile = max(worst_profile, np.abs(mine[0] - profile[variant]).max())
        worst_band = max(worst_band, np.abs(mine[1] - bands[variant][0]).max(),
                         np.abs(mine[2] - bands[variant][1]).max())
    pair = {"ac,none": (scores["pretrain=ac"], scores["pretrain=none"])}
    p, p_ci = rly.get_interval_estimates(pair, metrics.probability_of_improvement,
                                         reps=IMPROVEMENT_REPS)
    a = data["improvement"]
    print(f"P(ac > none): ours {a[0]:.4f} [{a[1]:.4f}, {a[2]:.4f}] | rliable "
          f"{float(p['ac,none']):.4f} [{p_ci['ac,none'][0, 0]:.4f}, {p_ci['ac,none'][1, 0]:.4f}]")
    print(f"largest differences: aggregate points {worst_point:.1e}, aggregate CI ends "
          f"{worst_ci:.3f}; profile points {worst_profile:.1e}, profile band ends {worst_band:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("ours", "rliable"):
        sys.exit(__doc__)
    (ours if sys.argv[1] == "ours" else theirs)(sys.argv[2])
