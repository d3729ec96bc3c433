"""A comparator-clocked twin potentiometer bench that learns in place (Dillavou et al.
2022 style, PR Applied 18, 014040).

Two copies of the network, free and clamped, built from X9C-like digital
potentiometers (100 taps, up/down interface: the position is tracked, never read) in
rheostat mode behind a series resistor. Edge j of both twins is always moved together.
Per edge, two difference amplifiers with precision rectifiers form |dV_free| and
|dV_clamped|, and a window comparator decides, on every pulse of a global clock, one
tap toward higher conductance when |dV_free| > |dV_clamped| (the sign of
dV_free^2 - dV_clamped^2 of coupled learning), one tap toward lower conductance in the
opposite case, and nothing inside its dead band. The networks re-settle between pulses.

Learning bias arises only from the parts (no additive bias term): the input offset of
each difference amplifier, the comparator's offset, and the mismatch of the twin
potentiometers' end-to-end resistance and wiper resistance. Every part error is drawn
once from ``bench_seed``; readout noise from ``noise_seed``. Learning time is a number
of clock pulses: ``floor(window * clock_hz)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clln.controller.backend import EdgeState, SteppedEdges
from clln.controller.insitu import PhysicsBench
from clln.controller.network import Network
from clln.simulator.physics import LinearNetworkSolver
from clln.simulator.rheostat import rheostat_resistance, rheostat_table

PRESET = "comparator-twin"


@dataclass(frozen=True)
class ComparatorTwinParams:
    """Parts of the comparator-clocked twin bench (datasheet-like defaults).

    taps, r_total, r_wiper : X9C103: 100 taps, 10 kOhm end to end, 40 Ohm wiper.
    r_series : fixed series resistor per edge, Ohm.
    r_tolerance : relative spread (1 sigma) of r_total between edges (X9C: +-20 % max).
    twin_mismatch : relative spread (1 sigma) of r_total between the two twins of an edge.
    r_wiper_sigma : spread of the wiper resistance, Ohm.
    opamp_offset : input offset (1 sigma), V, of each difference amplifier (e.g. 2 mV).
    comparator_offset : input offset (1 sigma), V, of each edge's comparator.
    dead_band : half-width, V, of the window comparator's no-move band.
    clock_hz : global learning clock; one tap decision per pulse.
    noise_rms : readout noise of the node voltages the host sees, V (0: noise off).
    """

    taps: int = 100
    r_total: float = 10e3
    r_wiper: float = 40.0
    r_series: float = 1e3
    r_tolerance: float = 0.07
    twin_mismatch: float = 0.01
    r_wiper_sigma: float = 10.0
    opamp_offset: float = 2e-3
    comparator_offset: float = 2e-3
    dead_band: float = 5e-3
    clock_hz: float = 10e3
    noise_rms: float = 1e-3


class ComparatorTwinPhysics:
    """The analog side of the bench: the primitives of
    :class:`~clln.controller.insitu.InSituPhysics`.

    Parameters
    ----------
    network : topology with roles (sources, grounds, clamped outputs).
    taps : (m,) initial tap of every edge pair.
    params : the parts.
    bench_seed, noise_seed : seeds of the part errors and of the readout noise.
    """

    def __init__(self, network: Network, taps: np.ndarray, params: ComparatorTwinParams,
                 *, bench_seed: int = 0, noise_seed: int = 0) -> None:
        self.network = network
        self.params = p = params
        m = network.n_edges
        if np.any((np.asarray(taps) < 0) | (np.asarray(taps) >= p.taps)):
            raise ValueError(f"taps must lie in 0..{p.taps - 1}")
        self.taps = np.array(taps, dtype=np.int64)
        self._seeds = (bench_seed, noise_seed)
        rng = np.random.default_rng(bench_seed)
        spread = 1.0 + p.r_tolerance * rng.standard_normal(m)
        # (2, m): free twin 0, clamped twin 1
        self.r_total = p.r_total * spread * (1.0 + p.twin_mismatch * rng.standard_normal((2, m)))
        self.r_wiper = np.maximum(p.r_wiper + p.r_wiper_sigma * rng.standard_normal((2, m)), 0.0)
        self.opamp_offset = p.opamp_offset * rng.standard_normal((2, m))
        self.comparator_offset = p.comparator_offset * rng.standard_normal(m)
        self._noise = np.random.default_rng(noise_seed)
        self._solver = LinearNetworkSolver(network)
        self.solver_name = self._solver.solver_name
        self._ends = network.edges
        self.pulses = 0

    @property
    def output_nodes(self) -> tuple[int, ...]:
        return tuple(self.network.roles.clamps)

    def conductances(self, twin: int) -> np.ndarray:
        """(m,) true conductance (S) of twin 0 (free) or 1 (clamped) at the current taps."""
        p = self.params
        return 1.0 / rheostat_resistance(self.taps, p.taps, self.r_total[twin], self.r_wiper[twin], p.r_series)

    def _settle(self, twin: int, sources: np.ndarray, clamps: np.ndarray | None) -> np.ndarray:
        return self._solver.solve_dense(self.conductances(twin), sources, clamps)

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> np.ndarray:
        """(B, n) node voltages, V, read from the free twin (or the clamped one when
        ``clamps`` is given), with readout noise."""
        sources = np.atleast_2d(np.asarray(sources, dtype=float))
        clamps = None if clamps is None else np.atleast_2d(np.asarray(clamps, dtype=float))
        v = self._settle(0 if clamps is None else 1, sources, clamps)
        if self.params.noise_rms:
            v = v + self.params.noise_rms * self._noise.standard_normal(v.shape)
        return v

    def learn(self, sources: np.ndarray, clamps: np.ndarray, duration_s: float,
              free_clamps: np.ndarray | None = None) -> None:
        """Learning enabled for ``duration_s``: one comparator decision per clock pulse."""
        p = self.params
        src = np.atleast_2d(np.asarray(sources, dtype=float))
        held = np.atleast_2d(np.asarray(clamps, dtype=float))
        mirror = None if free_clamps is None else np.atleast_2d(np.asarray(free_clamps, dtype=float))
        a, b = self._ends[:, 0], self._ends[:, 1]
        for _ in range(int(np.floor(duration_s * p.clock_hz + 1e-9))):
            v_free = self._settle(0, src, mirror)[0]
            v_clamped = self._settle(1, src, held)[0]
            rect_free = np.abs(v_free[a] - v_free[b] + self.opamp_offset[0])
            rect_clamped = np.abs(v_clamped[a] - v_clamped[b] + self.opamp_offset[1])
            signal = rect_free - rect_clamped + self.comparator_offset
            # more conductance = fewer taps of resistance
            step = np.where(signal > p.dead_band, -1, np.where(signal < -p.dead_band, 1, 0))
            self.taps = np.clip(self.taps + step, 0, p.taps - 1)
            self.pulses += 1

    def read_state(self) -> np.ndarray:
        """(m,) tracked taps (as floats)."""
        return self.taps.astype(float)

    def nominal_table(self) -> np.ndarray:
        """(m, taps) nominal conductance per tap (what a user calibrates against), S."""
        p = self.params
        return rheostat_table(p.taps, p.r_total, p.r_wiper, p.r_series, edges=self.network.n_edges)

    def replica(self) -> ComparatorTwinPhysics:
        """A second bench built from the same parts (same bench and noise seeds) in this
        one's state: e.g. the analog front end behind the compiled firmware."""
        bench_seed, noise_seed = self._seeds
        twin = ComparatorTwinPhysics(self.network, self.taps, self.params,
                                     bench_seed=bench_seed, noise_seed=noise_seed)
        twin.load_state_dict(self.state_dict())
        return twin

    def state_dict(self) -> dict[str, Any]:
        return {"taps": self.taps.copy(), "noise": self._noise.bit_generator.state,
                "pulses": self.pulses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.taps = np.asarray(state["taps"], dtype=np.int64).copy()
        self._noise.bit_generator.state = state["noise"]
        self.pulses = int(state["pulses"])


class ComparatorTwinBench(PhysicsBench):
    """The simulated comparator-clocked twin bench as a backend that
    :class:`~clln.controller.capabilities.LearnsInPlace`: it runs the loop
    (:func:`~clln.controller.insitu.run_loop`) on its own physics."""

    def __init__(self, physics: ComparatorTwinPhysics, *, bench_seed: int = 0,
                 noise_seed: int = 0) -> None:
        self.physics = physics
        self._seeds = {"bench_seed": bench_seed, "noise_seed": noise_seed}
        self._edges = SteppedEdges(physics.nominal_table())

    @property
    def edges(self) -> SteppedEdges:
        return self._edges

    def read_edges(self) -> EdgeState:
        taps = self.physics.taps.copy()
        return EdgeState(self._edges.conductance(taps), taps)

    def describe(self) -> dict[str, object]:
        return {"kind": "simulated-insitu", "backend": "simulator, learns in place",
                "preset": PRESET, **self._seeds,
                "solver": self.physics.solver_name,
                "parameters": asdict(self.physics.params)}
