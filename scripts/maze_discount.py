"""What the DQN's discount asks of the Q-network on the 9x9 test mazes (recipes/dqn_maze.yaml).

    .venv/bin/python scripts/maze_discount.py                      # gamma 0.99, 0.97, 0.95, 0.9
    .venv/bin/python scripts/maze_discount.py --gammas 0.99 0.95 --mazes 50 --json out.json

For each gamma, on the 200 held-out test mazes (seeds 2**41 + i, as the recipe scores them):

  exact-policy ratio   the undiscounted return of acting greedily on the exact discounted Q*
                       (value iteration, genlab.envs.solver.discounted_q) over the exact
                       undiscounted optimum: what discounting itself costs, with a perfect net;
  gap                  Q*(best action) - Q*(second best) at the states of that greedy episode:
                       how precisely the net must rank actions to follow it. Where the gap is
                       below the net's error the greedy choice can flip, and a flip at a turn
                       tends to be answered by the opposite turn: a turn-left/turn-right loop
                       that lasts until the step limit.

Printed: the mean ratio, the median and 10th-percentile gap and the share of visited states
whose gap is under 0.02 and under 0.05 (states with an exact tie left out: either action is
optimal there), and the share of such ties.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from genlab.data.maze_source import TEST_SEED0
from genlab.envs.maze import MazeConfig, generate_layout
from genlab.envs.solver import discounted_q, optimal_return, transitions


def greedy_episode(lay, cfg: MazeConfig, q: np.ndarray, s0: int) -> tuple[float, list[float]]:
    """Undiscounted return of the greedy policy on q, and the best-minus-second gap per state."""
    nxt, r, term, _ = transitions(lay, cfg)
    s, total, gaps = s0, 0.0, []
    for _ in range(cfg.max_steps):
        qs = np.sort(q[:, s])
        gaps.append(float(qs[-1] - qs[-2]))
        a = int(q[:, s].argmax())
        total += float(r[a, s])
        if term[a, s]:
            break
        s = int(nxt[a, s])
    return total, gaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.99, 0.97, 0.95, 0.9])
    ap.add_argument("--mazes", type=int, default=200, help="test mazes (seeds 2**41 + i)")
    ap.add_argument("--json", help="also write the table here")
    a = ap.parse_args()
    bad = [g for g in a.gammas if not 0.0 < g < 1.0]
    if bad:
        ap.error(f"--gammas: each must be in (0, 1), got {bad}")
    cfg = MazeConfig(size=9, n_food=3, n_shock=3, max_steps=100)  # recipes/dqn_maze.yaml's env
    lays = [generate_layout(cfg, TEST_SEED0 + i) for i in range(a.mazes)]
    best = [optimal_return(lay, cfg) for lay in lays]
    rows = []
    print(f"{a.mazes} test mazes; gaps over visited states without an exact tie")
    print("| gamma | exact-policy ratio | gap median | gap p10 | gap < 0.02 | gap < 0.05 | ties |")
    print("|---|---|---|---|---|---|---|")
    for g in a.gammas:
        ratios, gaps = [], []
        for lay, opt in zip(lays, best):
            q, s0 = discounted_q(lay, cfg, g)
            ret, gp = greedy_episode(lay, cfg, q, s0)
            ratios.append(min(1.0, ret / opt))
            gaps += gp
        gaps_a = np.asarray(gaps)
        ties = gaps_a < 1e-9  # two equally good actions (turn left or right to turn around): harmless
        gaps_a = gaps_a[~ties]
        row = {"gamma": g, "ratio": float(np.mean(ratios)), "gap_median": float(np.median(gaps_a)),
               "gap_p10": float(np.percentile(gaps_a, 10)), "gap_lt_0.02": float((gaps_a < 0.02).mean()),
               "gap_lt_0.05": float((gaps_a < 0.05).mean()), "states": len(gaps),
               "ties": float(ties.mean())}
        rows.append(row)
        print(f"| {g} | {row['ratio']:.4f} | {row['gap_median']:.4f} | {row['gap_p10']:.4f} | "
              f"{row['gap_lt_0.02']:.1%} | {row['gap_lt_0.05']:.1%} | {row['ties']:.1%} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
