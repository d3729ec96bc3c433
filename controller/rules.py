"""Local learning rules (docs/science.md: eq. (CL) and "The stepped rule").

Both rules use only measured node voltages: the per-edge contrastive signal

    s_j = (1/W) sum_b w_b [ (dV_j^F,b)^2 - (dV_j^C,b)^2 ]          (V^2)

with sample weights w_b (all ones unless a scheme gates samples) and
W = sum_b w_b. The signal is positive where the free drop is larger, i.e. where
the edge should conduct more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from clln.controller.backend import EdgeActuators, EdgeState, Measurement


def contrastive_signal(
    free: Measurement,
    clamped: Measurement,
    incidence: sp.spmatrix,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """(m,) batch-averaged (dV^F)^2 - (dV^C)^2 per edge, V^2."""
    if weights is None:  # the sum of ones is their count (exactly)
        w, total = np.ones(free.batch_size), float(free.batch_size)
    else:
        w = np.asarray(weights, dtype=float)
        total = float(w.sum())
    if total <= 0:
        return np.zeros(incidence.shape[0])
    fused = getattr(free, "signal_against", None)  # a measurement with a one-pass signal
    if fused is not None:
        signal = fused(clamped, incidence, w, total)
        if signal is not None:
            return signal
    return (free.batch_power(incidence, w) - clamped.batch_power(incidence, w)) / total


class UpdateRule(Protocol):
    """Turns a contrastive signal into edge commands in actuator units."""

    @property
    def name(self) -> str: ...

    def commands(self, signal: np.ndarray, eta: float, edges: EdgeActuators,
                 state: EdgeState | None = None) -> np.ndarray:
        """(m,) commands: Δg in siemens, or integer Δtaps for stepped edges. ``state`` is
        the current edge state (needed to turn conductance changes into taps)."""
        ...


@dataclass(frozen=True)
class CoupledRule:
    """Coupled learning: dg_j = (alpha / eta) s_j, siemens. On stepped edges each edge
    goes to the tap whose calibrated conductance is nearest g_j + dg_j. On gate edges
    (transistors) the same rule moves the gate voltage: dV_G,j = (alpha / eta) s_j volts,
    the local contrastive update of the rig's learning circuit (docs/transistor.md).

    Attributes
    ----------
    alpha : learning rate, S / V^2 (V / V^2 on gate edges).
    """

    alpha: float
    name: str = "coupled"

    def commands(self, signal: np.ndarray, eta: float, edges: EdgeActuators,
                 state: EdgeState | None = None) -> np.ndarray:
        return edges.commands_for_change((self.alpha / eta) * signal, state)


@dataclass(frozen=True)
class SteppedRule:
    """The hardware rule: each edge moves ``step`` taps in the direction that raises
    its conductance when s_j > threshold, lowers it when s_j < -threshold, and
    stays inside the dead band.

    Attributes
    ----------
    step : taps per update (integer >= 1).
    threshold : dead band on |s_j|, V^2.
    """

    step: int = 1
    threshold: float = 0.0
    name: str = "stepped"

    def commands(self, signal: np.ndarray, eta: float, edges: EdgeActuators,
                 state: EdgeState | None = None) -> np.ndarray:
        # On continuous and gate edges, one "tap" is 1/128 of the range.
        return edges.step_commands(np.sign(signal) * (np.abs(signal) > self.threshold), self.step)
