"""The seam between the model-free controller and what it drives.

The controller learns from *measured* node voltages only. A backend (the
simulator, the emulated bench, a real bench) implements :class:`NetworkBackend`.
Units: volts and siemens; arrays follow the node and edge order of the
backend's :class:`~clln.controller.network.Network`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from clln.controller._kernels import basis_drops, row_quadratic_form
from clln.controller.bounds import require_finite
from clln.controller.errors import ProtocolError
from clln.controller.network import Network


@dataclass(frozen=True, eq=False)
class Measurement:
    """Node voltages of a batch of B boundary conditions.

    The voltages are held either densely (``basis is None``: ``coefficients`` is
    the (B, n) voltage array) or, when a backend knows them to be linear
    combinations of a few node-voltage patterns, factored as
    ``coefficients (B, r) @ basis.T`` with ``basis`` (n, r). Both forms give the
    same numbers; the factored one lets the controller form batch sums over
    edges without (B, m) arrays.

    Attributes
    ----------
    coefficients : (B, n) volts, or (B, r) dimensionless weights of the basis.
    basis : None or (n, r) volts.
    timestamps : (B,) seconds, when each sample was measured (backend clock).
    edge_offsets : None or (m,) V^2, a fixed per-edge offset that the bench's
        per-edge signal circuits add to every sample's squared drop (benches that
        form the learning signal edge by edge, e.g. twin benches with comparators).
        It enters ``batch_power`` only; the node voltages are unaffected.
    """

    coefficients: np.ndarray
    basis: np.ndarray | None = None
    timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    edge_offsets: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return int(self.coefficients.shape[0])

    @cached_property
    def voltages(self) -> np.ndarray:
        """(B, n) node voltages, volts."""
        if self.basis is None:
            return self.coefficients
        return self.coefficients @ self.basis.T

    def at_nodes(self, nodes: np.ndarray | tuple[int, ...]) -> np.ndarray:
        """(B, len(nodes)) voltages of the given nodes, volts."""
        idx = np.asarray(nodes, dtype=np.int64)
        if self.basis is None:
            return self.coefficients[:, idx]
        return self.coefficients @ self.basis[idx].T

    def drops_at(self, edges: np.ndarray) -> np.ndarray:
        """(B, k) voltage drops v[a] - v[b] across the given (k, 2) node pairs."""
        edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        return self.at_nodes(edges[:, 0]) - self.at_nodes(edges[:, 1])

    def batch_power(self, incidence: sp.spmatrix, weights: np.ndarray | None = None) -> np.ndarray:
        """Per-edge weighted batch sum of squared drops, sum_b w_b (B v_b)_j^2.

        Parameters
        ----------
        incidence : (m, n) incidence matrix B.
        weights : (B,) sample weights; ones when omitted.

        Returns
        -------
        (m,) array, V^2.
        """
        w = np.ones(self.batch_size) if weights is None else np.asarray(weights, dtype=float)
        if self.basis is None:
            drops = incidence @ self.coefficients.T  # (m, B)
            power = (drops * drops) @ w
        else:  # sum_b w_b (D c_b)_j^2 = (D G D^T)_jj with D = B basis (m, r), G = C^T W C
            gram = (self.coefficients * w[:, None]).T @ self.coefficients  # (r, r)
            power = row_quadratic_form(basis_drops(incidence, self.basis), gram)
        if self.edge_offsets is not None:
            power = power + self.edge_offsets * w.sum()
        return power


# The edge kinds. What differs between them is kept on the classes, so that rules,
# schemes and backends ask the edges instead of switching on their type:
#
# * ``is_stepped``, ``command_dtype``: integer tap moves or real-valued changes;
# * ``clip_state`` / ``move`` / ``conductance_at``: the actuator's range and what a
#   command does to a state (taps, or conductances / gate volts);
# * ``commands_for_change``: the commands realising a change of the adjustable quantity;
# * ``step_commands``: the commands of ``step`` hardware steps in given directions;
# * ``taps_of``: the integer taps of a state (None where there are none);
# * ``reported``: the edge state of the values a device reports;
# * ``describe``: the JSON record of the actuators.


def _clip_move(state: np.ndarray, wanted: np.ndarray, low: float | int,
               high: float | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new state, applied change, clipped mask) of a move to ``wanted`` within [low, high]."""
    new = np.clip(wanted, low, high)
    return new, new - state, new != wanted


class _RealValuedEdges:
    """What edges whose state and commands are real numbers (siemens or volts) share."""

    is_stepped: ClassVar[bool] = False
    command_dtype: ClassVar[type] = float

    def _range(self) -> tuple[float, float]:
        """(low, high) of the adjustable quantity."""
        raise NotImplementedError

    def commands_for_change(self, delta: np.ndarray, state: EdgeState | None = None) -> np.ndarray:
        """Commands realising a change ``delta`` (m,) of the adjustable quantity: ``delta``."""
        return delta

    def step_commands(self, direction: np.ndarray, step: int) -> np.ndarray:
        """Commands of ``step`` hardware "taps" of 1/128 of the range in each edge's
        ``direction`` (-1, 0, +1)."""
        low, high = self._range()
        return direction * step * (high - low) / 128.0

    def taps_of(self, state: np.ndarray) -> np.ndarray | None:
        return None

    def reported(self, values: np.ndarray) -> EdgeState:
        """The edge state of the real values (S or V) a device reports."""
        return EdgeState(np.asarray(values, dtype=float).copy(), None)


@dataclass(frozen=True)
class ContinuousEdges(_RealValuedEdges):
    """Edges set to any conductance in [gmin, gmax] (siemens); commands are Δg."""

    gmin: float
    gmax: float
    kind: Literal["continuous"] = "continuous"

    def _range(self) -> tuple[float, float]:
        return self.gmin, self.gmax

    def clip_state(self, state: np.ndarray) -> np.ndarray:
        """(m,) conductances (S) brought into [gmin, gmax]."""
        return np.clip(np.asarray(state).astype(float), self.gmin, self.gmax)

    def move(self, state: np.ndarray, commands: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(new conductances, applied Δg, clipped mask) of commands Δg (S) from ``state``."""
        return _clip_move(state, state + commands.astype(float), self.gmin, self.gmax)

    def conductance_at(self, state: np.ndarray) -> np.ndarray:
        """(m,) conductance of a state, S: the state itself."""
        return state

    def describe(self) -> dict[str, object]:
        return {"kind": "continuous", "gmin": self.gmin, "gmax": self.gmax}


@dataclass(frozen=True, eq=False)
class SteppedEdges:
    """Edges with discrete taps; commands are integer Δtaps.

    Attributes
    ----------
    table : (m, n_taps) calibrated conductance of every edge at every tap, siemens.
        Each row is monotone in the tap.
    """

    table: np.ndarray
    kind: Literal["stepped"] = "stepped"
    is_stepped: ClassVar[bool] = True
    command_dtype: ClassVar[type] = np.int64

    @property
    def n_taps(self) -> int:
        return int(self.table.shape[1])

    @cached_property
    def direction(self) -> np.ndarray:
        """(m,) +1 where conductance grows with the tap, -1 where it falls."""
        return np.where(self.table[:, -1] >= self.table[:, 0], 1, -1).astype(np.int64)

    def conductance(self, taps: np.ndarray) -> np.ndarray:
        """(m,) conductance at the given integer taps."""
        return self.table[np.arange(self.table.shape[0]), np.asarray(taps, dtype=np.int64)]

    def clip_state(self, state: np.ndarray) -> np.ndarray:
        """(m,) integer taps brought into [0, n_taps - 1]."""
        return np.clip(np.asarray(state).astype(np.int64), 0, self.n_taps - 1)

    def move(self, state: np.ndarray, commands: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(new taps, applied Δtaps, clipped mask) of commands Δtaps from taps ``state``."""
        span = self.n_taps  # no move is longer: huge commands cannot overflow int64
        wanted = state + np.clip(commands, -span, span).astype(np.int64)
        return _clip_move(state, wanted, 0, self.n_taps - 1)

    def conductance_at(self, state: np.ndarray) -> np.ndarray:
        """(m,) calibrated conductance at taps ``state``, S."""
        return self.conductance(state)

    def nearest_taps(self, target: np.ndarray) -> np.ndarray:
        """(m,) per edge, the tap whose conductance in the (monotone) table row is nearest
        to ``target`` (m,) S; of two equally near taps the lower. Vectorised bisection:
        O(m log n_taps)."""
        table = self.table
        m, n = table.shape
        rows = np.arange(m)
        sign = self.direction.astype(float)  # key(t) = sign * g(t) rises with t
        target = np.asarray(target, dtype=float)
        key = sign * target
        lo = np.zeros(m, dtype=np.int64)  # invariant: key(lo) <= key or lo == 0
        hi = np.full(m, n - 1, dtype=np.int64)
        while np.any(hi - lo > 1):
            mid = (lo + hi) // 2
            below = sign * table[rows, mid] <= key
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        d_lo = np.abs(table[rows, lo] - target)
        d_hi = np.abs(table[rows, hi] - target)
        return np.where(d_hi < d_lo, hi, lo)

    def commands_for_change(self, delta: np.ndarray, state: EdgeState | None = None) -> np.ndarray:
        """Δtaps to the taps nearest the conductances of ``state`` plus ``delta`` (m,) S."""
        if state is None or state.taps is None:
            raise ProtocolError("a conductance change on stepped edges needs their current taps")
        return self.nearest_taps(state.conductances + delta) - state.taps

    def step_commands(self, direction: np.ndarray, step: int) -> np.ndarray:
        """Δtaps of ``step`` taps in the direction (-1, 0, +1) of each edge's conductance."""
        return (step * direction * self.direction).astype(np.int64)

    def taps_of(self, state: np.ndarray) -> np.ndarray | None:
        return state.astype(np.int64)

    def reported(self, values: np.ndarray) -> EdgeState:
        """The edge state of the tracked taps a device reports as real values: the nearest
        integer taps, and the calibrated conductance there (taps held within the table)."""
        taps = np.rint(values).astype(np.int64)
        return EdgeState(self.conductance(np.clip(taps, 0, self.n_taps - 1)), taps)

    def continuous_view(self) -> ContinuousEdges:
        """The table's conductance range as continuous edges (for a continuous rule)."""
        return ContinuousEdges(float(self.table.min()), float(self.table.max()))

    def describe(self) -> dict[str, object]:
        return {"kind": "stepped", "n_taps": self.n_taps}


@dataclass(frozen=True)
class GateEdges(_RealValuedEdges):
    """Transistor edges whose adjustable state is the gate voltage, in [vmin, vmax]
    volts; commands are ΔV_G (volts). ``resolution`` (V) is the step of the gate drive
    (0: continuous).

    The edges' conductance is not a parameter here: it depends on the node voltages.
    ``EdgeState.conductances`` of gate edges holds the gate voltages (V).
    """

    vmin: float
    vmax: float
    resolution: float = 0.0
    kind: Literal["gate"] = "gate"

    def _range(self) -> tuple[float, float]:
        return self.vmin, self.vmax

    def describe(self) -> dict[str, object]:
        return {"kind": "gate", "vmin": self.vmin, "vmax": self.vmax, "resolution": self.resolution}


EdgeActuators = ContinuousEdges | SteppedEdges | GateEdges


@dataclass(frozen=True, eq=False)
class EdgeState:
    """What the edges are set to now.

    Attributes
    ----------
    conductances : (m,) calibrated estimate of each edge's conductance, siemens; for
        gate edges (:class:`GateEdges`) the gate voltages, volts.
    taps : (m,) integer taps for stepped edges, None for continuous ones.
    """

    conductances: np.ndarray
    taps: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Applied:
    """What ``adjust`` actually applied: the commands after clipping at the ends.

    Attributes
    ----------
    commands : (m,) applied Δg (siemens) or Δtaps.
    clipped : (m,) bool, True where the command was cut at an end of the range.
    """

    commands: np.ndarray
    clipped: np.ndarray


def boundary_arrays(
    network: Network, sources: np.ndarray, clamps: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``measure``'s arguments as float arrays of checked shapes: sources (B, n_sources)
    and clamps (B, n_clamps) or None; ValueError otherwise, NonFiniteError for a NaN or
    an infinity."""
    roles = network.roles
    sources = np.atleast_2d(require_finite(np.asarray(sources, dtype=float), "measure: source voltages"))
    if sources.ndim != 2 or sources.shape[1] != len(roles.sources):
        raise ValueError(f"sources must be (B, {len(roles.sources)}), got {sources.shape}")
    if clamps is not None:
        clamps = np.atleast_2d(require_finite(np.asarray(clamps, dtype=float), "measure: clamp voltages"))
        if clamps.shape != (sources.shape[0], len(roles.clamps)):
            raise ValueError(f"clamps must be ({sources.shape[0]}, {len(roles.clamps)}), got {clamps.shape}")
    return sources, clamps


@runtime_checkable
class NetworkBackend(Protocol):
    """Everything the controller needs from a bench or a simulator.

    Optional capabilities are declared as small Protocols in
    :mod:`clln.controller.capabilities` and asked for by type: twin benches (a free and
    a clamped copy measured together, :class:`~clln.controller.capabilities.MeasuresTwin`),
    checkpointable state (:class:`~clln.controller.capabilities.Checkpointable`), a
    controller watchdog to keep fed (:class:`~clln.controller.capabilities.KeepsAlive`),
    and benches that learn in place (:class:`~clln.controller.capabilities.LearnsInPlace`).
    """

    @property
    def network(self) -> Network:
        """The network realised, with its node roles."""
        ...

    @property
    def edges(self) -> EdgeActuators:
        """The edge actuators: continuous bounds or per-edge tap tables."""
        ...

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> Measurement:
        """Impose a batch of boundary conditions and return the settled node voltages.

        Parameters
        ----------
        sources : (B, n_sources) volts at ``network.roles.sources``.
        clamps : optional (B, n_clamps) volts at ``network.roles.clamps``; the
            clamped nodes float when omitted.
        """
        ...

    def adjust(self, commands: np.ndarray) -> Applied:
        """Apply edge commands (Δg for continuous, integer Δtaps for stepped)."""
        ...

    def read_edges(self) -> EdgeState:
        """The current actuator state and calibrated conductance estimates."""
        ...

    def safe(self) -> None:
        """Drive every output to 0 V; idempotent."""
        ...

    def close(self) -> None:
        """Release the hardware or resources; calls ``safe`` first."""
        ...

    def describe(self) -> dict[str, object]:
        """A JSON-serialisable description recorded with every run."""
        ...
