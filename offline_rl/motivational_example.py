"""The motivational example of section 3 (Fig. 1, Table 1): offline tabular Q-learning over a
single trajectory, from zero and from Monte-Carlo initialisation, with alpha = gamma = 1.

The 4-state MDP: state 0 has one action (right), state 1 has left and right, state 2 has right,
state 3 is terminal. The one offline trajectory (reconstructed from Table 1's values) is

    (0, ->, r=0) (1, <-, r=-1) (0, ->, r=0) (1, ->, r=-2) (2, ->, r=+3) -> terminal

Run ``python -m offline_rl.motivational_example`` to print the per-epoch Q-tables.
"""

from __future__ import annotations

import argparse

RIGHT, LEFT = "->", "<-"
ACTIONS = {0: [RIGHT], 1: [LEFT, RIGHT], 2: [RIGHT], 3: []}  # state 3 is terminal
TRAJECTORY = [  # (state, action, reward, next_state)
    (0, RIGHT, 0.0, 1),
    (1, LEFT, -1.0, 0),
    (0, RIGHT, 0.0, 1),
    (1, RIGHT, -2.0, 2),
    (2, RIGHT, 3.0, 3),
]
COLUMNS = [(0, RIGHT), (1, LEFT), (1, RIGHT), (2, RIGHT)]

QTable = dict[tuple[int, str], float]


def zero_init() -> QTable:
    return {sa: 0.0 for sa in COLUMNS}


def monte_carlo_init(every_visit: bool, gamma: float = 1.0) -> QTable:
    """Q(s, a) = the return-to-go from (s, a) in the trajectory (Eq. 2's sample estimate); a pair
    visited twice gets its first return (first-visit MC) or the average (every-visit MC)."""
    returns: dict[tuple[int, str], list[float]] = {sa: [] for sa in COLUMNS}
    g = 0.0
    for state, action, reward, _ in reversed(TRAJECTORY):
        g = reward + gamma * g
        returns[(state, action)].insert(0, g)
    return {sa: (sum(r) / len(r) if every_visit else r[0]) for sa, r in returns.items()}


def q_learning_epoch(q: QTable, alpha: float = 1.0, gamma: float = 1.0) -> QTable:
    """One pass over the trajectory, in order, of Eq. 1:
    Q(s,a) <- Q(s,a) + alpha [r + gamma max_a' Q(s',a') - Q(s,a)]."""
    q = dict(q)
    for state, action, reward, next_state in TRAJECTORY:
        next_value = max((q[(next_state, a)] for a in ACTIONS[next_state]), default=0.0)
        q[(state, action)] += alpha * (reward + gamma * next_value - q[(state, action)])
    return q


def run(init: QTable, epochs: int = 3) -> list[QTable]:
    """The Q-table after each epoch, epoch 0 being the initialisation."""
    tables = [init]
    for _ in range(epochs):
        tables.append(q_learning_epoch(tables[-1]))
    return tables


def format_tables(zero: list[QTable], mc: list[QTable]) -> str:
    header = " ".join(f"Q({s},{a})" for s, a in COLUMNS)
    lines = [f"epoch | zero initialisation: {header} | MC initialisation: {header}"]
    for epoch, (z, m) in enumerate(zip(zero, mc)):
        zs = " ".join(f"{z[sa]:+7.1f}" for sa in COLUMNS)
        ms = " ".join(f"{m[sa]:+7.1f}" for sa in COLUMNS)
        lines.append(f"{epoch:5d} | {zs:>{len(header) + 21}} | {ms:>{len(header) + 19}}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every-visit", action="store_true", help="every-visit MC initialisation")
    args = parser.parse_args(argv)
    print(format_tables(run(zero_init(), args.epochs), run(monte_carlo_init(args.every_visit), args.epochs)))


if __name__ == "__main__":
    main()
