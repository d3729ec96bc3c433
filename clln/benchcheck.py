"""``clln check``: drive test patterns through a bench and compare with its map.

The bench file's map says which AI channel reads which node, which pot (chain
position) sits in which edge, and how the edges join the nodes. Reading every node
with all outputs at 0 V checks none of that. Here every edge is set to a known tap
(all at their highest resistance, then each edge in turn at its lowest), and at each
setting every source and clamp output is driven in turn (one AO channel at a time,
the clamp switches open and closed) while every AI channel is read. The node
voltages the map predicts for those patterns are computed from the tap tables
(calibrated when the bench has a calibration, else the datasheet's).

Mismatches are explained by a greedy search over single faults: two AI channels
swapped, two pots swapped in the chain, an open edge, a shorted edge. The difference
between readings and prediction is scored at the worst tap setting (rms over its
patterns and channels): a fault shows most at the setting that lowers the faulty edge,
while part tolerances spread over all settings. The fault that lowers the score the
most is accepted while it cuts it by a quarter or more, and the search goes on with
that fault assumed. Part tolerances (±20 % on an uncalibrated MCP4131) leave a score
of at most 2 % of the drive that no single fault reduces; a swapped channel or pot, an
open or a short raises it to 3-37 %, and back to at most 3 % once named (example-16
over 10 emulated part draws: 60 random single faults and 10 sound benches, every one
named right; three faults together too). A score above 5 % of the drive that no fault
explains is reported too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clln.benchfile import Bench
from clln.controller.errors import LimitError
from clln.controller.network import Network
from clln.drivers.hardware import HardwareBackend, check_limits

OPEN_CONDUCTANCE = 1e-9  # S, an open edge (a broken trace)
SHORT_CONDUCTANCE = 0.1  # S, a shorted edge (a solder bridge: 10 ohm)
INPUT_LEAK = 1e-10  # S from every node to ground: the AI inputs' 10 GOhm
ACCEPT = 0.75  # a fault is accepted when it cuts the rms difference by a quarter or more
UNEXPLAINED = 0.05  # rms difference (fraction of the drive) that no tolerance explains


@dataclass(frozen=True)
class Fault:
    """One fault found: its kind and the parts involved (AI channel indices for
    ``swap-ai``, edge indices for the others)."""

    kind: str  # swap-ai | swap-chain | open | short
    parts: tuple[int, ...]


@dataclass
class CheckResult:
    """What ``clln check`` measured and found.

    Attributes
    ----------
    faults : the faults found, in the order accepted.
    lines : one line per fault, naming the parts as the bench file does.
    amplitude : V driven on one AO channel at a time.
    patterns : boundary conditions driven (over all tap settings).
    settings : tap settings.
    rms_before, rms_after : rms difference between readings and prediction (V) at the
        worst tap setting, with the map as written and with the faults found assumed.
    baseline : (patterns, n) V read at the first tap setting (every edge at its highest
        resistance), AI channel order.
    """

    faults: list[Fault]
    lines: list[str]
    amplitude: float
    patterns: int
    settings: int
    rms_before: float
    rms_after: float
    baseline: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


def tap_settings(n_edges: int, n_taps: int) -> np.ndarray:
    """(1 + m, m) taps: every edge at its highest resistance, then each edge in turn at
    its lowest (a ten-fold contrast on a pot with a series resistor)."""
    settings = np.full((1 + n_edges, n_edges), n_taps - 1, dtype=np.int64)
    settings[1 + np.arange(n_edges), np.arange(n_edges)] = 0
    return settings


def drive_patterns(n_sources: int, n_clamps: int, amplitude: float) -> list[tuple[np.ndarray, bool]]:
    """(AO row block, clamps engaged): each source alone with the clamps open, then each
    AO channel (sources and clamps) alone with the clamps closed."""
    n_ao = n_sources + n_clamps
    free = np.zeros((n_sources, n_ao))
    free[np.arange(n_sources), np.arange(n_sources)] = amplitude
    return [(free, False), (amplitude * np.eye(n_ao), True)]


def node_voltages(incidence: np.ndarray, g: np.ndarray, held: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(S, B, n) node voltages of S resistor networks (dense incidence (m, n) of
    ``Network.incidence``, conductances (S, m) S) with the nodes ``held`` at ``values``
    (B, len(held)) V, every node leaking to 0 V through the AI input impedance."""
    n = incidence.shape[1]
    g = np.atleast_2d(g)
    lap = np.einsum("mi,sm,mj->sij", incidence, g, incidence)
    lap[:, np.arange(n), np.arange(n)] += INPUT_LEAK
    free = np.setdiff1d(np.arange(n), held)
    v = np.zeros((g.shape[0], values.shape[0], n))
    v[:, :, held] = values
    if free.size:
        rhs = -lap[:, free][:, :, held] @ values.T  # (S, free, B)
        v[:, :, free] = np.linalg.solve(lap[:, free][:, :, free], rhs).transpose(0, 2, 1)
    return v


class BenchMap:
    """The bench as its file describes it: predicts the node voltages of the check's
    patterns for tap settings, with optional faults assumed."""

    def __init__(self, bench: Bench, table: np.ndarray) -> None:
        self.n = bench.nodes
        self.incidence = Network(bench.nodes, np.array([e.nodes for e in bench.edges])).incidence.toarray()
        self.table = table
        self.sources = np.array(bench.sources.nodes, dtype=np.int64)
        self.clamps = np.array(bench.clamps.nodes, dtype=np.int64)
        self.grounds = np.array(bench.grounds, dtype=np.int64)
        self.switched = bench.daq.clamp_switch is not None

    def predict(self, taps: np.ndarray, blocks: list[tuple[np.ndarray, bool]], *,
                opened: frozenset[int] = frozenset(), shorted: frozenset[int] = frozenset()) -> np.ndarray:
        """(S, patterns, n) V in node order for tap settings (S, m); ``opened`` and
        ``shorted`` edges conduct (almost) nothing / 0.1 S."""
        g = self.table[np.arange(taps.shape[1]), taps]  # (S, m)
        g[:, list(opened)] = OPEN_CONDUCTANCE
        g[:, list(shorted)] = SHORT_CONDUCTANCE
        out = []
        ns = self.sources.size
        for ao, engaged in blocks:
            driven = engaged or not self.switched
            held = np.concatenate([self.sources, self.clamps if driven else [], self.grounds]).astype(np.int64)
            values = np.hstack([ao[:, :ns], ao[:, ns:] if driven else np.zeros((ao.shape[0], 0)),
                                np.zeros((ao.shape[0], self.grounds.size))])
            out.append(node_voltages(self.incidence, g, held, values))
        return np.concatenate(out, axis=1)


@dataclass(frozen=True)
class _State:
    """Faults assumed so far."""

    ai: tuple[int, ...]  # node read by each AI channel
    chain: tuple[int, ...]  # whose tap each edge gets (edge index)
    opened: frozenset[int] = frozenset()
    shorted: frozenset[int] = frozenset()


def _predict_all(bmap: BenchMap, settings: np.ndarray, blocks: list[tuple[np.ndarray, bool]],
                 state: _State) -> np.ndarray:
    """(settings, patterns, n) V in AI channel order under ``state``."""
    out = bmap.predict(settings[:, list(state.chain)], blocks, opened=state.opened, shorted=state.shorted)
    return out[:, :, list(state.ai)]


def _chain_pairs(measured: np.ndarray, predicted: np.ndarray, all_up_to: int = 24) -> list[tuple[int, int]]:
    """Pairs of edges whose pots may be swapped: every pair on a small bench; on a large
    one the pairs (j, k) where the setting that lowers edge j reads most like the one
    predicted to lower edge k (settings 1 + j lower edge j)."""
    m = measured.shape[0] - 1
    if m <= all_up_to:
        return list(itertools.combinations(range(m), 2))
    diff = measured[1:, None] - predicted[None, 1:]  # (m, m, patterns, n_ai)
    best = np.sqrt(np.mean(diff**2, axis=(2, 3))).argmin(axis=1)
    return sorted({(min(j, int(k)), max(j, int(k))) for j, k in enumerate(best) if k != j})


def find_faults(bmap: BenchMap, settings: np.ndarray, blocks: list[tuple[np.ndarray, bool]],
                measured: np.ndarray, *, max_faults: int = 6) -> tuple[list[Fault], float, float]:
    """The faults that explain ``measured`` (settings, patterns, n_ai) V, greedily;
    returns (faults, score before, score after), the scores in V (the worst tap
    setting's rms difference)."""
    n_ai, m = measured.shape[2], settings.shape[1]
    state = _State(tuple(range(n_ai)), tuple(range(m)))
    current = _predict_all(bmap, settings, blocks, state)

    def rms(pred: np.ndarray) -> float:
        """The worst tap setting's rms difference: a fault shows most at the setting that
        lowers the faulty edge, part tolerances spread over all of them."""
        return float(np.sqrt(np.mean((measured - pred) ** 2, axis=(1, 2))).max())

    before = best_rms = rms(current)
    faults: list[Fault] = []
    for _ in range(max_faults):
        candidates: list[tuple[float, Fault, _State, np.ndarray]] = []
        for a, b in itertools.combinations(range(n_ai), 2):
            ai = list(state.ai)
            ai[a], ai[b] = ai[b], ai[a]
            pred = current.copy()
            pred[:, :, [a, b]] = current[:, :, [b, a]]
            candidates.append((rms(pred), Fault("swap-ai", (a, b)), _State(tuple(ai), state.chain,
                                                                           state.opened, state.shorted), pred))
        for j, k in _chain_pairs(measured, current):
            chain = list(state.chain)
            chain[j], chain[k] = chain[k], chain[j]
            trial = _State(state.ai, tuple(chain), state.opened, state.shorted)
            pred = _predict_all(bmap, settings, blocks, trial)
            candidates.append((rms(pred), Fault("swap-chain", (j, k)), trial, pred))
        for j in range(m):
            if j in state.opened or j in state.shorted:
                continue
            for kind in ("open", "short"):
                trial = _State(state.ai, state.chain,
                               state.opened | {j} if kind == "open" else state.opened,
                               state.shorted | {j} if kind == "short" else state.shorted)
                pred = _predict_all(bmap, settings, blocks, trial)
                candidates.append((rms(pred), Fault(kind, (j,)), trial, pred))
        score, fault, trial, pred = min(candidates, key=lambda c: c[0])
        if score > ACCEPT * best_rms:
            break
        faults.append(fault)
        state, current, best_rms = trial, pred, score
    return faults, before, best_rms


def describe_fault(fault: Fault, bench: Bench) -> str:
    """One line naming the fault's parts as the bench file does."""
    if fault.kind == "swap-ai":
        a, b = fault.parts
        return (f"AI channels {bench.ai[a]} and {bench.ai[b]} are swapped: {bench.ai[a]} reads node {b} "
                f"and {bench.ai[b]} reads node {a} (the ai list maps {bench.ai[a]} to node {a})")
    edges = bench.edges
    if fault.kind == "swap-chain":
        j, k = fault.parts
        p, q = edges[j].chain, edges[k].chain
        return (f"chain positions {p} and {q} are swapped: the pot at chain {p} sits in edge {k} "
                f"(nodes {edges[k].nodes[0]}-{edges[k].nodes[1]}) and the pot at chain {q} in edge {j} "
                f"(nodes {edges[j].nodes[0]}-{edges[j].nodes[1]})")
    (j,) = fault.parts
    e = edges[j]
    what = "open (conducts nothing)" if fault.kind == "open" else "shorted (conducts past its pot)"
    return f"edge {j} (nodes {e.nodes[0]}-{e.nodes[1]}, chain {e.chain}) is {what}"


def check_amplitude(backend: HardwareBackend, blocks: Callable[[float], list[tuple[np.ndarray, bool]]]) -> float:
    """The largest drive (V, at most 1 V) whose patterns pass the bench's limits."""
    amplitude = min(1.0, backend.limits.max_node_voltage)
    table = backend.edges.table
    for _ in range(60):
        try:
            for ao, _engaged in blocks(amplitude):
                check_limits(ao, table, backend.limits)
            return amplitude
        except LimitError:  # try a smaller drive
            amplitude *= 0.8
    raise LimitError("no test drive passes the bench's limits: check [limits] and daq.ao_max_current")


def run_check(backend: HardwareBackend, bench: Bench, *,
              progress: Callable[[int, int], None] | None = None) -> CheckResult:
    """Drive the test patterns through the connected bench, compare with its map and
    find the faults. The edges' taps are put back as they were found."""
    table = backend.edges.table
    n_src, n_clamp = len(bench.sources.nodes), len(bench.clamps.nodes)
    amplitude = check_amplitude(backend, lambda a: drive_patterns(n_src, n_clamp, a))
    blocks = drive_patterns(n_src, n_clamp, amplitude)
    settings = tap_settings(len(bench.edges), table.shape[1])
    found = backend.read_taps()
    measured = []
    try:
        for k, taps in enumerate(settings):
            backend.write_taps(taps)
            rows = [backend.acquire_raw(ao, clamps_engaged=engaged)[0] for ao, engaged in blocks]
            measured.append(np.vstack(rows))
            if progress is not None:
                progress(k + 1, len(settings))
    finally:
        backend.safe()
        backend.write_taps(found)
    data = np.stack(measured)
    bmap = BenchMap(bench, table)
    faults, before, after = find_faults(bmap, settings, blocks, data)
    lines = [describe_fault(f, bench) for f in faults]
    if after > UNEXPLAINED * amplitude:
        lines.append(f"readings differ from the bench map by {after * 1e3:.3g} mV rms at the worst tap setting "
                     f"({after / amplitude:.1%} of the {amplitude:g} V drive)"
                     f"{' after the faults above' if faults else ''}: no single fault explains it; "
                     f"check the wiring against the bench file")
    return CheckResult(faults, lines, amplitude, data.shape[0] * data.shape[1], len(settings), before,
                       after, data[0])


@dataclass
class CheckOutcome:
    """``clln check``'s whole outcome: the bench, its firmware, the check's result and
    the edges' taps and resistances as read back."""

    bench: Bench
    firmware: Any
    result: CheckResult
    taps: np.ndarray
    resistance: np.ndarray
    calibration_id: str | None
    emulated: bool


def parse_faults(specs: list[str], bench: Bench) -> tuple[Any, Any]:
    """(EdgeFaults or None, WiringFaults or None) from ``--fault`` strings."""
    from clln.simulator.bench import EdgeFaults, WiringFaults

    wiring = [s for s in specs if s.startswith("swap")]
    edge = [s for s in specs if not s.startswith("swap")]
    edge_faults = EdgeFaults.parse(edge, len(bench.edges), bench.pots.taps) if edge else None
    wiring_faults = WiringFaults.parse(wiring, bench.ai, [e.chain for e in bench.edges]) if wiring else None
    return edge_faults, wiring_faults


def check_bench(path: Any, *, emulate: bool, faults: list[str] | None = None,
                progress: Callable[[int, int], None] | None = None,
                visa_library: str | None = None) -> CheckOutcome:
    """Open the bench file's bench (or its emulation, with ``faults`` injected), drive
    the test patterns, and close it safely."""
    from clln.benchfile import load_bench
    from clln.benchrun import bench_calibration, open_bench
    from clln.controller.errors import UserError

    bench, text = load_bench(path)
    if faults and not emulate:
        raise UserError("--fault needs --emulate: faults are injected into the emulated bench")
    edge_faults, wiring_faults = parse_faults(faults or [], bench)
    cal = bench_calibration(bench, path)
    session = open_bench(bench, text, target="emulate" if emulate else "hardware", calibration=cal,
                         visa_library=visa_library,
                         edge_faults=edge_faults, wiring_faults=wiring_faults)
    try:
        backend = session.backend
        assert isinstance(backend, HardwareBackend)
        result = run_check(backend, bench, progress=progress)
        state = backend.read_edges()
        assert state.taps is not None
        table = backend.edges.table
        resistance = 1.0 / table[np.arange(state.taps.size), state.taps]
        return CheckOutcome(bench, backend.potbank.info, result, state.taps, resistance,
                            None if cal is None else cal.id, emulate)
    finally:
        session.close()
