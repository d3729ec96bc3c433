"""TransistorBackend: a simulated network of transistor edges behind the NetworkBackend seam.

Each edge is a transistor whose gate sits on a capacitor; its gate voltage is the edge's
adjustable state (:class:`~clln.controller.backend.GateEdges`). ``measure`` solves the
network's operating points by Newton's method (:mod:`clln.simulator.nonlinear`), warm
started from the last solution of the same sample; ``adjust`` runs one learning window
of the rig's learning circuit (:class:`LearningWindow`) on every gate.

Imperfections (drawn once per bench seed, like a chip fingerprint):

* per-device spread of the threshold (``vt_spread``, V rms) and the gain
  (``s_spread``, relative rms) of every transistor;
* twin networks (``twin = true``): the clamped twin has its own devices;
* gate-capacitor leakage (``gate_leak_resistance``, ohm; 0 = none): the gates decay
  towards 0 V with time constant R_leak C between and during learning windows;
* DAQ input/output errors, read noise and quantization, as for the linear benches
  (:class:`~clln.simulator.imperfections.BenchInstance`).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from clln.controller._kernels import incidence_endpoints
from clln.controller.backend import Applied, GateEdges, Measurement, boundary_arrays
from clln.controller.backend import EdgeState as _EdgeState
from clln.controller.network import Network
from clln.simulator.backend import SimClock, SimulatedSeam
from clln.simulator.devices import EdgeModel
from clln.simulator.imperfections import BenchInstance, Imperfections
from clln.simulator.network_equations import compiled_module
from clln.simulator.nonlinear import (
    LinearName,
    LuName,
    NewtonResult,
    NonlinearNetworkSolver,
    with_resistors,
)


@dataclass(frozen=True)
class LearningWindow:
    """The rig's learning circuit acting on one gate for one window.

    The gate capacitor C is charged through R from the learning circuit's output u,
    held for the window of T seconds; a leak resistance R_leak (inf: none) discharges it
    to 0 V. The circuit's gain is set so that a leak-free window moves the gate by the
    commanded ΔV_G: u = V_G + ΔV_G / (1 - exp(-T / (R C))). Then, with
    tau = C (R || R_leak) and V_inf = u R_leak / (R + R_leak),

        V_G(T) = V_inf + (V_G(0) - V_inf) exp(-T / tau).

    Between windows the gate only leaks: V_G(t) = V_G(0) exp(-t / (R_leak C)).

    Attributes
    ----------
    capacitance : C, farad (rig: 2.2 uF).
    resistance : R, ohm (rig: 1 kOhm).
    window : T, seconds (rig: 25-200 us).
    leak_resistance : R_leak, ohm (0: no leak).
    """

    capacitance: float = 2.2e-6
    resistance: float = 1e3
    window: float = 100e-6
    leak_resistance: float = 0.0

    def drive(self, gates: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The learning circuit's output u (V) for commanded changes ``delta`` (V)."""
        fraction = -np.expm1(-self.window / (self.resistance * self.capacitance))
        return gates + delta / fraction

    def apply(self, gates: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Gate voltages (V) after one window commanded to move them by ``delta`` (V)."""
        u = self.drive(gates, delta)
        r, c = self.resistance, self.capacitance
        if self.leak_resistance > 0:
            rl = self.leak_resistance
            v_inf = u * rl / (r + rl)
            tau = c * r * rl / (r + rl)
        else:
            v_inf, tau = u, r * c
        return v_inf + (gates - v_inf) * np.exp(-self.window / tau)

    def hold(self, gates: np.ndarray, seconds: float) -> np.ndarray:
        """Gate voltages after ``seconds`` of holding (leak only)."""
        if self.leak_resistance <= 0 or seconds <= 0:
            return gates
        return gates * np.exp(-seconds / (self.leak_resistance * self.capacitance))


@dataclass(frozen=True, eq=False)
class CompiledMeasurement(Measurement):
    """A dense measurement whose ``batch_power`` (the coupled rule's per-edge batch sum)
    is one compiled pass (:func:`~clln.simulator._nl_kernels.batch_power`) where the
    incidence is a plain signed incidence matrix: measured 8.1 -> 1.4 ms per call at 1e5
    edges, batch 10. Returned for networks whose Newton solver uses the compiled kernels
    (small networks keep :class:`Measurement`, whose sums their recorded runs hold); the
    sum over samples is in another order than the sparse product's (round-off)."""

    def batch_power(self, incidence: sp.spmatrix, weights: np.ndarray | None = None) -> np.ndarray:
        ends = incidence_endpoints(incidence)
        if self.basis is not None or ends is None:
            return super().batch_power(incidence, weights)
        _nl_kernels = compiled_module("_nl_kernels")
        w = np.ones(self.batch_size) if weights is None else np.asarray(weights, dtype=float)
        power = np.empty(ends[0].size)
        _nl_kernels.batch_power(np.ascontiguousarray(self.coefficients, dtype=float), ends[0], ends[1],
                                np.ascontiguousarray(w), power)
        if self.edge_offsets is not None:
            power = power + self.edge_offsets * w.sum()
        return power

    def signal_against(self, clamped: Measurement, incidence: sp.spmatrix, weights: np.ndarray,
                       total: float) -> np.ndarray | None:
        """The contrastive signal (this batch power - ``clamped``'s) / ``total`` in one
        compiled call (:func:`~clln.simulator._nl_kernels.power_difference`: the same sums
        and difference as two ``batch_power`` calls), or None where that does not apply
        (a basis, per-edge offsets, another kind of measurement or incidence)."""
        ends = _unsigned_endpoints(incidence)
        if (not isinstance(clamped, CompiledMeasurement) or ends is None or self.basis is not None
                or clamped.basis is not None or self.edge_offsets is not None
                or clamped.edge_offsets is not None or clamped.batch_size != self.batch_size):
            return None
        _nl_kernels = compiled_module("_nl_kernels")
        m, count = ends[0].size, self.batch_size
        out = np.empty(m)
        pf, pc = (np.empty(m), np.empty(m)) if count > 2 else (out, out)  # not read up to two samples
        _nl_kernels.power_difference(np.ascontiguousarray(self.coefficients, dtype=float),
                                     np.ascontiguousarray(clamped.coefficients, dtype=float), ends[0], ends[1],
                                     np.ascontiguousarray(weights, dtype=float), float(total), pf, pc, out)
        return out


_NO_CLAMPS = (np.zeros(0, dtype=np.int64), np.zeros(0))  # the clamped nodes and values of a free state
_unsigned_ends: dict[int, tuple[weakref.ref[Any], tuple[np.ndarray, np.ndarray] | None]] = {}


def _unsigned_endpoints(incidence: sp.spmatrix) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`~clln.controller._kernels.incidence_endpoints` as uint32 arrays for the
    compiled kernels (half the bytes, no negative-index check), remembered per incidence
    object."""
    hit = _unsigned_ends.get(id(incidence))
    if hit is not None and hit[0]() is incidence:
        return hit[1]
    ends = incidence_endpoints(incidence)
    if ends is not None and incidence.shape[1] < 2**32:
        ends = (ends[0].astype(np.uint32), ends[1].astype(np.uint32))
    if len(_unsigned_ends) >= 8:
        _unsigned_ends.clear()
    _unsigned_ends[id(incidence)] = (weakref.ref(incidence), ends)
    return ends


class TransistorBackend(SimulatedSeam):
    """A simulated network of transistor edges trained through the same seam as a bench.

    Parameters
    ----------
    network : topology with node roles.
    model : nominal edge device (:mod:`clln.simulator.devices`).
    edges : gate-voltage bounds and resolution the controller sees.
    initial : (m,) initial gate voltages, V.
    imperfections : imperfection parameters (``vt_spread``, ``s_spread``,
        ``gate_leak_resistance``, ``twin``, DAQ errors); None is the ideal bench.
    window : the learning circuit (capacitor, resistor, window length).
    bench_seed, noise_seed : seeds of the drawn devices and of the read noise.
    lu : LU library of the Newton solver.
    linear : the Newton steps' linear solver (``auto``, ``lu``, ``krylov``; see
        :class:`~clln.simulator.nonlinear.NonlinearNetworkSolver`).
    clock : simulated time.
    preset : name of the imperfection preset, for the record.
    fixed_resistors : optional (a, b, conductance S) resistors beside the transistor
        edges, not trained and not edges of ``network`` (seed 002's small network has
        one of 500 ohm).
    extrapolate : warm start a sample from the extrapolation of its last states of the
        same kind when they were solved at the previous gate versions (learning
        windows): quadratic through the last three (3 v_k - 3 v_(k-1) + v_(k-2)), else
        linear through the last two (2 v_k - v_(k-1)). Measured at 2e4 edges the linear
        one starts 10x nearer the solution and saves one Newton iteration in four; the
        quadratic one then saves 5 % of the step at batch 10 and 13 % at batch 1 (GMRES
        iterations per Newton step 1.6 -> 1.3). None: on for networks solved with the
        shared factorization (``linear``), off for small ones (whose runs stay as
        recorded).
    """

    _edges: GateEdges

    def __init__(self, network: Network, model: EdgeModel, edges: GateEdges, initial: np.ndarray, *,
                 imperfections: Imperfections | None = None, window: LearningWindow | None = None,
                 bench_seed: int = 0, noise_seed: int = 0, lu: LuName = "superlu",
                 clock: SimClock | None = None, preset: str = "ideal",
                 fixed_resistors: list[tuple[int, int, float]] | None = None,
                 linear: LinearName = "auto", extrapolate: bool | None = None) -> None:
        params = imperfections or Imperfections()
        self.imperfections = params
        self.preset = preset
        self._network = network
        self._edges = edges
        m = network.n_edges
        initial = np.asarray(initial, dtype=float)
        if initial.shape != (m,):
            raise ValueError(f"initial gate voltages must have shape ({m},), got {initial.shape}")
        self.clock = clock or SimClock(params.settle_time)
        window = window or LearningWindow()
        if params.gate_leak_resistance:
            window = LearningWindow(window.capacitance, window.resistance, window.window,
                                    params.gate_leak_resistance)
        self.window = window
        rng = np.random.default_rng(bench_seed)
        n_twins = 2 if params.twin else 1
        self.models = [model.with_spread(rng, m, params.vt_spread, params.s_spread)
                       if (params.vt_spread or params.s_spread) else model for _ in range(n_twins)]
        self._bench: BenchInstance | None = None
        if params != Imperfections():
            self._bench = BenchInstance.draw(
                params, n_nodes=network.n_nodes, n_edges=m,
                n_ao=len(network.roles.sources) + len(network.roles.clamps), pot=None, rng=rng)
        physics, fixed, mask = with_resistors(network, fixed_resistors or [])
        self.fixed_resistors = list(fixed_resistors or [])
        self._n_fixed = len(self.fixed_resistors)
        self._solvers = [NonlinearNetworkSolver(physics, mod, lu=lu, fixed_conductance=fixed,
                                                device_mask=mask, linear=linear)
                         for mod in self.models]
        self._commanded = self._quantize(np.clip(initial, edges.vmin, edges.vmax))
        self._gates = np.tile(self._commanded, (n_twins, 1))  # the capacitors' voltages
        self._aged_at = self.clock.now
        self._noise = np.random.default_rng(noise_seed)
        self._warm: dict[bytes, list[tuple[int, np.ndarray]]] = {}  # last free states per sample
        self._warm_clamped: dict[bytes, list[tuple[int, np.ndarray]]] = {}  # its last 2 (3) clamped states
        self._version = 0  # learning windows applied (the gates' version of each stored state)
        self.extrapolate = (extrapolate if extrapolate is not None
                            else self._solvers[0].uses_shared_factorization)
        self._last: np.ndarray | None = None
        self._window_cache: tuple[LearningWindow, tuple[float, bool, float, float, float]] | None = None
        # Newton iterations per solve, of the last 65,536 measure calls (a deque: a run of a
        # million steps kept two arrays per step, 0.2 GB, in a list)
        self.iterations: deque[np.ndarray] = deque(maxlen=65536)
        self.is_safe = True
        self.n_measurements = 0

    # -- the seam ------------------------------------------------------------

    @property
    def solvers(self) -> list[NonlinearNetworkSolver]:
        return self._solvers

    def gate_voltages(self, twin: int = 0) -> np.ndarray:
        """(m,) voltages on the gate capacitors of a twin now (V). Simulator only."""
        self._age()
        return self._gates[twin].copy()

    def _physics_gates(self, twin: int) -> np.ndarray:
        """Gate voltages of the physics' edges: the transistors', then 0 V for the fixed
        resistors (which have no device)."""
        if not self._n_fixed:
            return self._gates[twin]
        return np.r_[self._gates[twin], np.zeros(self._n_fixed)]

    def _quantize(self, gates: np.ndarray) -> np.ndarray:
        res = self._edges.resolution
        return gates if res <= 0 else np.round(gates / res) * res

    def _age(self) -> None:
        """Let the gates leak from the last update to the clock's time."""
        now = self.clock.now
        if now > self._aged_at:
            self._gates = self.window.hold(self._gates, now - self._aged_at)
        self._aged_at = now

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> Measurement:
        sources, clamps = boundary_arrays(self._network, sources, clamps)
        stamps = self.clock.advance(sources.shape[0])
        return self._measure(1 if clamps is not None and self.twin else 0, sources, clamps, stamps)

    def measure_twin(self, sources: np.ndarray, clamp_rule: Callable[[Measurement], np.ndarray], *,
                     swap: bool = False) -> tuple[Measurement, Measurement]:
        """Free state on twin 0 and the clamped state on twin 1 at the same time (twin 1
        and 0 with ``swap``), the clamps given by ``clamp_rule(free)``."""
        sources, _ = boundary_arrays(self._network, sources, None)
        stamps = self.clock.advance(sources.shape[0])
        free_twin, clamped_twin = (1, 0) if swap and self.twin else (0, 1 if self.twin else 0)
        free = self._measure(free_twin, sources, None, stamps)
        _, clamps = boundary_arrays(self._network, sources, np.asarray(clamp_rule(free), dtype=float))
        return free, self._measure(clamped_twin, sources, clamps, stamps)

    def _keys(self, twin: int, sources: np.ndarray) -> list[bytes]:
        """One key per sample: the twin and the driven source voltages."""
        return [bytes([twin]) + row.tobytes() for row in sources]

    def _start(self, twin: int, sources: np.ndarray, clamps: np.ndarray | None,
               keys: list[bytes] | None = None) -> np.ndarray | None:
        """Warm start of each sample: for a free state its last free state; for a clamped
        state, of its last clamped states and its free state, the one whose clamped nodes
        are nearest the requested clamps (nudged and mirrored clamps alternate)."""
        if self._last is None:
            return None
        free_keys = self._keys(twin, sources) if keys is None else keys
        out = np.empty((len(free_keys), self._last.size))
        scratch = np.empty(self._last.size)
        for i, key in enumerate(free_keys):
            history = self._warm_clamped.get(key, []) if clamps is not None else self._warm.get(key, [])
            if self._extrapolated(history, out[i], scratch):
                continue
            candidates = [h[1] for h in self._warm.get(key, [])[:1]]
            if clamps is not None:
                candidates = [h[1] for h in self._warm_clamped.get(key, [])] + candidates
            if not candidates:
                out[i] = self._last
            elif clamps is None or len(candidates) == 1:
                out[i] = candidates[0]
            else:
                cl = self._network.roles.clamps
                out[i] = min(candidates, key=lambda c: float(np.abs(c[list(cl)] - clamps[i]).max()))
        return out

    def _extrapolation(self, history: list[tuple[int, np.ndarray]]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """(v_k, v_(k-1), v_(k-2), order) of a sample's warm start extrapolated from its
        history: order 2 (3 v_k - 3 v_(k-1) + v_(k-2)) through its last three states,
        order 1 (2 v_k - v_(k-1), v_(k-2) not read) through its last two, when
        extrapolating is on and they were solved at the last gate versions (one learning
        window apart each); None otherwise."""
        if not self.extrapolate or len(history) < 2:
            return None
        (newer, v1), (older, v0) = history[0], history[1]
        if newer != self._version - 1 or older != self._version - 2:
            return None
        if len(history) > 2 and history[2][0] == self._version - 3:
            return v1, v0, history[2][1], 2
        return v1, v0, v1, 1

    def _extrapolated(self, history: list[tuple[int, np.ndarray]], out: np.ndarray,
                      scratch: np.ndarray) -> bool:
        """Whether ``out`` (n,) was set to the extrapolated warm start of a sample
        (:meth:`_extrapolation`). Computed in place (the same operations in the same order
        as the expressions; no temporaries and no stacking: at 44,444 nodes, batch 10, 1.3
        -> 0.8 ms per call), in one compiled pass where the solver uses the compiled
        kernels (0.17 -> 0.05 ms per sample at 44,444 nodes)."""
        found = self._extrapolation(history)
        if found is None:
            return False
        v1, v0, v2, order = found
        if self._solvers[0].compiled:
            compiled_module("_nl_kernels").extrapolate(v1, v0, v2, order == 2, out)
        elif order == 2:
            np.multiply(v1, 3.0, out=out)
            np.subtract(out, np.multiply(v0, 3.0, out=scratch), out=out)
            np.add(out, v2, out=out)
        else:
            np.multiply(v1, 2.0, out=out)
            np.subtract(out, v0, out=out)
        return True

    def solve(self, twin: int, sources: np.ndarray, clamps: np.ndarray | None) -> NewtonResult:
        """Exact operating points (B, n) of a twin for boundary voltages as driven."""
        self._age()
        solver = self._solvers[twin]
        if sources.shape[0] == 1 and solver.single_compiled():
            result = self._solve_one(twin, solver, sources, clamps)
            if result is not None:
                return result
        keys = self._keys(twin, sources)
        result = solver.solve(self._physics_gates(twin), sources, clamps,
                              start=self._start(twin, sources, clamps, keys))
        self._remember(keys, result, clamps is not None)
        return result

    def _solve_one(self, twin: int, solver: NonlinearNetworkSolver, sources: np.ndarray,
                   clamps: np.ndarray | None) -> NewtonResult | None:
        """One sample whose history extrapolates (:meth:`_extrapolation`): its start
        written in one compiled pass (:func:`~clln.simulator._nl_single.warm_start`:
        the extrapolation, then the boundary values) and solved by
        :meth:`~NonlinearNetworkSolver.solve_one`; None for a sample without such a
        history (:meth:`_start` chooses its start)."""
        key = self._keys(twin, sources)[0]
        found = self._extrapolation((self._warm if clamps is None else self._warm_clamped).get(key, []))
        if found is None:
            return None
        v1, v0, v2, order = found
        start = np.empty((1, v1.size))
        held, values = (solver.clamps, clamps[0]) if clamps is not None else _NO_CLAMPS
        compiled_module("_nl_single").warm_start(start[0], v1, v0, v2, order, solver.sources, sources[0],
                                                 solver.grounds, held, values)
        result = solver.solve_one(self._physics_gates(twin), start, sources, clamps)
        self._remember([key], result, clamps is not None)
        return result

    def _remember(self, keys: list[bytes], result: NewtonResult, clamped: bool) -> None:
        """Keep each sample's solution as its warm start (with the older ones that
        extrapolation or the choice among clamped states uses)."""
        if len(self._warm) > 65536:
            self._warm.clear()
            self._warm_clamped.clear()
        store = self._warm_clamped if clamped else self._warm
        keep = 2 if self.extrapolate else 1 if clamped else 0  # older states kept
        for key, v in zip(keys, result.voltages):
            store[key] = [(self._version, v), *store.get(key, [])[:keep]]
        self._last = result.voltages[-1]
        self.iterations.append(result.iterations)

    def _measure(self, twin: int, sources: np.ndarray, clamps: np.ndarray | None,
                 stamps: np.ndarray) -> Measurement:
        bench = self._bench
        sources, clamps = self._driven(sources, clamps)
        exact = self.solve(twin, sources, clamps).voltages
        self.is_safe = False
        self.n_measurements += 1
        kind = CompiledMeasurement if self._solvers[twin].compiled else Measurement
        if bench is None or bench.params.exact_readout:
            return kind(exact, None, stamps)
        readings = bench.read(exact, self._node_resistance(twin, exact, clamps is not None), self._noise)
        return kind(readings, None, stamps)

    def _node_resistance(self, twin: int, voltages: np.ndarray, clamped: bool) -> np.ndarray:
        """(n,) small-signal resistance of each node to the rest (ohm), for multiplexer
        settling: 1 / (sum of the edge conductances dI/dV at the node), first sample."""
        solver = self._solvers[twin]
        state = solver.edge_state(voltages[:1], self._physics_gates(twin))
        net = self._network
        ends = solver.network.edges  # with the fixed resistors
        total = (np.bincount(ends[:, 0], weights=state.d_va[0], minlength=net.n_nodes)
                 - np.bincount(ends[:, 1], weights=state.d_vb[0], minlength=net.n_nodes))
        return self._node_resistance_from(total, clamped=clamped)

    def adjust(self, commands: np.ndarray) -> Applied:
        """One learning window: each gate commanded to move by ``commands`` (V), clipped to
        the gate bounds and rounded to the drive's resolution."""
        commands = np.asarray(commands, dtype=float)
        if commands.shape != self._commanded.shape:
            raise ValueError(f"commands must have shape {self._commanded.shape}, got {commands.shape}")
        edges = self._edges
        if edges.resolution <= 0 and self._solvers[0].compiled:
            return self._adjust_compiled(commands)
        wanted = self._commanded + commands
        target = self._quantize(np.clip(wanted, edges.vmin, edges.vmax))
        applied = target - self._commanded
        clipped = np.clip(wanted, edges.vmin, edges.vmax) != wanted
        self._age()
        if np.any(applied):
            self._gates = np.clip(self.window.apply(self._gates, applied[None, :]), edges.vmin, edges.vmax)
            self._version += 1
        self._commanded = target
        return Applied(applied, clipped)

    def _adjust_compiled(self, commands: np.ndarray) -> Applied:
        """``adjust`` without a drive resolution on networks solved with the compiled
        kernels: targets and learning window in one compiled call
        (:func:`~clln.simulator._nl_kernels.learning_window`), the same operations in the
        same order as the numpy path (2e4 edges: 131 -> 30 us)."""
        edges, m = self._edges, commands.size
        self._age()  # the gates leak up to now (the targets do not depend on them)
        target, applied, clipped = np.empty(m), np.empty(m), np.empty(m, dtype=bool)
        out = np.empty_like(self._gates)
        if compiled_module("_nl_kernels").learning_window(
                self._commanded, np.ascontiguousarray(commands), float(edges.vmin), float(edges.vmax),
                self._gates, *self._window_constants(), target, applied, clipped, out):
            self._gates = out
            self._version += 1
        self._commanded = target
        return Applied(applied, clipped)

    def _window_constants(self) -> tuple[float, bool, float, float, float]:
        """(fraction, leak, R_leak, R + R_leak, decay) of the learning window for
        :func:`~clln.simulator._nl_kernels.learning_window`, computed once per window."""
        window = self.window
        if self._window_cache is None or self._window_cache[0] is not window:
            r, c, rl = window.resistance, window.capacitance, window.leak_resistance
            tau = c * r * rl / (r + rl) if rl > 0 else r * c
            self._window_cache = (window, (float(-np.expm1(-window.window / (r * c))), rl > 0, float(rl),
                                           float(r + rl), float(np.exp(-window.window / tau))))
        return self._window_cache[1]

    def read_edges(self) -> _EdgeState:
        """The commanded gate voltages (V), as the controller knows them."""
        return _EdgeState(self._commanded.copy(), None)

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during a run (for checkpoints)."""
        self._age()
        return {"conductances": self._commanded.copy(), "taps": None, "gates": self._gates.copy(),
                "noise": self._noise.bit_generator.state, "clock": self.clock.now}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._commanded = np.asarray(state["conductances"], dtype=float).copy()
        gates = state.get("gates")
        self._gates = (np.tile(self._commanded, (len(self._solvers), 1)) if gates is None
                       else np.asarray(gates, dtype=float).copy())
        self._noise.bit_generator.state = state["noise"]
        self.clock.now = float(state["clock"])
        self._aged_at = self.clock.now
        self._warm.clear()
        self._warm_clamped.clear()
        self._last = None

    def describe(self) -> dict[str, Any]:
        """The record of the bench: model, drawn devices (per device up to 4096 edges),
        learning window and imperfections."""
        devices: list[dict[str, Any]] = []
        for mod in self.models:
            entry = mod.describe()
            if self._network.n_edges <= 4096:
                for attr in ("v_t", "s", "v_to", "beta"):
                    value = getattr(mod, attr, None)
                    if value is not None and np.ndim(value):
                        entry[f"{attr}_per_device"] = np.asarray(value).tolist()
            devices.append(entry)
        e = self._edges
        return {
            "backend": "simulator",
            "solver": f"newton/{self._solvers[0].lu_name}",
            "twin": self.twin,
            "preset": self.preset,
            "imperfections": {"preset": self.preset, **self.imperfections.model_dump()},
            "edges": {"kind": "gate", "vmin": e.vmin, "vmax": e.vmax, "resolution": e.resolution},
            "devices": devices,
            "fixed_resistors": [[a, b, 1.0 / g] for a, b, g in self.fixed_resistors],
            "learning_window": {"capacitance": self.window.capacitance,
                                "resistance": self.window.resistance, "window": self.window.window,
                                "leak_resistance": self.window.leak_resistance},
        }
