"""Does a training curve stay down once it has converged?

``growth_after_convergence(errors)`` compares the error after convergence with its
floor. The floor is the median of the last quarter of the batch errors; the running
median over ``window`` steps (so single batches do not count) first comes within
``slack`` times the floor at convergence; the growth is the largest running median after
that, over the floor (1: none; within ``slack``: within noise). Errors below ``roundoff`` times the first error
are rounding noise and count as that level (a double resolves squared voltages to
about 1e-32 V^2 at 1 V, far below any physical floor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Convergence:
    floor: float           # median error of the last quarter
    converged_at: int      # last step (1-based) of the first window whose median is within slack x floor
    growth: float          # max running median after convergence / floor (1 = none)
    final: float           # last batch error


def growth_after_convergence(errors: np.ndarray, *, window: int = 25, slack: float = 3.0,
                             roundoff: float = 1e-20) -> Convergence:
    """See the module docstring; ``errors`` are the batch errors step by step."""
    e = np.asarray(errors, dtype=float)
    e = np.maximum(e, roundoff * e[0])
    floor = float(np.median(e[-max(1, e.size // 4):]))
    w = min(window, e.size)
    medians = np.array([np.median(e[i:i + w]) for i in range(0, e.size - w + 1)])
    k = int(np.argmax(medians <= slack * floor))
    return Convergence(floor, k + w, float(medians[k:].max() / floor), float(errors[-1]))
