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
move the drops move: the window is integrated in time by Heun's method with adaptive
steps (local error below ``step_tolerance``, at most RC / ``substeps_per_rc``; the
network re-settled at every stage), not by one Euler step. Between windows the gates only leak, for ``hold_time`` per measured sample.

Learning bias arises only from these parts (no additive term): difference-amplifier
and driver offsets, twin mismatch of the devices, the capacitors' leak, and the
asymmetric drive. All are drawn from ``bench_seed`` and recorded (``describe``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
    """

    def __init__(self, network: Network, model: EdgeModel, gates: np.ndarray,
                 params: EdgeCircuitParams, *, bench_seed: int = 0, noise_seed: int = 0,
                 fixed_resistors: list[tuple[int, int, float]] | None = None) -> None:
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
        self.gates = np.tile(gates, (2, 1))  # (2, m): free twin 0, clamped twin 1
        self._noise = np.random.default_rng(noise_seed)
        self._ends = network.edges
        self._warm: dict[tuple[int, bool, bytes], np.ndarray] = {}
        self.time_s = 0.0

    @property
    def output_nodes(self) -> tuple[int, ...]:
        return tuple(self.network.roles.clamps)

    def _settle(self, twin: int, sources: np.ndarray, clamps: np.ndarray | None,
                gates: np.ndarray | None = None) -> np.ndarray:
        """(B, n) operating points of a twin at its gates (or ``gates``)."""
        g = self.gates[twin] if gates is None else gates
        key = (twin, clamps is not None, sources.tobytes())
        start = self._warm.get(key)
        if start is not None and start.shape[0] != sources.shape[0]:
            start = None
        v = self.solvers[twin].solve(np.r_[g, np.zeros(self._n_fixed)], sources, clamps,
                                     start=start).voltages
        if len(self._warm) > 4096:
            self._warm.clear()
        self._warm[key] = v
        return v

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
        and the gate voltage it drives."""
        p = self.params
        a, b = self._ends[:, 0], self._ends[:, 1]
        drop_free = v_free[a] - v_free[b] + self.opamp_offset[0]
        drop_clamped = v_clamped[a] - v_clamped[b] + self.opamp_offset[1]
        signal = drop_free**2 - drop_clamped**2
        gain = p.multiplier_gain * np.where(signal > 0, 1.0 + self.asymmetry, 1.0 - self.asymmetry)
        return np.clip(gate + gain * signal + self.output_offset, 0.0, p.rail)

    def gate_rate(self, gates: np.ndarray, sources: np.ndarray, clamps: np.ndarray,
                  free_clamps: np.ndarray | None) -> np.ndarray:
        """(2, m) dV_G/dt, V/s, of both twins' gates with learning enabled."""
        p = self.params
        v_free = self._settle(0, sources, free_clamps, gates[0])[0]
        v_clamped = self._settle(1, sources, clamps, gates[1])[0]
        rate = np.stack([(self.drive(v_free, v_clamped, g) - g) / p.rc for g in gates])
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
        p = self.params
        longest = p.rc / max(p.substeps_per_rc, 1)
        dt, t, g = min(duration_s, longest), 0.0, self.gates
        while duration_s - t > 1e-15:  # Heun with an Euler error estimate: adaptive steps
            dt = min(dt, duration_s - t)
            k1 = self.gate_rate(g, src, held, mirror)
            k2 = self.gate_rate(g + dt * k1, src, held, mirror)
            error = 0.5 * dt * float(np.abs(k2 - k1).max())
            if error <= p.step_tolerance or dt <= 1e-9:
                g, t = g + 0.5 * dt * (k1 + k2), t + dt
            dt = min(longest, dt * min(2.0, max(0.2, 0.9 * np.sqrt(p.step_tolerance / max(error, 1e-300)))))
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
