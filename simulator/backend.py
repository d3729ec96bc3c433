"""SimulatedBackend: the simulator as a :class:`~clln.controller.backend.NetworkBackend`."""

from __future__ import annotations

from typing import Any

import numpy as np

from clln.controller.backend import (
    Applied,
    ContinuousEdges,
    EdgeActuators,
    EdgeState,
    Measurement,
    SteppedEdges,
)
from clln.controller.network import Network
from clln.simulator.imperfections import Preset
from clln.simulator.physics import LinearNetworkSolver, SolverName


class SimClock:
    """Simulated time: advances by ``settle_time`` seconds per measured sample."""

    def __init__(self, settle_time: float = 1e-3) -> None:
        self.settle_time = settle_time
        self.now = 0.0

    def advance(self, samples: int) -> np.ndarray:
        """Timestamps (s) of ``samples`` consecutive samples; moves the clock past them."""
        stamps = self.now + self.settle_time * np.arange(1, samples + 1)
        self.now = float(stamps[-1]) if samples else self.now
        return stamps


class SimulatedBackend:
    """A simulated network trained through the same seam as a bench.

    Parameters
    ----------
    network : topology with node roles.
    edges : continuous bounds, or per-edge tap tables for stepped edges.
    initial : (m,) initial conductances (S) for continuous edges, or integer taps for
        stepped edges.
    preset : imperfection preset (``ideal`` by default).
    solver : sparse factorization to use.
    """

    def __init__(
        self,
        network: Network,
        edges: EdgeActuators,
        initial: np.ndarray,
        *,
        preset: Preset | None = None,
        solver: SolverName = "auto",
        clock: SimClock | None = None,
    ) -> None:
        self._network = network
        self._edges = edges
        self.preset = preset or Preset()
        self.clock = clock or SimClock()
        self._solver = LinearNetworkSolver(network, solver)
        m = network.n_edges
        initial = np.asarray(initial)
        if initial.shape != (m,):
            raise ValueError(f"initial state must have shape ({m},), got {initial.shape}")
        if isinstance(edges, SteppedEdges):
            self._taps: np.ndarray | None = np.clip(initial.astype(np.int64), 0, edges.n_taps - 1)
            self._g = edges.conductance(self._taps)
        else:
            self._taps = None
            self._g = np.clip(initial.astype(float), edges.gmin, edges.gmax)
        self._dirty = True
        self.is_safe = True
        self.n_measurements = 0

    @property
    def network(self) -> Network:
        return self._network

    @property
    def edges(self) -> EdgeActuators:
        return self._edges

    @property
    def solver_name(self) -> str:
        return self._solver.solver_name

    def _basis(self) -> np.ndarray:
        if self._dirty:
            self._solver.update(self.preset.true_conductances(self._g))
            self._dirty = False
        return self._solver.state.basis

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> Measurement:
        roles = self._network.roles
        sources = np.atleast_2d(np.asarray(sources, dtype=float))
        if sources.shape[1] != len(roles.sources):
            raise ValueError(f"sources must be (B, {len(roles.sources)}), got {sources.shape}")
        basis = self._basis()
        if clamps is None:
            coefficients = self._solver.free_coefficients(sources)
        else:
            clamps = np.atleast_2d(np.asarray(clamps, dtype=float))
            if clamps.shape != (sources.shape[0], len(roles.clamps)):
                raise ValueError(
                    f"clamps must be ({sources.shape[0]}, {len(roles.clamps)}), got {clamps.shape}"
                )
            coefficients = self._solver.clamped_coefficients(sources, clamps)
        self.is_safe = False
        self.n_measurements += 1
        return Measurement(coefficients, basis, self.clock.advance(sources.shape[0]))

    def adjust(self, commands: np.ndarray) -> Applied:
        commands = np.asarray(commands)
        if commands.shape != self._g.shape:
            raise ValueError(f"commands must have shape {self._g.shape}, got {commands.shape}")
        if isinstance(self._edges, SteppedEdges):
            assert self._taps is not None
            wanted = self._taps + commands.astype(np.int64)
            taps = np.clip(wanted, 0, self._edges.n_taps - 1)
            applied = taps - self._taps
            clipped = taps != wanted
            self._taps = taps
            self._g = self._edges.conductance(taps)
        else:
            edges: ContinuousEdges = self._edges
            wanted = self._g + commands.astype(float)
            g = np.clip(wanted, edges.gmin, edges.gmax)
            applied = g - self._g
            clipped = g != wanted
            self._g = g
        if np.any(applied):
            self._dirty = True
        return Applied(applied, clipped)

    def read_edges(self) -> EdgeState:
        return EdgeState(self._g.copy(), None if self._taps is None else self._taps.copy())

    def safe(self) -> None:
        self.is_safe = True

    def close(self) -> None:
        self.safe()

    def __enter__(self) -> SimulatedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        e = self._edges
        actuators: dict[str, Any] = (
            {"kind": "continuous", "gmin": e.gmin, "gmax": e.gmax}
            if isinstance(e, ContinuousEdges)
            else {"kind": "stepped", "n_taps": e.n_taps}
        )
        return {
            "backend": "simulator",
            "solver": self.solver_name,
            "imperfections": self.preset.describe(),
            "edges": actuators,
        }
