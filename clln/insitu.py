"""Composition of the in-situ mode: the experiment a bench that learns in place runs
(from ``[training.insitu]``), the simulated comparator-twin and transistor benches, and
its trainer."""

from __future__ import annotations

import sqlite3
import weakref
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clln.controller.backend import GateEdges
from clln.controller.errors import ProtocolError
from clln.controller.insitu import InSituExperiment, InSituRecord, InSituTrainer, TimerModel
from clln.controller.network import Network
from clln.controller.store import RunStore, from_blob, to_blob
from clln.controller.task import Task
from clln.drivers.insitu import ExperimentTooLarge, InSituBench
from clln.drivers.potbank import open_port
from clln.protocol import Protocol
from clln.simulator.bench import Faults
from clln.simulator.devices import EdgeModel
from clln.simulator.insitu_device import EmulatedInSituBench
from clln.simulator.insitu_pot import (
    ComparatorTwinBench,
    ComparatorTwinParams,
    ComparatorTwinPhysics,
)
from clln.simulator.insitu_transistor import (
    EdgeCircuitParams,
    TransistorInSituBench,
    TransistorTwinPhysics,
)

if TYPE_CHECKING:
    from clln.compose import Experiment


def insitu_experiment(protocol: Protocol, task: Task, steps: int, source: str) -> InSituExperiment:
    """The :class:`InSituExperiment` of a protocol in mode 'in-situ', for ``steps`` steps
    (ProtocolError naming ``source`` and the key when a schedule does not fit them)."""
    spec = protocol.training.insitu
    assert spec is not None
    try:
        spec.check(steps)
    except ValueError as exc:
        raise ProtocolError(f"{source}: training.{exc}") from None
    labels = task.labels(task.train)
    flags = None if spec.learn_flags is None else np.array(spec.learn_flags, dtype=bool)
    return InSituExperiment.from_schedules(
        train_sources=task.source_voltages(task.train.x), train_targets=task.train.y,
        test_sources=task.source_voltages(task.test.x), test_targets=task.test.y,
        eta=spec.schedule("eta", steps),
        learn_time_s=[t * 1e-6 for t in spec.schedule("learn_time_us", steps)],
        amplifier_gain=spec.amplifier_gain, eta_levels=spec.eta_levels, learn_flags=flags,
        timer=TimerModel(spec.timer_tick_us * 1e-6, spec.timer_max_ticks),
        train_labels=labels, test_labels=task.labels(task.test),
        hinge=spec.hinge, margin=spec.margin, normalise=spec.normalise,
        anti_clamp=spec.anti_clamp, test_every=protocol.training.test_every,
    )


def comparator_params(protocol: Protocol) -> ComparatorTwinParams:
    """The comparator-twin bench's parts: defaults with ``[simulator.comparator]`` applied."""
    given = protocol.simulator.comparator
    overrides: dict[str, Any] = {} if given is None else given.model_dump(exclude_none=True)
    return ComparatorTwinParams(**{**asdict(ComparatorTwinParams()), **overrides})


def check_pulses(protocol: Protocol, clock_hz: float) -> None:
    """ProtocolError unless every learning window holds at least one pulse of the bench's
    learning clock (with NOR: the window divided by every training sample)."""
    spec = protocol.training.insitu
    assert spec is not None
    shortest = min(spec.schedule("learn_time_us", protocol.training.steps))
    share = protocol.task.train if spec.normalise else 1
    period_us = 1e6 / clock_hz
    if shortest / share < period_us * (1 - 1e-9):
        nor = f" / {share} samples (normalise)" if spec.normalise else ""
        raise ProtocolError(
            f"training.insitu.learn_time_us: {shortest:g} us{nor} is shorter than one pulse of the "
            f"comparator-twin bench's {clock_hz:g} Hz learning clock; allowed: >= "
            f"{period_us * share:g} us")


def comparator_bench(protocol: Protocol, network: Network, rng_init: np.random.Generator,
                     bench_seed: int, noise_seed: int) -> ComparatorTwinBench:
    """The simulated comparator-clocked twin bench; initial taps uniform in the middle half
    (or ``edges.init_taps``)."""
    params = comparator_params(protocol)
    check_pulses(protocol, params.clock_hz)
    init = protocol.edges.init_taps
    lo, hi = init if init is not None else (params.taps // 4, 3 * params.taps // 4)
    if hi >= params.taps:
        raise ProtocolError(f"edges.init_taps: must lie in 0..{params.taps - 1} on the "
                            "comparator-twin bench")
    taps = rng_init.integers(lo, hi + 1, size=network.n_edges)
    physics = ComparatorTwinPhysics(network, taps, params, bench_seed=bench_seed,
                                    noise_seed=noise_seed)
    return ComparatorTwinBench(physics, bench_seed=bench_seed, noise_seed=noise_seed)


def edge_circuit_params(protocol: Protocol) -> EdgeCircuitParams:
    """The parts of a transistor bench that learns in place: defaults with
    ``[simulator.edge_circuit]`` applied."""
    given = protocol.simulator.edge_circuit
    overrides: dict[str, Any] = {} if given is None else given.model_dump(exclude_none=True)
    return EdgeCircuitParams(**{**asdict(EdgeCircuitParams()), **overrides})


def transistor_insitu_bench(protocol: Protocol, network: Network, model: EdgeModel,
                            rng_init: np.random.Generator, bench_seed: int,
                            noise_seed: int) -> TransistorInSituBench:
    """The simulated twin transistor bench that learns in place; initial gates uniform in
    ``edges.gate_init`` (the middle fifth of the gate range when omitted)."""
    e = protocol.edges
    span = e.gate_max - e.gate_min
    lo, hi = e.gate_init or (e.gate_min + 0.4 * span, e.gate_min + 0.6 * span)
    gates = rng_init.uniform(lo, hi, size=network.n_edges)
    physics = TransistorTwinPhysics(
        network, model, gates, edge_circuit_params(protocol), bench_seed=bench_seed,
        noise_seed=noise_seed,
        fixed_resistors=[(a, b, 1.0 / ohms) for a, b, ohms in e.fixed_resistors or []])
    return TransistorInSituBench(physics, GateEdges(e.gate_min, e.gate_max, e.gate_resolution),
                                 preset=protocol.simulator.preset, bench_seed=bench_seed,
                                 noise_seed=noise_seed)


def insitu_trainer(exp: Experiment, source: str = "<protocol>") -> InSituTrainer:
    """The trainer of an experiment in mode 'in-situ'."""
    return InSituTrainer(exp.backend, insitu_experiment(exp.protocol, exp.task, exp.config.steps, source),
                         exp.batch_rng, snapshot_every=exp.config.snapshot_every)


#: driver settings of the transistor bench's stream: a record of transistor-16's 8 samples
#: with float64 gates (794 bytes) travels as 13 short STEP_PART frames (§12.6), 4 records
#: fit the device's memory, and a step of the emulated physics takes long against a pot
#: bench's (no request gives up before 80 s without progress); after a RESEND the host
#: asks again for a damaged record only once the line is quiet, and 50 ms later at least
TRANSISTOR_STREAM = {"max_parts": 32, "credit": 4, "record_timeout": 0.2, "retries": 400,
                     "resend_holdoff": 0.05}


def emulated_stream(exp: Experiment, faults: Faults | None = None, **options: Any
                    ) -> tuple[EmulatedInSituBench, InSituBench]:
    """The experiment's simulated in-situ bench (comparator twin or twin transistor)
    behind the streaming wire protocol: the emulated device on a pty (the same parts and
    start state as ``exp.backend``) and the driver connected to it. ``options`` go to
    :class:`InSituBench` (defaults: a 10 ms record timeout; :data:`TRANSISTOR_STREAM` for
    the transistor bench). Close the device when done."""
    backend = exp.backend
    physics: ComparatorTwinPhysics | TransistorTwinPhysics
    if isinstance(backend, TransistorInSituBench):
        physics = backend.physics.replica()
        options = {**TRANSISTOR_STREAM, **options}
        edges: np.ndarray | GateEdges = backend.edges
    elif isinstance(backend, ComparatorTwinBench):
        sim = backend.physics
        physics = ComparatorTwinPhysics(sim.network, sim.taps, sim.params, bench_seed=0)
        # the same parts
        physics.r_total, physics.r_wiper = sim.r_total.copy(), sim.r_wiper.copy()
        physics.opamp_offset, physics.comparator_offset = sim.opamp_offset.copy(), sim.comparator_offset.copy()
        physics.load_state_dict(sim.state_dict())
        options = {"record_timeout": 0.01, **options}
        edges = sim.nominal_table()
    else:
        raise ProtocolError(f"an emulated in-situ stream needs a simulated in-situ bench, not {type(backend).__name__}")
    device = EmulatedInSituBench(physics, faults=faults)
    driver = InSituBench(open_port(device.port), physics.network, edges, **options)
    driver.connect()
    return device, driver


class StreamSession:
    """``clln train --emulate`` of an in-situ protocol: the experiment's simulated bench
    behind the emulated streaming device (:func:`emulated_stream`); ``experiment`` runs
    through the driver, ``info`` goes in the run record (``clln resume`` builds the same
    again: a fresh device, put back at the checkpoint by SET_STATE), ``close`` ends both."""

    def __init__(self, exp: Experiment, source: str) -> None:
        self.device, self.driver = emulated_stream(exp)
        try:  # refused before a run is recorded or anything is sent
            self.driver.fits(insitu_experiment(exp.protocol, exp.task, exp.config.steps, source))
        except ExperimentTooLarge as exc:
            self.close()
            raise ProtocolError(f"{source}: {exc}") from None
        except BaseException:
            self.close()
            raise
        # an in-situ experiment's backend is a LearnsInPlace bench, asked for by type in
        # InSituTrainer; Experiment.backend is typed for the host-computed benches
        self.experiment = replace(exp, backend=self.driver)  # type: ignore[arg-type]
        self.info = {"insitu_stream": {"target": "emulate"}}

    def close(self) -> None:
        try:
            self.driver.close()
        finally:
            self.device.close()


class RecordFile:
    """Every :class:`InSituRecord` of a run, node voltages included, in an SQLite file
    beside the run's reports (``RUN_DIR/insitu.sqlite``, WAL, one transaction per record;
    a record written again after a resume replaces the earlier one)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (step INTEGER PRIMARY KEY, eta REAL, window_s REAL,"
            " n_teaching INTEGER, train_error REAL, test_error REAL, test_accuracy REAL,"
            " free BLOB, clamped BLOB, state BLOB)")
        self._db.commit()
        weakref.finalize(self, self._db.close)  # closed with the trainer that holds it

    def add(self, rec: InSituRecord) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.step, rec.eta, rec.window_s, rec.n_teaching, rec.train_error, rec.test_error,
                 rec.test_accuracy, to_blob(rec.free), to_blob(rec.clamped), to_blob(rec.state)))

    def read(self) -> list[InSituRecord]:
        """The records, by step."""
        rows = self._db.execute("SELECT * FROM records ORDER BY step").fetchall()
        return [InSituRecord(int(r[0]), r[1], r[2], int(r[3]), r[4], _array(r[7]), _array(r[8]),
                             _array(r[9]), r[5], r[6]) for r in rows]

    def close(self) -> None:
        self._db.close()


def _array(blob: bytes) -> np.ndarray:
    """A stored record's array (never NULL in this table)."""
    array = from_blob(blob)
    assert array is not None
    return array


def keep_records(trainer: object, store: RunStore, run_id: str) -> RecordFile | None:
    """Have an in-situ trainer keep every record beside the run's reports; None (and
    nothing done) for other trainers."""
    if not isinstance(trainer, InSituTrainer):
        return None
    file = RecordFile(store.run_dir(run_id) / "insitu.sqlite")
    trainer.on_record = file.add
    return file
