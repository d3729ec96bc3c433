"""Does a training curve stay down once it has converged?

``growth_after_convergence(errors)`` compares the error after convergence with its
floor. The floor is the median of the last quarter of the batch errors; the run has
converged at the first step whose error is within ``slack`` times the floor; after that,
the running median over ``window`` steps (so single noisy batches do not count) must
stay within ``slack`` times the floor. Errors below ``roundoff`` times the first error
are rounding noise and count as that level (a double resolves squared voltages to
about 1e-32 V^2 at 1 V, far below any physical floor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Convergence:
    floor: float           # median error of the last quarter
    converged_at: int      # first step (1-based) within slack x floor
    growth: float          # max running median after convergence / floor (1 = none)
    final: float           # last batch error


def growth_after_convergence(errors: np.ndarray, *, window: int = 25, slack: float = 3.0,
                             roundoff: float = 1e-20) -> Convergence:
    """See the module docstring; ``errors`` are the batch errors step by step."""
    e = np.asarray(errors, dtype=float)
    e = np.maximum(e, roundoff * e[0])
    floor = float(np.median(e[-max(1, e.size // 4):]))
    k = int(np.argmax(e <= slack * floor))
    tail = e[k:]
    w = min(window, tail.size)
    medians = np.array([np.median(tail[i:i + w]) for i in range(0, tail.size - w + 1)])
    return Convergence(floor, k + 1, float(medians.max() / floor), float(errors[-1]))
