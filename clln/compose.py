"""Composition root: turn a validated protocol into a network, task, backend and trainer.
Running it as a recorded run is :mod:`clln.training` (re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clln.controller.backend import (
    ContinuousEdges,
    EdgeActuators,
    GateEdges,
    NetworkBackend,
    SteppedEdges,
)
from clln.controller.capabilities import twin_bench
from clln.controller.errors import NetworkError, ProtocolError
from clln.controller.files import inside, read_user_text
from clln.controller.network import Network, delaunay, from_edge_text, square_lattice
from clln.controller.packing import jammed
from clln.controller.roles import RoleRequest, pick_roles
from clln.controller.rules import CoupledRule, SteppedRule, UpdateRule
from clln.controller.schemes import AutoZero, Chop, Overclamp, Residuals, Scheme
from clln.controller.seeds import SeedStreams
from clln.controller.task import (
    Task,
    blobs_dataset,
    linear_map_dataset,
    quadratic_dataset,
    seed002_pair_dataset,
    xor_dataset,
)
from clln.controller.trainer import TrainConfig
from clln.insitu import (
    comparator_bench,
    insitu_experiment,
    transistor_insitu_bench,
)
from clln.protocol import (
    GATE_KINDS,
    EdgeSpec,
    NetworkSpec,
    Protocol,
    SchemeSpec,
    TaskSpec,
    TrainingSpec,
)
from clln.simulator import SimulatedBackend, make_imperfections
from clln.simulator.devices import EdgeModel, Level1, SeedTransistor
from clln.simulator.imperfections import TRANSISTOR_PRESETS
from clln.simulator.insitu_pot import ComparatorTwinBench
from clln.simulator.insitu_transistor import PRESETS as TRANSISTOR_INSITU_PRESETS
from clln.simulator.insitu_transistor import TransistorInSituBench
from clln.simulator.rheostat import rheostat_table
from clln.simulator.transistor_backend import LearningWindow, TransistorBackend
from clln.training import (  # noqa: F401  (the run API, re-exported where it always was)
    TrainOutcome,
    execute,
    make_trainer,
    network_info,
    resume_training,
    run_training,
)


@dataclass
class Experiment:
    """Everything a training run needs, built from a protocol."""

    protocol: Protocol
    seed: int
    network: Network
    task: Task
    backend: NetworkBackend
    rule: UpdateRule
    config: TrainConfig
    batch_rng: np.random.Generator
    scheme: Scheme | None = None
    edge_list: str | None = None  # an edge-list network's file text, recorded with the run


def build_scheme(spec: SchemeSpec | None) -> Scheme | None:
    """The controller's Scheme for ``[training.scheme]`` (None: plain coupled learning)."""
    if spec is None:
        return None
    oc = spec.overclamp
    return Scheme(
        overclamp=None if oc is None else Overclamp(
            eta=oc.eta, margin=oc.margin, rails=oc.rails, normalise=oc.normalise,
            symmetric=oc.symmetric, noise_margin=oc.noise_margin, noise_readings=oc.noise_readings),
        auto_zero=None if spec.auto_zero is None else AutoZero(
            every=spec.auto_zero.every, window=spec.auto_zero.window),
        chop=None if spec.chop is None else Chop(),
        residuals=None if spec.residuals is None else Residuals(),
    )


def check_scheme(scheme: Scheme | None, twin: bool, edges: EdgeActuators, rule: UpdateRule,
                 source: str) -> None:
    """ProtocolError naming ``source`` when the protocol's scheme cannot run on a backend
    (``twin``: a twin bench; ``edges``: its actuators) with this rule."""
    if scheme is None:
        return
    try:
        scheme.check(twin, edges, rule)
    except ProtocolError as exc:
        raise ProtocolError(f"{source}: training.scheme: {exc}") from None


def build_rule(spec: TrainingSpec) -> UpdateRule:
    """The update rule of ``[training]``."""
    if spec.rule == "coupled":
        return CoupledRule(spec.alpha)  # type: ignore[return-value]
    return SteppedRule(spec.step, spec.threshold)  # type: ignore[return-value]


def train_config(spec: TrainingSpec, steps: int | None = None) -> TrainConfig:
    """The trainer's hyper-parameters of ``[training]`` (``steps`` overrides its steps)."""
    return TrainConfig(
        steps=steps or spec.steps, batch_size=spec.batch, eta=spec.eta, test_every=spec.test_every,
        snapshot_every=spec.snapshot_every, target_error=spec.target_error, backoff=spec.backoff,
        reversal_backoff=spec.reversal_backoff,
        reversal_arm=spec.reversal_arm,
    )


def role_request(spec: TaskSpec) -> RoleRequest:
    """What the task of ``[task]`` needs of the network's nodes (:func:`pick_roles`)."""
    return RoleRequest(
        spec.n_sources, spec.grounds, spec.n_outputs, allostery=spec.kind == "allostery",
        source_nodes=spec.source_nodes, ground_nodes=spec.ground_nodes,
        output_nodes=spec.output_nodes, output_edges=spec.output_edges)


@dataclass(frozen=True, eq=False)
class Plan:
    """An experiment up to its backend: what the simulator, the emulated bench and a
    real bench share. Built by :func:`plan_experiment`; :meth:`experiment` adds the
    backend."""

    protocol: Protocol
    seed: int
    streams: SeedStreams
    network: Network
    task: Task
    rule: UpdateRule
    config: TrainConfig
    scheme: Scheme | None

    def experiment(self, backend: NetworkBackend, *, edge_list: str | None = None) -> Experiment:
        """The experiment on ``backend`` (whose scheme check the caller has made)."""
        return Experiment(self.protocol, self.seed, self.network, self.task, backend, self.rule,
                          self.config, self.streams.batch, self.scheme, edge_list)


def plan_experiment(protocol: Protocol, seed: int, network: Network, outputs: tuple[int, ...],
                    output_edges: tuple[tuple[int, int], ...], *, streams: SeedStreams,
                    steps: int | None = None) -> Plan:
    """The one experiment builder: the task (its datasets from the ``task`` stream), the
    rule, the trainer's configuration and the scheme of ``protocol`` on ``network``
    (roles set; ``outputs`` / ``output_edges`` its output nodes / edges)."""
    tr = protocol.training
    task = build_task(protocol.task, streams.task, outputs, output_edges)
    return Plan(protocol, seed, streams, network, task, build_rule(tr), train_config(tr, steps), build_scheme(tr.scheme))


def edge_list_text(spec: NetworkSpec, base_dir: Path, source: str) -> str:
    """The text of an edge-list network's file: relative to the protocol's folder and
    inside it, a regular UTF-8 file within the size cap (clln.controller.files)."""
    assert spec.file is not None
    return read_user_text(inside(spec.file, base_dir, source, "network.file"), "edge-list")


def build_network(spec: NetworkSpec, rng: np.random.Generator, base_dir: Path, *,
                  source: str = "<protocol>", edge_list: str | None = None) -> Network:
    """The topology described by ``[network]`` (positions included). An edge list is
    read from its file unless its recorded text ``edge_list`` is given."""
    if spec.kind == "lattice":
        assert spec.rows is not None and spec.cols is not None
        return square_lattice(spec.rows, spec.cols, periodic=spec.periodic)
    if spec.kind == "delaunay":
        assert spec.nodes is not None
        return delaunay(spec.nodes, rng, coordination=spec.coordination)
    if spec.kind == "jammed":
        assert spec.nodes is not None
        return jammed(spec.nodes, rng, periodic=spec.periodic,
                      **({} if spec.coordination is None else {"coordination": spec.coordination}))
    assert spec.file is not None
    text = edge_list_text(spec, base_dir, source) if edge_list is None else edge_list
    return from_edge_text(text, f"{source}: network.file {spec.file[:80]!r}")


def build_task(
    spec: TaskSpec, rng: np.random.Generator, outputs: tuple[int, ...],
    output_edges: tuple[tuple[int, int], ...],
) -> Task:
    """Task with its synthetic train and test sets (seeded)."""
    if spec.dataset == "xor":
        lo, hi = spec.input_range
        train, test = xor_dataset(rng, spec.train, spec.test, spread=spec.spread, low=lo, high=hi,
                                  target_high=spec.target_high, target_low=spec.target_low)
        return Task("classification", train, test, output_nodes=outputs, high_ground=spec.high_ground,
                    complement=spec.encoding == "complement")
    if spec.dataset == "seed002-pair":
        train, test = seed002_pair_dataset()
        return Task("regression", train, test, output_nodes=outputs)
    if spec.dataset == "quadratic":
        train, test = quadratic_dataset(rng, spec.train, spec.test, input_range=spec.input_range)
        return Task("regression", train, test, output_nodes=outputs)
    if spec.kind == "classification":
        assert spec.classes is not None
        train, test = blobs_dataset(
            rng, spec.inputs, spec.classes, spec.train, spec.test, spread=spec.spread,
            target_high=spec.target_high, target_low=spec.target_low,
        )
        return Task("classification", train, test, output_nodes=outputs,
                    high_ground=spec.high_ground, complement=spec.encoding == "complement")
    train, test, _ = linear_map_dataset(
        rng, spec.inputs, spec.outputs, spec.train, spec.test,
        input_range=spec.input_range, signed=spec.kind == "allostery",
    )
    return Task(spec.kind, train, test, output_nodes=outputs, output_edges=output_edges)


def pot_table(spec: EdgeSpec, n_edges: int) -> np.ndarray:
    """(m, taps) nominal conductance per tap of a rheostat-mode potentiometer (S)."""
    return rheostat_table(spec.taps, spec.r_ab, spec.r_wiper, spec.r_series, edges=n_edges)


def build_edges(spec: EdgeSpec, n_edges: int, rng: np.random.Generator) -> tuple[EdgeActuators, np.ndarray]:
    """Actuators and the initial state (conductances or taps)."""
    if spec.kind == "stepped":
        lo, hi = spec.init_taps or (spec.taps // 4, 3 * spec.taps // 4)
        return SteppedEdges(pot_table(spec, n_edges)), rng.integers(lo, hi + 1, size=n_edges)
    span = spec.gmax - spec.gmin
    glo, ghi = spec.init or (spec.gmin + 0.4 * span, spec.gmin + 0.6 * span)
    return ContinuousEdges(spec.gmin, spec.gmax), rng.uniform(glo, ghi, size=n_edges)


def edge_model(spec: EdgeSpec) -> EdgeModel:
    """The nominal device of transistor edges (``[edges]`` kind transistor or level1)."""
    if spec.kind == "level1":
        return Level1(beta=spec.s, v_to=spec.v_t, lam=spec.lam,
                      **({} if spec.g_off is None else {"g_off": spec.g_off}))
    return SeedTransistor(s=spec.s, v_t=spec.v_t, **({} if spec.g_off is None else {"g_off": spec.g_off}))


def lattice_16(network: Network, preset: str, source: str) -> None:
    """ProtocolError unless the network is the PNAS 4x4 periodic lattice."""
    if not (network.n_nodes == 16 and network.n_edges == 32):
        raise ProtocolError(f"{source}: simulator.preset: {preset!r} is the 4x4 periodic lattice "
                            f"(16 nodes, 32 edges); the network has {network.n_nodes} nodes, "
                            f"{network.n_edges} edges")


def build_transistor_backend(protocol: Protocol, network: Network, rng: np.random.Generator, *,
                             source: str, bench_seed: int, noise_seed: int) -> TransistorBackend:
    """The simulated transistor bench of a protocol; initial gates uniform in ``gate_init``
    (the middle fifth of the gate range when omitted)."""
    e, sim = protocol.edges, protocol.simulator
    span = e.gate_max - e.gate_min
    lo, hi = e.gate_init or (e.gate_min + 0.4 * span, e.gate_min + 0.6 * span)
    initial = rng.uniform(lo, hi, size=network.n_edges)
    if sim.preset == "transistor-16":
        lattice_16(network, sim.preset, source)
    try:
        return TransistorBackend(
            network, edge_model(e), GateEdges(e.gate_min, e.gate_max, e.gate_resolution), initial,
            imperfections=make_imperfections(sim.preset, sim.overrides),
            window=LearningWindow(e.capacitance, e.charge_resistance, e.window),
            bench_seed=bench_seed, noise_seed=noise_seed, lu=sim.lu, preset=sim.preset,
            fixed_resistors=[(a, b, 1.0 / ohms) for a, b, ohms in e.fixed_resistors or []])
    except NetworkError as exc:
        raise ProtocolError(f"{source}: network: {exc}") from None


def build_experiment(
    protocol: Protocol, *, source: str, base_dir: Path, seed: int | None = None,
    steps: int | None = None, edge_list: str | None = None,
) -> Experiment:
    """Build network, task, simulated backend, rule and trainer config from a protocol.
    ``edge_list``: an edge-list network's recorded text (a resumed run never reads the
    file again)."""
    from clln.sizes import check_size

    check_size(protocol, source, steps=steps)  # before anything large is built
    seed = protocol.seed if seed is None else seed
    streams = SeedStreams(seed)
    if protocol.network.kind == "edge-list" and edge_list is None:
        edge_list = edge_list_text(protocol.network, base_dir, source)
    network = build_network(protocol.network, streams.network, base_dir, source=source, edge_list=edge_list)
    roles, outputs, output_edges = pick_roles(network, role_request(protocol.task), streams.roles, source)
    network = network.with_roles(roles)
    plan = plan_experiment(protocol, seed, network, outputs, output_edges, streams=streams, steps=steps)
    backend = simulated_backend(protocol, network, streams, source=source,
                                bench_seed=seed if protocol.simulator.bench_seed is None
                                else protocol.simulator.bench_seed)
    if protocol.training.mode == "in-situ":  # schedules must fit the steps run
        insitu_experiment(protocol, plan.task, plan.config.steps, source)
    check_scheme(plan.scheme, twin_bench(backend) is not None, backend.edges, plan.rule, source)
    return plan.experiment(backend, edge_list=edge_list)  # type: ignore[arg-type]


def simulated_backend(protocol: Protocol, network: Network, streams: SeedStreams, *, source: str,
                      bench_seed: int) -> NetworkBackend | ComparatorTwinBench | TransistorInSituBench:
    """The simulated backend of a protocol (a linear network, transistor edges, or a bench
    that learns in place), its initial state from the ``init`` stream."""
    sim = protocol.simulator
    e = protocol.edges
    rng_init, noise_seed = streams.init, streams.noise_seed
    if sim.preset == "comparator-twin":  # a bench that learns in place
        build_edges(protocol.edges, network.n_edges, rng_init)  # keeps rng_init's stream as it was
        try:
            return comparator_bench(protocol, network, rng_init, bench_seed, noise_seed)
        except ProtocolError as exc:
            raise ProtocolError(f"{source}: {exc}") from None
    if sim.preset in TRANSISTOR_INSITU_PRESETS:  # transistor edges that learn in place
        if sim.preset == "transistor-16-insitu":
            lattice_16(network, sim.preset, source)
        return transistor_insitu_bench(protocol, network, edge_model(e), rng_init, bench_seed, noise_seed)
    if e.kind in GATE_KINDS:
        return build_transistor_backend(protocol, network, rng_init, source=source,
                                        bench_seed=bench_seed, noise_seed=noise_seed)
    if sim.preset in TRANSISTOR_PRESETS:
        raise ProtocolError(f"{source}: simulator.preset: {sim.preset!r} is a transistor bench; "
                            f"it needs edges.kind {' or '.join(GATE_KINDS)}, not {e.kind!r}")
    edges, initial = build_edges(protocol.edges, network.n_edges, rng_init)
    return SimulatedBackend(
        network, edges, initial,
        imperfections=make_imperfections(sim.preset, sim.overrides),
        pot=(e.taps, e.r_ab, e.r_wiper, e.r_series) if e.kind == "stepped" else None,
        bench_seed=bench_seed, noise_seed=noise_seed, solver=sim.solver, preset=sim.preset,
    )


def rebuild_task(protocol: Protocol, seed: int, info: dict[str, Any]) -> Task:
    """The task (and its datasets) of a recorded run, from its protocol, seed and the
    output roles the run store kept in ``info``; the same random stream as
    :func:`build_experiment`, without building a network or a backend."""
    outputs = tuple(int(i) for i in info.get("output_nodes", []))
    output_edges = tuple((int(a), int(b)) for a, b in info.get("output_edges", []))
    return build_task(protocol.task, SeedStreams(seed).task, outputs, output_edges)
