"""Composition of bench runs: a bench file (+ protocol) -> HardwareBackend on the real
hardware or on the emulated bench, or the bench's model in the fast simulator."""

from __future__ import annotations

import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import serial

from clln.benchfile import Bench, bench_hash, daq_config, hardware_hash, parse_bench
from clln.compose import Experiment, check_scheme, plan_experiment
from clln.controller.backend import NetworkBackend, SteppedEdges
from clln.controller.calibration import (
    Calibration,
    CalibrationWarning,
    ResistanceMeter,
    calibration_problems,
    load_calibration,
)
from clln.controller.errors import ProtocolError, UserError
from clln.controller.files import inside
from clln.controller.network import Network, NodeRoles
from clln.controller.schemes import boundary_bounds
from clln.controller.seeds import SeedStreams
from clln.controller.trainer import Trainer
from clln.drivers.daq import AI_OVERRANGE, NidaqmxDaq
from clln.drivers.hardware import HardwareBackend, Limits, check_limits
from clln.drivers.potbank import PotBank, open_port
from clln.protocol import Protocol, parse_protocol
from clln.simulator import make_imperfections
from clln.simulator.bench import BenchModel, EdgeFaults, EmulatedBench, Faults, WiringFaults
from clln.simulator.rheostat import rheostat_table

Target = Literal["hardware", "emulate", "simulate"]


def bench_network(bench: Bench) -> Network:
    """The bench's network with its node roles (sources and clamps in AO order)."""
    return Network(
        bench.nodes, np.array([e.nodes for e in bench.edges]),
        positions=None if bench.positions is None else np.array(bench.positions, dtype=float),
        roles=NodeRoles(tuple(bench.sources.nodes), tuple(bench.grounds), tuple(bench.clamps.nodes)),
    )


def nominal_edges(bench: Bench) -> SteppedEdges:
    """Datasheet tap tables: R(D) = r_series + r_wiper + D r_ab / (taps - 1)."""
    p = bench.pots
    return SteppedEdges(rheostat_table(p.taps, p.r_ab, p.wiper, p.r_series, edges=len(bench.edges)))


def bench_limits(bench: Bench) -> Limits:
    """The bench's hard limits: ``[limits]``, the potentiometers' terminal window and
    every AO channel's drive (``daq.ao_max_current``) over the edges at its node."""
    driven = [*bench.sources.nodes, *bench.clamps.nodes]
    at_node = [tuple(j for j, e in enumerate(bench.edges) if k in e.nodes) for k in driven]
    return Limits(bench.limits.max_node_voltage, bench.limits.max_edge_current,
                  terminal_window=bench.pots.terminal_window, chip=bench.pots.chip,
                  ao_max_current=bench.daq.ao_max_current, ao_edges=tuple(at_node),
                  ao_names=tuple(bench.sources.ao + bench.clamps.ao))


def daq_parameters(bench: Bench) -> dict[str, Any]:
    """The bench model's DAQ parameters as the DAQ is set up (``drivers.daq.plan_daq``):
    ranges (the AI range's ADC span includes its 5 % over-range), averaging window,
    convert interval, sample timing and mains frequency."""
    cfg = daq_config(bench)
    return {"ai_range": cfg.ai_range * (1.0 + AI_OVERRANGE), "ao_range": cfg.ao_range, "averaging": cfg.average_samples,
            "mux_settle_time": cfg.convert_interval, "ai_capacitance": bench.daq.ai_input_capacitance,
            "ai_sample_rate": cfg.sample_rate, "settle_time": cfg.seconds_per_step,
            "mains_frequency": float(cfg.mains_frequency or 50.0)}


def bench_model(bench: Bench, initial_taps: np.ndarray, *, noise_seed: int = 0,
                faults: EdgeFaults | None = None, edges: SteppedEdges | None = None) -> BenchModel:
    """The simulator's model of the bench (``[emulator]``: preset, its seed, overrides),
    with the DAQ set up as the bench file says (:func:`daq_parameters`, which take
    precedence over the preset and the overrides: the model measures as the DAQ is
    configured) and optional edge faults; ``edges`` are the tables the controller
    believes (nominal unless given)."""
    em = bench.emulator
    p = bench.pots
    daq = daq_parameters(bench) if em.preset != "ideal" else {}
    return BenchModel(
        bench_network(bench), edges or nominal_edges(bench), initial_taps,
        imperfections=make_imperfections(em.preset, {**em.overrides, **daq}),
        pot=(p.taps, p.r_ab, p.wiper, p.r_series), bench_seed=em.seed, noise_seed=noise_seed,
        preset=em.preset, faults=faults,
    )


def bench_calibration(bench: Bench, bench_path: str | Path, *, path: str | Path | None = None,
                      max_age_days: float = 30.0) -> Calibration | None:
    """The calibration a bench uses: ``path`` if given, else the bench file's
    ``calibration`` key (relative to the bench file), else None. A calibration made for
    another bench description, or an old one, warns (CalibrationWarning)."""
    name = path if path is not None else bench.calibration
    if name is None:
        return None
    file = Path(name)
    if path is None:  # named in the bench file: inside the bench file's folder
        file = inside(str(name), Path(bench_path).parent, str(bench_path), "calibration")
    cal = load_calibration(file)
    for problem in calibration_problems(cal, hardware_hash(bench), max_age_days=max_age_days):
        warnings.warn(CalibrationWarning(f"{file}: {problem}"), stacklevel=2)
    return cal


class BenchOverrideWarning(UserWarning):
    """A protocol run on a bench gives keys that the bench file decides instead."""


# What a bench decides (its network, its pots, its node roles, its own model): these
# protocol keys are not used with --bench. edges.init_taps is (the initial taps).
_BENCH_DECIDES = {"network": None, "edges": {"init_taps"}, "simulator": None,
                  "task": {"inputs", "outputs", "classes", "train", "test", "input_range", "kind",
                           "high_ground", "target_high", "target_low", "spread"}}


def overridden_keys(protocol: Protocol) -> list[str]:
    """The keys the protocol gives explicitly that a bench replaces (dotted, sorted)."""
    keys = []
    for table, kept in _BENCH_DECIDES.items():
        section = getattr(protocol, table)
        keys += [f"{table}.{k}" for k in sorted(section.model_fields_set) if kept is None or k not in kept]
    return keys


@typing.runtime_checkable
class _Closes(typing.Protocol):
    def close(self) -> None:
        ...


@dataclass
class BenchSession:
    """An open bench: the backend, and the emulator when there is one."""

    backend: NetworkBackend
    emulator: EmulatedBench | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    meter: ResistanceMeter | None = None
    smu: Any = None

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            try:
                part = self.meter if self.meter is not None else self.smu  # the meter closes its SMU
                if isinstance(part, _Closes):
                    part.close()
            finally:
                if self.emulator is not None:
                    self.emulator.close()

    def open_smu(self, bench: Bench, *, visa_library: str | None = None) -> Any:
        """The bench's SMU driver (``[smu]``; the emulated SMU with --emulate), or None
        without one. ``visa_library`` is the command line's --visa-library (else
        ``$CLLN_VISA_LIBRARY``, else the bench file's backend)."""
        if bench.smu is None or not isinstance(self.backend, HardwareBackend):
            return None
        if self.smu is None:
            from clln.drivers.visa import make_smu, open_instrument
            from clln.drivers.visa import visa_library as choose_library

            if self.emulator is not None:
                assert self.emulator.smu is not None
                resource: Any = self.emulator.smu
            else:
                resource = open_instrument(bench.smu.address,
                                           choose_library(bench.smu.visa_library, visa_library))
            self.smu = make_smu(bench.smu.model, resource)
        return self.smu

    def park_smu(self, bench: Bench, *, visa_library: str | None = None) -> None:
        """Output off in the high-impedance output-off state (relay open), so that an idle
        SMU does not load the fixture's nodes while the bench trains. Nothing without [smu]."""
        smu = self.open_smu(bench, visa_library=visa_library)
        if smu is not None:
            smu.park()

    def open_meter(self, bench: Bench, *, visa_library: str | None = None) -> ResistanceMeter | None:
        """The bench's SMU as a resistance meter (``[smu]``; the emulated one with
        --emulate), or None without one. Its compliance is checked against the limits
        before the SMU is opened and before every reading."""
        if bench.smu is None or not isinstance(self.backend, HardwareBackend):
            return None
        from clln.drivers.visa import FixtureMeter

        if self.meter is None:
            backend = self.backend
            spec = bench.smu

            def guard(volts: float) -> None:
                check_limits(np.array([volts]), backend.edges.table, backend.limits, where="smu")

            guard(spec.compliance)
            self.meter = FixtureMeter(self.open_smu(bench, visa_library=visa_library), spec.nodes,
                                      current=spec.current, compliance=spec.compliance, guard=guard)
        return self.meter


def open_bench(
    bench: Bench, bench_text: str, *, target: Target, initial_taps: np.ndarray | None = None,
    noise_seed: int = 0, faults: Faults | None = None, traffic_log: str | Path | None = None,
    connect: bool = True, calibration: Calibration | None = None,
    edge_faults: EdgeFaults | None = None, wiring_faults: WiringFaults | None = None,
    visa_library: str | None = None, controller: Any = None,
) -> BenchSession:
    """Open the bench through its drivers (real hardware or the emulator), or its model.

    ``calibration`` gives the tap tables and DAQ channel corrections (datasheet tables and
    no corrections without one); ``edge_faults`` are injected into the emulated bench's
    model (a stuck wiper, an open edge, a shorted pot), ``wiring_faults`` into its wiring
    (swapped AI channels, pots swapped in the chain); ``controller`` replaces the emulated
    bench's Python firmware (see :class:`~clln.simulator.bench.EmulatedBench`). On
    connecting, the bench's SMU (``[smu]``, opened with ``visa_library``, see
    :meth:`BenchSession.open_smu`) is parked so that it does not load the network.
    """
    net = bench_network(bench)
    edges = nominal_edges(bench)
    m = net.n_edges
    chain = np.array([e.chain for e in bench.edges])
    if (edge_faults and target == "hardware") or (wiring_faults and target != "emulate"):
        raise UserError("faults can be injected only into the emulated bench (--emulate)")
    if target == "simulate":
        taps = np.full(m, edges.n_taps - 1) if initial_taps is None else initial_taps
        return BenchSession(bench_model(bench, taps, noise_seed=noise_seed, faults=edge_faults,
                                        edges=None if calibration is None else calibration.edges))
    ai_of_node = np.arange(bench.nodes)  # bench.ai[k] reads node k
    emulator = None
    if target == "emulate":
        model = bench_model(bench, np.full(m, edges.n_taps - 1), noise_seed=noise_seed,
                            faults=edge_faults)
        emulator = EmulatedBench(model, n_pots=max(chain) + 1, chain=chain, ai_nodes=np.arange(bench.nodes),
                                 faults=faults, log_path=traffic_log,
                                 smu_nodes=None if bench.smu is None else bench.smu.nodes,
                                 smu_seed=bench.emulator.seed,
                                 smu_model="2400" if bench.smu is None else bench.smu.model, controller=controller,
                                 clamp_switch=bench.daq.clamp_switch is not None, wiring=wiring_faults)
        daq: Any = emulator.daq
        port, port_class = emulator.port, emulator.port_class
    else:
        daq = NidaqmxDaq(daq_config(bench))
        port, port_class = bench.serial.port, serial.Serial
    ser = bench.serial
    try:
        potbank = PotBank(open_port(port, ser.baudrate, reset_on_open=ser.reset_on_open, port_class=port_class),
                          reply_timeout=ser.reply_timeout, retries=ser.retries,
                          boot_timeout=ser.boot_timeout, expect_boot=ser.reset_on_open)
        backend = HardwareBackend(
            net, daq, potbank, edges, chain=chain, ai_of_node=ai_of_node,
            limits=bench_limits(bench),
            initial_taps=initial_taps, watchdog_ms=bench.serial.watchdog_ms,
            info={"bench": bench.name, "bench_sha256": bench_hash(bench_text),
                  "preset": f"emulated {bench.emulator.preset}" if emulator else "bench",
                  "emulated": emulator is not None, "port": port, "daq": bench.daq.device,
                  "free_state": ("clamp switches open" if bench.daq.clamp_switch is not None
                                 else "clamp nodes held at 0 V (no clamp switch)"),
                  **({"edge_faults": edge_faults.describe()} if edge_faults else {}),
                  **({"wiring_faults": wiring_faults.describe()} if wiring_faults else {})},
            calibration=calibration,
        )
        session = BenchSession(backend, emulator)
        if connect:
            backend.connect()
            try:
                session.park_smu(bench, visa_library=visa_library)
            except BaseException:
                backend.close()
                raise
        return session
    except BaseException:
        if emulator is not None:
            emulator.close()
        raise


def bench_experiment(
    protocol: Protocol, bench: Bench, bench_text: str, *, source: str, bench_source: str,
    target: Target, seed: int | None = None, steps: int | None = None,
    faults: Faults | None = None, traffic_log: str | Path | None = None,
    calibration: Calibration | Literal["bench", "none"] = "bench", visa_library: str | None = None,
    controller: Any = None,
) -> tuple[Experiment, BenchSession]:
    """The protocol's task and training on the bench's network, edges and node roles.

    ``calibration``: ``"bench"`` uses the bench file's ``calibration`` key (relative to
    ``bench_source``), ``"none"`` the datasheet tables, or a Calibration. The limits are
    checked for every boundary voltage the protocol can ask for (with the calibrated
    tables when there is a calibration) before any port is opened.
    """
    cal: Calibration | None
    if calibration == "bench":
        cal = bench_calibration(bench, bench_source)
    elif calibration == "none":
        cal = None
    else:
        cal = calibration
    from clln.sizes import check_size

    check_size(protocol, source, nodes=bench.nodes, edges=len(bench.edges), steps=steps)
    seed = protocol.seed if seed is None else seed
    streams = SeedStreams(seed)
    net = bench_network(bench)
    spec = protocol.task
    roles = net.roles
    if spec.n_sources != len(roles.sources):
        raise ProtocolError(f"{source}: task needs {spec.n_sources} source nodes; bench {bench_source} "
                            f"drives {len(roles.sources)}")
    n_clamps = 2 * spec.outputs if spec.kind == "allostery" else spec.n_outputs
    if n_clamps != len(roles.clamps):
        raise ProtocolError(f"{source}: task needs {n_clamps} clamped nodes; bench {bench_source} "
                            f"clamps {len(roles.clamps)}")
    clamps = tuple(roles.clamps)
    outputs: tuple[int, ...] = () if spec.kind == "allostery" else clamps
    output_edges = tuple(zip(clamps[::2], clamps[1::2])) if spec.kind == "allostery" else ()
    plan = plan_experiment(protocol, seed, net, outputs, output_edges, streams=streams, steps=steps)
    edges = nominal_edges(bench) if cal is None else cal.edges
    # every boundary voltage a step can apply, from the controller's own clamp formula
    check_limits(np.array(boundary_bounds(plan.task, plan.config.eta, plan.scheme)), edges.table,
                 bench_limits(bench), where=f"{source} on bench {bench_source}")
    lo, hi = protocol.edges.init_taps or (edges.n_taps // 4, 3 * edges.n_taps // 4)
    if hi >= edges.n_taps:
        raise ProtocolError(f"{source}: edges.init_taps reach {hi}, but the bench's pots have "
                            f"{edges.n_taps} taps")
    initial = streams.init.integers(lo, hi + 1, size=net.n_edges)
    # checked before anything is opened or written; a HardwareBackend is no twin bench
    check_scheme(plan.scheme, False, edges, plan.rule, source)
    replaced = overridden_keys(protocol)
    if replaced:
        warnings.warn(BenchOverrideWarning(
            f"bench {bench.name} replaces these keys of {source}: {', '.join(replaced)} (the bench "
            f"gives the network, edges, node roles and model; the protocol its task and training)"),
            stacklevel=2)
    session = open_bench(bench, bench_text, target=target, initial_taps=initial, noise_seed=streams.noise_seed,
                         faults=faults, traffic_log=traffic_log, calibration=cal,
                         visa_library=visa_library, controller=controller)
    try:
        exp = plan.experiment(session.backend)
    except BaseException:
        session.close()
        raise
    return exp, session


def emulated_trajectory(protocol_text: str, bench_text: str, steps: int, *,
                        controller: Any = None, source: str = "protocol",
                        bench_source: str = "bench") -> list[np.ndarray]:
    """Taps of every edge after every training step of a protocol on the emulated bench
    (``--emulate``), through the real driver stack: behind the Python firmware, or behind
    ``controller`` (e.g. a :class:`~clln.simulator.avr.SimavrPotBank`, closed with the
    session). The taps are those the controller's pots hold (what the emulated DAQ
    measures), in edge order."""
    exp, session = bench_experiment(
        parse_protocol(protocol_text, source), parse_bench(bench_text, bench_source), bench_text,
        source=source, bench_source=bench_source, target="emulate", steps=steps,
        controller=controller)
    emulator = session.emulator
    assert emulator is not None
    taps: list[np.ndarray] = []
    try:
        def record(_: object) -> None:
            with emulator.firmware.lock:
                taps.append(np.array(emulator.firmware.taps[emulator.chain]))

        Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run([record])
    finally:
        session.close()
    return taps
