"""Transistor edges that learn in place (Dillavou et al. 2024, PNAS 121, e2319718121;
seed 002's rig).

Two copies of the network, free and clamped, each with its own NMOS devices (drawn once
per bench seed: the twins do not match). Every edge j has a gate capacitor C per twin,
and one learning circuit that drives both gates through R while learning is enabled:

* two difference amplifiers read the edge's drop in the free twin and in the clamped
  twin, each with its own input offset (o_F, o_C);
* a squaring stage forms s_j = (dV_F + o_F)^2 - (dV_C + o_C)^2 and a driver outputs
  u_j = V_G + A_j(s_j) + v_os,j, limited to the rails [0, rail]; A_j(s) is the
  multiplier gain, larger for charging than for discharging by the edge's drawn
  asymmetry (asymmetric charging: A (1 + a_j) s for s > 0, A (1 - a_j) s otherwise);
* the gate follows dV_G/dt = (u_j - V_G) / (R C) - V_G / (R_leak C) (leakage).

While learning is enabled the twins stay held at their boundary values, so as the gates
move the drops move: the window is integrated in time by the Bogacki-Shampine 3(2) pair
with adaptive steps (local error below ``step_tolerance``, at most RC /
``substeps_per_rc``; both twins re-settled at every stage by one dense batched Newton
solve, :class:`DenseTwinNewton`), not by one Euler step. Between windows the gates only
leak, for ``hold_time`` per measured sample. ``reference=True`` keeps the slower path
(sparse Newton per twin, adaptive Heun) the fast one is checked against.

Learning bias arises only from these parts (no additive term): difference-amplifier
and driver offsets, twin mismatch of the devices, the capacitors' leak, and the
asymmetric drive. All are drawn from ``bench_seed`` and recorded (``describe``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any

import numpy as np

from clln.controller.backend import EdgeState, GateEdges
from clln.controller.insitu import PhysicsBench
from clln.controller.network import Network
from clln.simulator.devices import EdgeModel
from clln.simulator.nonlinear import NonlinearNetworkSolver, with_resistors

#: presets of benches of transistor edges that learn in place
PRESETS = ("transistor-16-insitu", "transistor-pair-insitu")


@dataclass(frozen=True)
class EdgeCircuitParams:
    """Parts of a transistor edge's learning circuit and of the twin devices.

    capacitance, resistance : gate capacitor C (F) and charging resistor R (ohm); rig:
        2.2 uF through 1 kOhm (RC = 2.2 ms).
    multiplier_gain : A, volts of drive per V^2 of (dV_F^2 - dV_C^2).
    rail : the driver's output range [0, rail], V.
    opamp_offset : input offset (1 sigma), V, of each difference amplifier.
    output_offset : offset (1 sigma), V, of each driver's output (charges the gate
        while learning is enabled).
    charge_asymmetry : relative spread (1 sigma) of the charging vs discharging gain.
    vt_spread, s_spread : per-device spread of V_T (V, 1 sigma) and S (relative), drawn
        for each twin separately (twin mismatch).
    leak_resistance : gate capacitor leak, ohm (0: none).
    hold_time : time per measured sample (the gates leak), s.
    substeps_per_rc : the window integration's longest step is RC / this.
    step_tolerance : largest local error (V) of one integration step; steps shrink
        until it holds (the drive is stiff when the multiplier gain is high).
    noise_rms : readout noise of the node voltages the host sees, V (0: noise off).
    """

    capacitance: float = 2.2e-6
    resistance: float = 1e3
    multiplier_gain: float = 200.0
    rail: float = 5.0
    opamp_offset: float = 1e-3
    output_offset: float = 0.1e-3
    charge_asymmetry: float = 0.05
    vt_spread: float = 0.010
    s_spread: float = 0.005
    leak_resistance: float = 1e10
    hold_time: float = 1e-3
    substeps_per_rc: int = 16
    step_tolerance: float = 1e-3
    noise_rms: float = 0.0

    @property
    def rc(self) -> float:
        return self.resistance * self.capacitance


class DenseTwinNewton:
    """Newton's method for a small network's two twins, dense and batched.

    Every row (a sample of one twin) solves Kirchhoff's law on all n nodes, driven nodes
    as identity rows; one iteration is one stacked ``np.linalg.solve`` on (K, n, n) for
    every row of both twins at once. For the rig's networks (tens of nodes) this costs a
    few numpy calls per iteration, where a sparse LU per sample and twin costs far more in
    call overhead. The convergence rule (last step at most ``tol`` V), the step limit
    (``max_step``) and the backtracking where the residual grows are those of
    :class:`~clln.simulator.nonlinear.NonlinearNetworkSolver`, which the caller keeps as
    the fallback (with its source continuation) for rows this does not converge.
    """

    def __init__(self, solvers: list[NonlinearNetworkSolver]) -> None:
        self.solvers = solvers
        s0 = solvers[0]
        net = s0.network
        n, m = net.n_nodes, net.n_edges
        a, b, e = net.edges[:, 0], net.edges[:, 1], np.arange(m)
        assembly = np.zeros((n, n, 2 * m))  # J[i, j] from [dI/dV_a | dI/dV_b]
        np.add.at(assembly, (a, a, e), 1.0)
        np.add.at(assembly, (a, b, e + m), 1.0)
        np.add.at(assembly, (b, a, e), -1.0)
        np.add.at(assembly, (b, b, e + m), -1.0)
        self._assembly = assembly.reshape(n * n, 2 * m).T.copy()
        self._incidence = net.incidence.toarray()  # (m, n): r = I B
        driven = np.zeros(n, dtype=bool)
        driven[np.r_[s0.sources, s0.grounds]] = True
        held = driven.copy()
        held[s0.clamps] = True
        self._fixed = (driven, held)  # nodes not solved for: free network, clamped one
        self._eye = np.eye(n)
        self.n = n
        self.tol, self.max_iter, self.max_step = s0.tol, s0.max_iter, s0.max_step
        self._a, self._b = a, b
        self._devices = s0._devices  # None: every edge is a device
        g = s0.fixed_conductance
        self._g_fixed = g if np.any(g) else None
        self._g_fixed2 = None if self._g_fixed is None else np.r_[g, -g]
        self._layouts: dict[tuple[tuple[int, int, bool], ...], tuple[EdgeModel, np.ndarray]] = {}

    def _layout(self, shape: tuple[tuple[int, int, bool], ...]) -> tuple[EdgeModel, np.ndarray]:
        """For rows stacked as (twin, count, clamped) groups: one model whose per-device
        parameters (m,) are row k's twin's as row k of a (K, m) array (both twins' devices
        evaluated in one call), and the (K, n) mask of the nodes not solved for."""
        found = self._layouts.get(shape)
        if found is None:
            models = [self.solvers[twin].model for twin, count, _ in shape for _ in range(count)]
            stacked = {f.name: np.stack([np.asarray(getattr(mod, f.name), dtype=float) for mod in models])
                       for f in fields(models[0])  # type: ignore[arg-type]  # every edge model is a dataclass
                       if np.ndim(getattr(models[0], f.name)) == 1}
            fixed = np.concatenate([np.tile(self._fixed[clamped], (count, 1)) for _, count, clamped in shape])
            if len(self._layouts) > 64:
                self._layouts.clear()
            stacked_model: EdgeModel = replace(models[0], **stacked)  # type: ignore[type-var]  # a dataclass
            found = self._layouts[shape] = (stacked_model, fixed)
        return found

    def _state(self, v: np.ndarray, model: EdgeModel, gates: np.ndarray,
               fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residual (K, n), zero at fixed nodes, and [dI/dV_a | dI/dV_b] (K, 2m), for
        node voltages v (K, n) and gate voltages (K, m) of the device edges."""
        va, vb = v[:, self._a], v[:, self._b]
        dev = self._devices
        if dev is None:
            got = model.currents(va, vb, gates)
            current, derivs = got.current, np.hstack([got.d_va, got.d_vb])
        else:  # fixed resistors: edges without a device
            got = model.currents(va[:, dev], vb[:, dev], gates)
            current = np.zeros_like(va)
            derivs = np.zeros((len(v), 2 * va.shape[1]))
            current[:, dev] = got.current
            derivs[:, dev] = got.d_va
            derivs[:, dev + va.shape[1]] = got.d_vb
        if self._g_fixed is not None:
            current = current + self._g_fixed * (va - vb)
            derivs = derivs + self._g_fixed2
        residual = current @ self._incidence
        residual[fixed] = 0.0
        return residual, derivs

    def solve(self, groups: list[tuple[int, np.ndarray, np.ndarray, bool]],
              tol: float | None = None) -> np.ndarray | None:
        """Node voltages (K, n) of the stacked rows, or None when a row did not converge.

        groups : (twin, gates (m,), start (B, n) with the boundary values set, clamped).
        tol : convergence, V (default the sparse solver's): the last step applied moved no
            node by more than this; Newton's quadratic convergence leaves an error of
            order tol^2 / (the previous step).
        """
        tol = self.tol if tol is None else tol
        v = np.concatenate([start for _, _, start, _ in groups])
        model, fixed = self._layout(tuple((twin, len(start), clamped) for twin, _, start, clamped in groups))
        dev = slice(None) if self._devices is None else self._devices
        gates = np.concatenate([np.broadcast_to(g[dev], (len(start), len(g[dev])))
                                for _, g, start, _ in groups])
        count, n = v.shape
        residual, derivs = self._state(v, model, gates, fixed)
        for _ in range(self.max_iter):
            jac = (derivs @ self._assembly).reshape(count, n, n)
            jac = np.where(fixed[:, :, None], self._eye, jac)
            try:
                step = -np.linalg.solve(jac, residual[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                return None
            size = np.abs(step).max(axis=1)
            converged = size <= tol
            if converged.all():  # the last step, below tol: no backtracking can apply
                return v + step
            scale = np.minimum(1.0, self.max_step / np.maximum(size, 1e-300))
            norm0 = np.abs(residual).max(axis=1)
            for _halving in range(12):  # backtrack where the residual grows
                trial = v + scale[:, None] * step
                new_residual, new_derivs = self._state(trial, model, gates, fixed)
                worse = np.abs(new_residual).max(axis=1)
                worse = (worse > norm0 * (1.0 + 1e-9)) & ~converged & (worse > 1e-14)
                if not worse.any():
                    break
                scale = np.where(worse, 0.5 * scale, scale)
            v, residual, derivs = trial, new_residual, new_derivs
        return None


class TransistorTwinPhysics:
    """The analog side of a twin transistor bench that learns in place: the primitives
    of :class:`~clln.controller.insitu.InSituPhysics`, gate voltages (V) as its state.

    Parameters
    ----------
    network : topology with roles (sources, grounds, clamped outputs).
    model : the nominal edge device.
    gates : (m,) initial gate voltages, V (both twins).
    params : the parts.
    bench_seed, noise_seed : seeds of the drawn parts and of the readout noise.
    fixed_resistors : optional (a, b, conductance S) untrained resistors beside the
        transistor edges.
    reference : settle every network with the sparse per-sample Newton
        (:class:`~clln.simulator.nonlinear.NonlinearNetworkSolver`) instead of the dense
        batched one, and integrate windows with adaptive Heun steps instead of the
        Bogacki-Shampine pair: the slower path the fast one is checked against
        (``benchmarks/insitu_transistor.py --speed``). May be changed at any time.
    """

    def __init__(self, network: Network, model: EdgeModel, gates: np.ndarray,
                 params: EdgeCircuitParams, *, bench_seed: int = 0, noise_seed: int = 0,
                 fixed_resistors: list[tuple[int, int, float]] | None = None,
                 reference: bool = False) -> None:
        self.network = network
        self.params = p = params
        self._built = (model, bench_seed, noise_seed)  # for replica()
        m = network.n_edges
        gates = np.asarray(gates, dtype=float)
        if gates.shape != (m,):
            raise ValueError(f"gates must have shape ({m},), got {gates.shape}")
        rng = np.random.default_rng(bench_seed)
        self.models = [model.with_spread(rng, m, p.vt_spread, p.s_spread) for _ in range(2)]
        self.opamp_offset = p.opamp_offset * rng.standard_normal((2, m))
        self.output_offset = p.output_offset * rng.standard_normal(m)
        self.asymmetry = p.charge_asymmetry * rng.standard_normal(m)
        physics, fixed, mask = with_resistors(network, fixed_resistors or [])
        self.fixed_resistors = list(fixed_resistors or [])
        self._n_fixed = len(self.fixed_resistors)
        self.solvers = [NonlinearNetworkSolver(physics, mod, fixed_conductance=fixed, device_mask=mask)
                        for mod in self.models]
        self._dense = DenseTwinNewton(self.solvers)
        self.reference = reference
        self.gates = np.tile(gates, (2, 1))  # (2, m): free twin 0, clamped twin 1
        self._noise = np.random.default_rng(noise_seed)
        self._ends = network.edges
        self._warm: dict[tuple[int, bool, bytes], np.ndarray] = {}
        self.time_s = 0.0
        self.evaluations = 0  # gate-rate evaluations (twin network solves) while learning

    @property
    def output_nodes(self) -> tuple[int, ...]:
        return tuple(self.network.roles.clamps)

    def _settle(self, twin: int, sources: np.ndarray, clamps: np.ndarray | None,
                gates: np.ndarray | None = None) -> np.ndarray:
        """(B, n) operating points of a twin at its gates (or ``gates``)."""
        return self._settle_twins([(twin, self.gates[twin] if gates is None else gates,
                                    sources, clamps)])[0]

    def _settle_twins(self, requests: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]],
                      tol: float | None = None) -> list[np.ndarray]:
        """Operating points (B, n) for each (twin, gates (m,), sources (B, n_sources),
        clamps (B, n_clamps) or None), solved together; each from the last solution of the
        same twin, boundary and sources (a warm start). ``tol``: the dense Newton's
        convergence (V; default the solver's 1e-10)."""
        groups, keys = [], []
        for twin, gates, sources, clamps in requests:
            key = (twin, clamps is not None, sources.tobytes())
            start = self._warm.get(key)
            if start is not None and start.shape[0] != sources.shape[0]:
                start = None
            start = self.solvers[twin]._initial(sources, clamps, start)
            if self._n_fixed:  # the fixed resistors' edges carry no gate
                gates = np.concatenate([gates, np.zeros(self._n_fixed)])
            groups.append((twin, gates, start, clamps is not None))
            keys.append(key)
        stacked = None if self.reference else self._dense.solve(groups, tol)
        if stacked is None:  # the sparse Newton, with source continuation where needed
            out = [self.solvers[twin].solve(g, req[2], req[3], start=start).voltages
                   for (twin, g, start, _), req in zip(groups, requests)]
        else:
            bounds = np.cumsum([0] + [len(start) for _, _, start, _ in groups])
            out = [stacked[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        if len(self._warm) > 4096:
            self._warm.clear()
        for key, v in zip(keys, out):
            self._warm[key] = v
        return out

    def hold(self, seconds: float) -> None:
        """The gates leak for ``seconds`` (learning disabled)."""
        self.time_s += seconds
        p = self.params
        if p.leak_resistance > 0 and seconds > 0:
            self.gates = self.gates * np.exp(-seconds / (p.leak_resistance * p.capacitance))

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> np.ndarray:
        """(B, n) node voltages, V, of the free twin (or the clamped one when ``clamps``
        is given), with readout noise."""
        sources = np.atleast_2d(np.asarray(sources, dtype=float))
        clamps = None if clamps is None else np.atleast_2d(np.asarray(clamps, dtype=float))
        self.hold(self.params.hold_time * sources.shape[0])
        v = self._settle(0 if clamps is None else 1, sources, clamps)
        if self.params.noise_rms:
            v = v + self.params.noise_rms * self._noise.standard_normal(v.shape)
        return v

    def drive(self, v_free: np.ndarray, v_clamped: np.ndarray, gate: np.ndarray) -> np.ndarray:
        """(m,) each learning circuit's output u, V, for the twins' node voltages (n,)
        and the gate voltage it drives ((m,), or (2, m) for both twins' gates)."""
        p = self.params
        a, b = self._ends[:, 0], self._ends[:, 1]
        drop_free = v_free[a] - v_free[b] + self.opamp_offset[0]
        drop_clamped = v_clamped[a] - v_clamped[b] + self.opamp_offset[1]
        signal = drop_free**2 - drop_clamped**2
        gain = p.multiplier_gain * np.where(signal > 0, 1.0 + self.asymmetry, 1.0 - self.asymmetry)
        return np.clip(gate + gain * signal + self.output_offset, 0.0, p.rail)

    def gate_rate(self, gates: np.ndarray, *, sources: np.ndarray, clamps: np.ndarray,
                  free_clamps: np.ndarray | None) -> np.ndarray:
        """(2, m) dV_G/dt, V/s, of both twins' gates with learning enabled."""
        p = self.params
        v_free, v_clamped = (v[0] for v in self._settle_twins(
            [(0, gates[0], sources, free_clamps), (1, gates[1], sources, clamps)], WINDOW_NEWTON_TOL))
        rate = (self.drive(v_free, v_clamped, gates) - gates) / p.rc  # both twins' gates
        if p.leak_resistance > 0:
            rate -= gates / (p.leak_resistance * p.capacitance)
        return rate

    def learn(self, sources: np.ndarray, clamps: np.ndarray, duration_s: float,
              free_clamps: np.ndarray | None = None) -> None:
        """Learning enabled for ``duration_s``: the clamped twin held at ``clamps``, the
        free twin free (or at ``free_clamps``); the gates integrated in time."""
        if duration_s <= 0:
            return
        src = np.atleast_2d(np.asarray(sources, dtype=float))
        held = np.atleast_2d(np.asarray(clamps, dtype=float))
        mirror = None if free_clamps is None else np.atleast_2d(np.asarray(free_clamps, dtype=float))
        rate = partial(self.gate_rate, sources=src, clamps=held, free_clamps=mirror)
        integrate = _heun if self.reference else _bogacki_shampine
        p = self.params
        g, self.evaluations = integrate(rate, self.gates, duration_s, p.rc / max(p.substeps_per_rc, 1),
                                        p.step_tolerance, self.evaluations)
        self.gates = g
        self.time_s += duration_s

    def read_state(self) -> np.ndarray:
        """(m,) gate voltages of the free twin, V."""
        return self.gates[0].copy()

    def state_dict(self) -> dict[str, Any]:
        """Gates, readout-noise generator, clock, and the Newton warm starts: a solve's
        last bits depend on where Newton started, so a resumed run continues bit for bit
        only from the same starts."""
        warm = [{"twin": twin, "clamped": clamped, "sources": np.frombuffer(key, dtype=float).copy(),
                 "voltages": v.copy()} for (twin, clamped, key), v in self._warm.items()]
        return {"gates": self.gates.copy(), "noise": self._noise.bit_generator.state,
                "time_s": self.time_s, "warm": warm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gates = np.asarray(state["gates"], dtype=float).copy()
        self._noise.bit_generator.state = state["noise"]
        self.time_s = float(state["time_s"])
        self._warm.clear()
        for entry in state.get("warm", ()):  # in their order, so the cache evolves as it would have
            key = (int(entry["twin"]), bool(entry["clamped"]),
                   np.asarray(entry["sources"], dtype=float).tobytes())
            self._warm[key] = np.asarray(entry["voltages"], dtype=float).copy()

    def replica(self) -> TransistorTwinPhysics:
        """A second bench built from the same parts (same nominal device, bench and noise
        seeds, fixed resistors) in this one's state: e.g. the device behind an emulated
        serial link."""
        model, bench_seed, noise_seed = self._built
        twin = TransistorTwinPhysics(self.network, model, self.gates[0], self.params,
                                     bench_seed=bench_seed, noise_seed=noise_seed,
                                     fixed_resistors=self.fixed_resistors)
        twin.load_state_dict(self.state_dict())
        return twin

    def parts(self) -> dict[str, Any]:
        """The drawn parts, for the run record."""
        devices = []
        for mod in self.models:
            entry = mod.describe()
            for attr in ("v_t", "s", "v_to", "beta"):
                value = getattr(mod, attr, None)
                if value is not None and np.ndim(value):
                    entry[f"{attr}_per_device"] = np.asarray(value).tolist()
            devices.append(entry)
        return {"devices": devices, "opamp_offset": self.opamp_offset.tolist(),
                "output_offset": self.output_offset.tolist(), "asymmetry": self.asymmetry.tolist()}


def _heun(rate: Callable[[np.ndarray], np.ndarray], g: np.ndarray, duration: float, longest: float,
          tolerance: float, count: int) -> tuple[np.ndarray, int]:
    """Gates after ``duration`` s of dg/dt = rate(g): Heun's method, each step's local
    error estimated by its distance to Euler's and kept below ``tolerance`` V, steps at
    most ``longest`` s. The reference integrator (``reference=True``); returns the gates
    and ``count`` plus the rate evaluations."""
    dt, t = min(duration, longest), 0.0
    while duration - t > 1e-15:
        dt = min(dt, duration - t)
        k1 = rate(g)
        k2 = rate(g + dt * k1)
        count += 2
        error = 0.5 * dt * float(np.abs(k2 - k1).max())
        if error <= tolerance or dt <= 1e-9:
            g, t = g + 0.5 * dt * (k1 + k2), t + dt
        dt = min(longest, dt * min(2.0, max(0.2, 0.9 * np.sqrt(tolerance / max(error, 1e-300)))))
    return g, count


#: Newton's convergence (V) inside a learning window: a last step of 1e-6 V leaves node
#: voltages within about 1e-12 V (quadratic convergence), far below what moves a gate
WINDOW_NEWTON_TOL = 1e-6

#: largest dt |lambda| of a Bogacki-Shampine step (|lambda| the rate's local stiffness):
#: beyond it the embedded estimate underrates the error of the stiff drive
STIFF_LIMIT = 0.35


def _bogacki_shampine(rate: Callable[[np.ndarray], np.ndarray], g: np.ndarray, duration: float,
                      longest: float, tolerance: float, count: int) -> tuple[np.ndarray, int]:
    """Gates after ``duration`` s of dg/dt = rate(g): the Bogacki-Shampine 3(2) pair
    (third order, its local error estimated by the embedded second-order solution and
    kept below ``tolerance`` V; the last stage of a step is the first of the next), steps
    at most ``longest`` s and at most ``STIFF_LIMIT`` / |lambda| (|lambda| the rate's
    local stiffness, from the first two stages). Same contract as :func:`_heun`, with
    fewer evaluations because the error estimate is of the method's own order."""
    dt, t = min(duration, longest), 0.0
    k1 = rate(g)
    count += 1
    while duration - t > 1e-15:
        dt = min(dt, duration - t)
        k2 = rate(g + 0.5 * dt * k1)
        k3 = rate(g + 0.75 * dt * k2)
        new = g + dt * (2.0 / 9.0 * k1 + 1.0 / 3.0 * k2 + 4.0 / 9.0 * k3)
        k4 = rate(new)
        count += 3
        error = dt * float(np.abs(-5.0 / 72.0 * k1 + 1.0 / 12.0 * k2 + 1.0 / 9.0 * k3 - 0.125 * k4).max())
        # the estimate holds while dt |lambda| is small: |lambda| from the stages' slopes
        stiff = float(np.linalg.norm(k2 - k1) / max(0.5 * dt * float(np.linalg.norm(k1)), 1e-300))
        limit = STIFF_LIMIT / max(stiff, 1e-300)
        if (error <= tolerance and dt <= 1.25 * limit) or dt <= 1e-9:
            g, t, k1 = new, t + dt, k4
        dt = min(longest, 1.1 * limit, dt * min(2.0, max(0.2, 0.9 * np.cbrt(tolerance / max(error, 1e-300)))))
    return g, count


class TransistorInSituBench(PhysicsBench):
    """The simulated twin transistor bench as a backend that
    :class:`~clln.controller.capabilities.LearnsInPlace`: it runs the loop
    (:func:`~clln.controller.insitu.run_loop`) on its own physics."""

    def __init__(self, physics: TransistorTwinPhysics, edges: GateEdges, *, preset: str,
                 bench_seed: int = 0, noise_seed: int = 0) -> None:
        self.physics = physics
        self.preset = preset
        self._edges = edges
        self._seeds = {"bench_seed": bench_seed, "noise_seed": noise_seed}

    @property
    def edges(self) -> GateEdges:
        return self._edges

    def read_edges(self) -> EdgeState:
        """The free twin's gate voltages (V)."""
        return EdgeState(self.physics.read_state(), None)

    def describe(self) -> dict[str, object]:
        ph = self.physics
        return {"kind": "simulated-insitu", "backend": "simulator, learns in place",
                "preset": self.preset, **self._seeds, "solver": f"newton/{ph.solvers[0].lu_name}",
                "parameters": asdict(ph.params), "parts": ph.parts(),
                "fixed_resistors": [[a, b, 1.0 / g] for a, b, g in ph.fixed_resistors]}
