"""SimulatedBackend: the simulated bench as a :class:`~clln.controller.backend.NetworkBackend`.

With no imperfections (the ``ideal`` preset) measurements are the exact physics,
returned in factored form (the fast path). With imperfections, one
:class:`~clln.simulator.imperfections.BenchInstance` holds the bench's drawn part
errors: commands go through the actuator models to true conductances, boundary
voltages through the AO models, and node voltages come back through the AI models.
The controller only ever sees the nominal (datasheet or calibrated) edge table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

import numpy as np

from clln.controller.backend import (
    Applied,
    ContinuousEdges,
    EdgeActuators,
    EdgeState,
    GateEdges,
    Measurement,
    SteppedEdges,
    boundary_arrays,
)
from clln.controller.bounds import require_finite
from clln.controller.errors import ProtocolError
from clln.controller.network import Network, NodeRoles
from clln.simulator.imperfections import BenchInstance, Imperfections
from clln.simulator.physics import LinearNetworkSolver, SolverName


class SimClock:
    """Simulated time: advances by ``settle_time`` seconds per measured sample."""

    def __init__(self, settle_time: float = 1e-3) -> None:
        self.settle_time = settle_time
        self.now = 0.0

    def advance(self, samples: int) -> np.ndarray:
        """Timestamps (s) of ``samples`` consecutive samples; moves the clock past them."""
        if samples == 1:  # one sample per measurement (the rig's protocol): the same bits, 3x cheaper
            self.now = self.now + self.settle_time * 1.0
            return np.array([self.now])
        stamps = self.now + self.settle_time * np.arange(1, samples + 1)
        self.now = float(stamps[-1]) if samples else self.now
        return stamps


def with_drivers(network: Network) -> Network:
    """The network plus one hidden driver node per source and clamped node, joined to it
    by an extra edge (the source output impedance); the drivers take the boundary roles.

    Driver edges are appended after the network's edges, sources first.
    """
    roles = network.roles
    driven = list(roles.sources) + list(roles.clamps)
    n = network.n_nodes
    drivers = np.arange(n, n + len(driven))
    edges = np.vstack([network.edges, np.c_[drivers, driven]]) if driven else network.edges
    positions = None
    if network.positions is not None:
        positions = np.vstack([network.positions, network.positions[driven]]) if driven else network.positions
    ns = len(roles.sources)
    return Network(
        n + len(driven), edges, positions=positions,
        roles=NodeRoles(tuple(drivers[:ns].tolist()), roles.grounds, tuple(drivers[ns:].tolist())),
    )


class SimulatedSeam:
    """The seam members every simulated backend shares: its network, its actuators, twin
    benches (two solvers), and a safe state that needs no hardware."""

    _network: Network
    _edges: EdgeActuators
    _solvers: list[Any]
    imperfections: Imperfections
    _bench: BenchInstance | None
    is_safe: bool

    @property
    def network(self) -> Network:
        return self._network

    @property
    def edges(self) -> EdgeActuators:
        return self._edges

    @property
    def twin(self) -> bool:
        """True for a twin bench: free states on twin 0, clamped states on twin 1."""
        return len(self._solvers) == 2

    def safe(self) -> None:
        self.is_safe = True

    def close(self) -> None:
        self.safe()

    def _driven(self, sources: np.ndarray, clamps: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """The voltages the AO channels really put out for the sources (B, n_sources) and
        clamps (B, n_clamps) asked for (sources first, then clamps, channel by channel)."""
        bench = self._bench
        if bench is None or bench.params.exact_drive:
            return sources, clamps
        ns = len(self._network.roles.sources)
        return (bench.drive(sources, slice(0, ns)),
                None if clamps is None else bench.drive(clamps, slice(ns, None)))

    def _node_resistance_from(self, total: np.ndarray, *, clamped: bool) -> np.ndarray:
        """(n,) resistance of each node (ohm) for multiplexer settling, from the total
        conductance at each node (S): driven nodes see the source impedance, grounds 0."""
        with np.errstate(divide="ignore"):
            resistance = 1.0 / total
        roles = self._network.roles
        driven = list(roles.sources) + (list(roles.clamps) if clamped else [])
        resistance[driven] = self.imperfections.source_impedance
        resistance[list(roles.grounds)] = 0.0
        return resistance

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimulatedBackend(SimulatedSeam):
    """A simulated network trained through the same seam as a bench.

    Parameters
    ----------
    network : topology with node roles.
    edges : the nominal actuators the controller sees: continuous bounds, or per-edge
        nominal tap tables for stepped edges.
    initial : (m,) initial conductances (S) for continuous edges, or integer taps.
    imperfections : imperfection parameters; None or all-zero is the ideal bench.
    pot : nominal (taps, r_ab, r_wiper, r_series) of stepped edges, needed to draw
        their true tap tables when imperfections are on.
    bench_seed : seed of the bench instance (the drawn part errors).
    noise_seed : seed of the measurement noise.
    solver : sparse factorization to use.
    clock : simulated time (one per backend by default).
    preset : name of the preset the parameters came from, for the record.
    """

    def __init__(
        self,
        network: Network,
        edges: EdgeActuators,
        initial: np.ndarray,
        *,
        imperfections: Imperfections | None = None,
        pot: tuple[int, float, float, float] | None = None,
        bench_seed: int = 0,
        noise_seed: int = 0,
        solver: SolverName = "auto",
        clock: SimClock | None = None,
        preset: str = "ideal",
    ) -> None:
        if isinstance(edges, GateEdges):
            raise TypeError("transistor edges are simulated by TransistorBackend "
                            "(clln.simulator.transistor_backend)")
        self.preset = preset
        self._network = network
        self._edges: ContinuousEdges | SteppedEdges = edges
        params = imperfections or Imperfections()
        self.imperfections = params
        self.clock = clock or SimClock(params.settle_time)
        m = network.n_edges
        initial = np.asarray(initial)
        if initial.shape != (m,):
            raise ValueError(f"initial state must have shape ({m},), got {initial.shape}")
        state = edges.clip_state(initial)  # taps, or conductances (S)
        self._taps: np.ndarray | None = state if edges.is_stepped else None
        self._g = edges.conductance_at(state)

        self._bench: BenchInstance | None = None
        if params != Imperfections():
            if isinstance(edges, SteppedEdges) and pot is None:
                pot = _pot_from_table(edges)
            self._bench = BenchInstance.draw(
                params, n_nodes=network.n_nodes, n_edges=m,
                n_ao=len(network.roles.sources) + len(network.roles.clamps),
                pot=pot if isinstance(edges, SteppedEdges) else None,
                rng=np.random.default_rng(bench_seed),
            )
        # Asymmetric actuators: where each twin's edges really are (S), apart from the
        # commanded values the controller knows.
        self._actual: np.ndarray | None = None
        if self._bench is not None and self._bench.asymmetry is not None:
            if isinstance(edges, SteppedEdges):
                raise ProtocolError("actuator_asymmetry models analog actuators: it needs continuous edges")
            self._actual = np.tile(self._g, (self._bench.asymmetry.shape[0], 1))
        self._noise = np.random.default_rng(noise_seed)
        self._drivers = params.source_impedance > 0
        physics_net = with_drivers(network) if self._drivers else network
        self._solvers = [LinearNetworkSolver(physics_net, solver)
                         for _ in range(2 if params.twin else 1)]
        self._dirty = [True] * len(self._solvers)
        self._solved_at = [0.0] * len(self._solvers)
        self.is_safe = True
        self.n_measurements = 0

    # -- the seam ------------------------------------------------------------

    @property
    def solver_name(self) -> str:
        return self._solvers[0].solver_name

    def true_conductances(self, twin: int = 0, time: float | None = None) -> np.ndarray:
        """(m,) conductances the physics of a twin sees now (S). Simulator only: a bench
        has no such oracle."""
        if self._bench is None:
            return self._g
        t = self.clock.now if time is None else time
        commanded = self._g if self._actual is None else self._actual[twin]
        return self._bench.true_conductances(twin, conductances=commanded, taps=self._taps, time=t)

    def _basis(self, twin: int, time: float) -> np.ndarray:
        drifting = self._bench is not None and self._bench.drifts and time != self._solved_at[twin]
        if self._dirty[twin] or drifting:
            g = self.true_conductances(twin, time)
            if self._drivers:
                n_driven = len(self._network.roles.sources) + len(self._network.roles.clamps)
                g = np.r_[g, np.full(n_driven, 1.0 / self.imperfections.source_impedance)]
            self._solvers[twin].update(g)
            self._dirty[twin] = False
            self._solved_at[twin] = time
        return self._solvers[twin].state.basis

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> Measurement:
        sources, clamps = self._check(sources, clamps)
        stamps = self.clock.advance(sources.shape[0])
        return self._measure(1 if clamps is not None and self.twin else 0, sources, clamps, stamps)

    def measure_twin(
        self, sources: np.ndarray, clamp_rule: Callable[[Measurement], np.ndarray], *,
        swap: bool = False,
    ) -> tuple[Measurement, Measurement]:
        """Free state on twin 0 and, at the same time, the clamped state on twin 1 with its
        clamped nodes held at ``clamp_rule(free)`` (the bench's nudge circuit).

        With ``swap`` the twins exchange roles (free on twin 1, clamped on twin 0). The
        per-edge signal circuits, wired from twin 0 to twin 1, then see their inputs
        reversed; the measurements are still returned as (free, clamped), so the circuits'
        fixed offset enters the controller's (dV_free)^2 - (dV_clamped)^2 with the
        opposite sign (the controller demodulates the reversed polarity).
        """
        sources, _ = self._check(sources, None)
        stamps = self.clock.advance(sources.shape[0])
        free_twin, clamped_twin = (1, 0) if swap and self.twin else (0, 1 if self.twin else 0)
        free = self._measure(free_twin, sources, None, stamps)
        _, checked = self._check(sources, np.atleast_2d(np.asarray(clamp_rule(free), dtype=float)))
        return free, self._measure(clamped_twin, sources, checked, stamps,
                                   polarity=-1.0 if swap and self.twin else 1.0)

    def _check(self, sources: np.ndarray, clamps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        return boundary_arrays(self._network, sources, clamps)

    def _measure(self, twin: int, sources: np.ndarray, clamps: np.ndarray | None,
                 stamps: np.ndarray, polarity: float = 1.0) -> Measurement:
        bench = self._bench
        sources, clamps = self._driven(sources, clamps)
        basis = self._basis(twin, float(stamps[-1]))
        solver = self._solvers[twin]
        coefficients = (solver.free_coefficients(sources) if clamps is None
                        else solver.clamped_coefficients(sources, clamps))
        self.is_safe = False
        self.n_measurements += 1
        n = self._network.n_nodes
        node_basis = basis[:n] if self._drivers else basis
        offsets = None
        if bench is not None and clamps is not None and bench.has_bias:
            offsets = -bench.bias if polarity > 0 else bench.bias
        if bench is None or bench.params.exact_readout:
            return Measurement(coefficients, node_basis, stamps, edge_offsets=offsets)
        exact = coefficients @ node_basis.T
        readings = bench.read(exact, self._node_resistance(twin, clamped=clamps is not None), self._noise,
                              stamps)
        return Measurement(readings, None, stamps, edge_offsets=offsets)

    def _node_resistance(self, twin: int, *, clamped: bool) -> np.ndarray:
        """(n,) Thevenin resistance estimate of each node (ohm), for multiplexer settling."""
        net = self._network
        g = self.true_conductances(twin)
        total = np.bincount(net.edges.ravel(), weights=np.repeat(g, 2), minlength=net.n_nodes)
        return self._node_resistance_from(total, clamped=clamped)

    def adjust(self, commands: np.ndarray) -> Applied:
        commands = require_finite(commands, "adjust: edge commands")
        if commands.shape != self._g.shape:
            raise ValueError(f"commands must have shape {self._g.shape}, got {commands.shape}")
        edges = self._edges
        state, applied, clipped = edges.move(self._g if self._taps is None else self._taps, commands)
        if self._taps is not None:
            self._taps = state
        self._g = edges.conductance_at(state)
        if self._actual is not None:  # analog actuators whose up and down steps differ: dg (1 +- a_j)
            assert self._bench is not None and self._bench.asymmetry is not None
            moved = applied + self._bench.asymmetry * np.abs(applied)
            self._actual = edges.clip_state(self._actual + moved)
        if np.any(applied):
            self._dirty = [True] * len(self._solvers)
        return Applied(applied, clipped)

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during a run: edge state, noise generator, clock."""
        state = {"conductances": self._g.copy(), "taps": None if self._taps is None else self._taps.copy(),
                 "noise": self._noise.bit_generator.state, "clock": self.clock.now}
        if self._actual is not None:  # asymmetric actuators: where the edges really are
            state["actual"] = self._actual.copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the same network, edges and bench instance)."""
        self._g = np.asarray(state["conductances"], dtype=float).copy()
        self._taps = None if state["taps"] is None else np.asarray(state["taps"], dtype=np.int64).copy()
        self._noise.bit_generator.state = state["noise"]
        self.clock.now = float(state["clock"])
        if self._actual is not None:
            self._actual = np.asarray(state["actual"], dtype=float).copy()
        self._dirty = [True] * len(self._solvers)

    def set_taps(self, taps: np.ndarray) -> None:
        """Put stepped edges at the given taps (the emulated bench's firmware does this)."""
        if self._taps is None:
            raise TypeError("set_taps needs stepped edges")
        taps = np.asarray(taps, dtype=np.int64)
        if taps.shape != self._taps.shape:
            raise ValueError(f"taps must have shape {self._taps.shape}, got {taps.shape}")
        if not np.array_equal(taps, self._taps):
            self._taps = self._edges.clip_state(taps)
            self._g = self._edges.conductance_at(self._taps)
            self._dirty = [True] * len(self._solvers)

    def read_edges(self) -> EdgeState:
        return EdgeState(self._g.copy(), None if self._taps is None else self._taps.copy())

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "simulator",
            "solver": self.solver_name,
            "twin": self.twin,
            "preset": self.preset,
            "imperfections": {"preset": self.preset, **self.imperfections.model_dump()},
            "edges": self._edges.describe(),
        }


def _pot_from_table(edges: SteppedEdges) -> tuple[int, float, float, float]:
    """Nominal (taps, r_ab, r_wiper, r_series) read off a nominal tap table (wiper folded
    into the series resistance)."""
    r = 1.0 / edges.table[0]
    return edges.n_taps, float(r[-1] - r[0]), 0.0, float(r[0])
