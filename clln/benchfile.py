"""Bench files: TOML, versioned, strictly validated — the one place that describes the
lab hardware (DAQ, serial port, potentiometer chip, edge/node/channel maps, limits)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from scipy.sparse.csgraph import dijkstra

from clln.controller.network import Network
from clln.drivers.boards import BOARDS
from clln.drivers.chips import CHIPS
from clln.drivers.daq import DaqConfig, plan_daq
from clln.drivers.visa import VISA_BACKENDS
from clln.simulator.imperfections import Imperfections
from clln.tomlfile import Positive, StrictModel, read_file, read_toml, validate

FORMAT_VERSION = 1
MAX_CHAIN = 255
"""Pots a bench's chain may hold: GET_ALL answers with a status byte and every tap (2 bytes
each) in one reply, and a packet carries at most 512 payload bytes (PROTOCOL.md §2)."""
Index = Annotated[int, Field(ge=0, le=10**6, strict=True)]
Name = Annotated[str, Field(strict=True, min_length=1)]


class DaqSpec(StrictModel):
    """``[daq]``: the NI-DAQ device, its wiring and timing (``drivers.daq.plan_daq``
    derives the ranges, the averaging window and the convert rate from these)."""

    device: Name
    terminal_config: Literal["RSE", "NRSE", "DIFF", "PSEUDO_DIFF"] = "RSE"
    mains_frequency: Literal[50, 60]            # Hz; readings average whole periods of it
    mains_cycles: Annotated[int, Field(ge=1, le=60, strict=True)] = 1  # at least this many periods
    sample_rate: Annotated[float, Field(gt=0, le=1e8, strict=True)] = 10_000.0  # samples/s per channel
    settle_samples: Annotated[int, Field(ge=0, le=10**6, strict=True)] = 20
    ai_range: Annotated[float, Field(gt=0, le=1e3, strict=True)] | None = None  # +-V; None: the smallest covering the limits
    ao_range: Annotated[float, Field(gt=0, le=1e3, strict=True)] | None = None
    clamp_switch: Name | None = None            # DO line(s), e.g. "port0/line0" or "port0/line0:1"
    clamps_driven_during_free: Annotated[bool, Field(strict=True)] = False
    ao_max_current: Annotated[float, Field(gt=0, le=1.0, strict=True)] = 5e-3  # A each AO channel can source (X-series: 5 mA)
    ai_input_capacitance: Annotated[float, Field(gt=0, le=1e-3, strict=True)] = 100e-12  # F (X-series: 100 pF)
    max_aggregate_rate: Annotated[float, Field(gt=0, le=1e9, strict=True)] = 1e6  # conversions/s over all AI (USB-6363)
    timeout: Annotated[float, Field(gt=0, le=1e4, strict=True)] = 10.0  # s


BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 28800, 38400, 57600, 76800,
              115200, 230400, 250000, 460800, 500000, 921600, 1000000, 2000000)
"""Baud rates a bench file may name: the standard ones up to the 2 Mbaud an AVR at 16 MHz
reaches."""
DEVICE_PATH = re.compile(r"/[^\x00-\x1f]*[^/\x00-\x1f]|COM[1-9][0-9]{0,2}|\\\\\.\\COM[1-9][0-9]{0,2}")
"""An absolute device path (/dev/ttyACM0, /dev/serial/by-id/...) or a Windows COM port."""


class SerialSpec(StrictModel):
    """``[serial]``: the potentiometer controller's port."""

    port: Name  # a device path, never a pyserial URL
    baudrate: Annotated[int, Field(strict=True)] = 115200
    retries: Annotated[int, Field(ge=0, le=100, strict=True)] = 20
    reply_timeout: Annotated[float, Field(gt=0, le=10, strict=True)] = 0.05
    watchdog_ms: Annotated[int, Field(ge=0, le=65535, strict=True)] = 2000
    board: Literal["mega2560", "uno"] = "mega2560"  # the controller's board (drivers/boards.py)
    reset_on_open: Annotated[bool, Field(strict=True)] = True  # false: open with DTR held low
    # s to wait for the BOOT packet after opening (an Arduino's bootloader takes up to ~2 s)
    boot_timeout: Annotated[float, Field(ge=0, le=30, strict=True)] = 2.5

    @field_validator("port")
    @classmethod
    def _device_path(cls, port: str) -> str:
        if "://" in port:
            raise ValueError(f"must be a device path such as /dev/ttyACM0 or COM3, not a URL "
                             f"({port.split('://')[0][:20]!r} scheme)")
        if not DEVICE_PATH.fullmatch(port):
            raise ValueError("must be an absolute device path such as /dev/ttyACM0 or "
                             "/dev/serial/by-id/..., or COM1..COM999")
        return port

    @field_validator("watchdog_ms")
    @classmethod
    def _watchdog_range(cls, ms: int) -> int:
        if 0 < ms < 100:
            raise ValueError(f"{ms} ms is too short: 0 (watchdog off) or 100..65535 ms (PROTOCOL.md §5.7)")
        return ms

    @field_validator("baudrate")
    @classmethod
    def _standard_rate(cls, rate: int) -> int:
        if rate not in BAUD_RATES:
            raise ValueError(f"{rate} is not one of {', '.join(map(str, BAUD_RATES))}")
        return rate


class PotSpec(StrictModel):
    """``[pots]``: the potentiometer chip and the series resistor of every edge."""

    chip: Literal["MCP4131", "MCP41HV51", "AD5293", "AD5206", "X9C103"]
    r_ab: Positive
    r_series: Annotated[float, Field(ge=0, le=1e9, strict=True)] = 1000.0  # ohm
    r_wiper: Annotated[float, Field(ge=0, le=1e9, strict=True)] | None = None  # ohm
    vss: Annotated[float, Field(ge=-100, le=100, strict=True)] | None = None   # V, the chip's supply (default:
    vdd: Annotated[float, Field(ge=-100, le=100, strict=True)] | None = None   # its usual one, e.g. 0 and 5 V)

    @model_validator(mode="after")
    def _r_ab_of_chip(self) -> PotSpec:
        chip = CHIPS[self.chip]
        options = chip.r_ab_options
        if self.r_ab not in options:
            raise ValueError(f"{self.chip} comes with r_ab in {', '.join(f'{o:g}' for o in options)} ohm, "
                             f"not {self.r_ab:g}")
        vss, vdd = self.supply
        if not 0 < vdd - vss <= chip.max_supply_span:
            raise ValueError(f"pots.vdd - pots.vss = {vdd - vss:g} V; allowed for the {chip.name}: "
                             f"above 0 and at most {chip.max_supply_span:g} V")
        return self

    @property
    def supply(self) -> tuple[float, float]:
        """(VSS, VDD) of the potentiometers, V."""
        usual = CHIPS[self.chip].supply
        return (usual[0] if self.vss is None else self.vss, usual[1] if self.vdd is None else self.vdd)

    @property
    def terminal_window(self) -> tuple[float, float]:
        """(low, high) V every potentiometer terminal must stay within."""
        return CHIPS[self.chip].terminal_window(*self.supply)

    @property
    def r_max(self) -> float:
        """Highest resistance an edge can have (ohm): series + wiper + R_AB at its tolerance."""
        return self.r_series + self.wiper + self.r_ab * (1.0 + CHIPS[self.chip].tolerance)

    @property
    def taps(self) -> int:
        return CHIPS[self.chip].taps

    @property
    def wiper(self) -> float:
        return CHIPS[self.chip].r_wiper if self.r_wiper is None else self.r_wiper


class BenchEdgeSpec(StrictModel):
    """``[[edges]]``: one edge: its two nodes and its potentiometer's chain position."""

    nodes: tuple[Index, Index]
    chain: Annotated[int, Field(ge=0, le=MAX_CHAIN - 1, strict=True)]  # one SET_ALL frame carries them all


class DrivenSpec(StrictModel):
    """``[sources]`` / ``[clamps]``: driven nodes and their AO channels, in order."""

    nodes: list[Index]
    ao: list[Name]

    @model_validator(mode="after")
    def _same_length(self) -> DrivenSpec:
        if len(self.nodes) != len(self.ao):
            raise ValueError(f"nodes ({len(self.nodes)}) and ao ({len(self.ao)}) differ in length")
        return self


class LimitSpec(StrictModel):
    """``[limits]``: hard limits, checked before anything is written."""

    max_node_voltage: Annotated[float, Field(gt=0, le=1e3, strict=True)]  # V
    max_edge_current: Positive  # A (checked against the chip's rating)


class SmuSpec(StrictModel):
    """``[smu]``: an SMU on a fixture across two nodes (4-wire), which gives the
    calibration its scale in ohms.

    ``visa_library`` may only name a VISA backend (``@py``, ``@ivi``, ``@sim``; "" for the
    system VISA): a bench file must not make pyvisa load a shared library of its
    choosing. A library path (or a pyvisa-sim YAML, "file.yaml@sim") comes from the
    command line (``--visa-library``) or the environment (``CLLN_VISA_LIBRARY``).
    """

    address: Name                              # VISA resource, e.g. GPIB0::24::INSTR
    model: Literal["2400", "2450"] = "2400"    # Keithley 2400 (SCPI) or 2450 (native SCPI)
    visa_library: str = ""                     # "" the system VISA, or "@py", "@ivi", "@sim"
    nodes: tuple[Index, Index]                 # the fixture's two nodes
    current: Annotated[float, Field(gt=0, le=1e-2, strict=True)] = 5e-5  # A, test current
    compliance: Annotated[float, Field(gt=0, le=1e3, strict=True)] = 1.0  # V, voltage compliance

    @field_validator("visa_library")
    @classmethod
    def _named_backend(cls, value: str) -> str:
        if value not in VISA_BACKENDS:
            raise ValueError(
                f"{value!r} is not allowed; allowed: {', '.join(repr(b) for b in VISA_BACKENDS)} "
                f"(a library path only with --visa-library or CLLN_VISA_LIBRARY)")
        return value


class EmulatorSpec(StrictModel):
    """``[emulator]``: the bench model used by ``--emulate``. Its DAQ figures that the
    ``[daq]`` set-up decides (ranges, averaging, convert interval, sample timing, mains
    frequency) come from there (``clln.benchrun.daq_parameters``)."""

    preset: Literal["ideal", "pot-bench", "twin-bench"] = "pot-bench"
    seed: Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)] = 0
    parameters: Imperfections = Imperfections()

    @property
    def overrides(self) -> dict[str, object]:
        return self.parameters.model_dump(include=set(self.parameters.model_fields_set))


class Bench(StrictModel):
    """A whole bench file."""

    format: Annotated[int, Field(strict=True)]
    name: Name
    description: str = ""
    nodes: Annotated[int, Field(gt=0, le=10**6, strict=True)]
    positions: list[tuple[float, float]] | None = None
    ai: list[Name]
    grounds: list[Index]
    daq: DaqSpec
    serial: SerialSpec
    pots: PotSpec
    edges: list[BenchEdgeSpec]
    sources: DrivenSpec
    clamps: DrivenSpec
    limits: LimitSpec
    calibration: str | None = None
    smu: SmuSpec | None = None
    emulator: EmulatorSpec = EmulatorSpec()

    @model_validator(mode="after")
    def _consistent(self) -> Bench:
        n = self.nodes
        if len(self.ai) != n:
            raise ValueError(f"ai lists {len(self.ai)} channels for {n} nodes (one per node)")
        if len(set(self.ai)) != n:
            raise ValueError("ai channels must be distinct")
        used = [*self.sources.nodes, *self.clamps.nodes, *self.grounds]
        if any(k >= n for k in used) or any(max(e.nodes) >= n for e in self.edges):
            raise ValueError(f"node indices must be in 0..{n - 1}")
        if len(set(used)) != len(used):
            raise ValueError("a node is listed twice among sources, clamps and grounds")
        aos = [*self.sources.ao, *self.clamps.ao]
        if len(set(aos)) != len(aos):
            raise ValueError("AO channels must be distinct")
        chains = [e.chain for e in self.edges]
        if len(set(chains)) != len(chains):
            raise ValueError("two edges share a chain position")
        if self.positions is not None and len(self.positions) != n:
            raise ValueError(f"positions gives {len(self.positions)} points for {n} nodes")
        if not self.edges:
            raise ValueError("a bench needs at least one edge")
        if self.smu is not None:
            a, b = self.smu.nodes
            if a == b or max(a, b) >= n:
                raise ValueError(f"smu.nodes must be two different nodes in 0..{n - 1}")
            if self.smu.compliance > self.limits.max_node_voltage:
                raise ValueError(f"smu.compliance = {self.smu.compliance:g} V exceeds "
                                 f"limits.max_node_voltage = {self.limits.max_node_voltage:g} V")
            if self.smu.current > self.limits.max_edge_current:
                raise ValueError(f"smu.current = {self.smu.current:g} A exceeds "
                                 f"limits.max_edge_current = {self.limits.max_edge_current:g} A")
        board = BOARDS[self.serial.board]
        problem = board.problem(max(chains) + 1)
        if problem is not None:
            allowed = ", ".join(f"{b.name} (up to {b.max_pots()} pots)" for b in BOARDS.values())
            raise ValueError(f"serial.board = {board.name!r} cannot hold the chain: {problem}; "
                             f"allowed: {allowed}")
        chip = CHIPS[self.pots.chip]
        if self.limits.max_edge_current > chip.max_current:
            raise ValueError(f"limits.max_edge_current = {self.limits.max_edge_current:g} A exceeds the "
                             f"{chip.name}'s rating of {chip.max_current:g} A")
        d = self.daq
        if d.clamp_switch is None and not d.clamps_driven_during_free:
            raise ValueError(
                "daq.clamp_switch: required: without a switch the clamp outputs hold the clamp nodes "
                "during free measurements, so the free state is not free; name the switch's DO line(s) "
                "(e.g. clamp_switch = \"port0/line0\"), or declare daq.clamps_driven_during_free = true "
                "to measure the free state with the clamp nodes held at 0 V")
        if d.clamp_switch is not None and d.clamps_driven_during_free:
            raise ValueError("daq.clamps_driven_during_free = true contradicts daq.clamp_switch: "
                             "remove one of them")
        daq_config(self)  # a DAQ set-up that works, or one line naming the [daq] key
        return self


def node_resistance_max(bench: Bench) -> float:
    """The highest Thevenin resistance (ohm) an AI channel can see: every edge at its
    highest resistance (Rayleigh monotonicity makes that the worst case), sources and
    grounds held, clamp nodes floating (the free state)."""
    n = bench.nodes
    edges = np.array([e.nodes for e in bench.edges])
    net = Network(n, edges)
    held = set(bench.sources.nodes) | set(bench.grounds)
    if bench.daq.clamp_switch is None:
        held |= set(bench.clamps.nodes)
    free = [k for k in range(n) if k not in held]
    if not free:
        return 0.0
    if n > 1024:  # too large to invert densely: one path's resistance bounds it (Rayleigh)
        adjacency = abs(net.laplacian(np.ones(len(edges))))
        hops = dijkstra(adjacency, unweighted=True, indices=sorted(held), min_only=True)
        finite = hops[np.isfinite(hops)]
        return float(finite.max() * bench.pots.r_max) if finite.size else 0.0
    lap = net.laplacian(np.full(len(edges), 1.0 / bench.pots.r_max)).toarray()
    sub = lap[np.ix_(free, free)]
    try:
        return float(np.max(np.diag(np.linalg.inv(sub))))
    except np.linalg.LinAlgError:  # a part with no held node: bounded by its own edges
        degree = np.diag(sub)
        return float(1.0 / degree[degree > 0].min()) if np.any(degree > 0) else 0.0


def daq_config(bench: Bench) -> DaqConfig:
    """The bench's DAQ set-up (``drivers.daq.plan_daq``); ValueError naming the key."""
    d = bench.daq
    return plan_daq(
        d.device, tuple(bench.sources.ao + bench.clamps.ao), tuple(bench.ai),
        max_node_voltage=bench.limits.max_node_voltage, mains_frequency=float(d.mains_frequency),
        node_resistance=node_resistance_max(bench), sample_rate=d.sample_rate,
        settle_samples=d.settle_samples, mains_cycles=d.mains_cycles,
        input_capacitance=d.ai_input_capacitance, max_aggregate_rate=d.max_aggregate_rate,
        terminal_config=d.terminal_config, clamp_switch=d.clamp_switch, ai_range=d.ai_range,
        ao_range=d.ao_range, timeout=d.timeout)


def parse_bench(text: str, source: str = "<bench>") -> Bench:
    """Validate bench TOML text; raise ProtocolError naming ``source`` and the key."""
    return validate(Bench, read_toml(text, source, FORMAT_VERSION), source)


def load_bench(path: str | Path) -> tuple[Bench, str]:
    """Read and validate a bench file; returns (bench, its text)."""
    text = read_file(path, "bench")
    return parse_bench(text, str(path)), text


def bench_hash(text: str) -> str:
    """SHA-256 of a bench file's text (recorded with runs and calibrations)."""
    return hashlib.sha256(text.encode()).hexdigest()


# What a calibration depends on: the network, the channel maps, the DAQ's ranges, the
# pots and (for emulated benches) the emulator's model. Comments, the description,
# limits, serial settings, the SMU and the ``calibration`` key itself do not count, so
# naming the calibration file in the bench file keeps it valid.
_HARDWARE = {
    "nodes": True, "ai": True, "grounds": True, "edges": True, "sources": True, "clamps": True,
    "pots": True, "emulator": True,
    "daq": {"device", "terminal_config", "ai_range", "ao_range"},
}


def hardware_hash(bench: Bench) -> str:
    """SHA-256 of the bench's hardware description (what ties a calibration to a bench)."""
    data = bench.model_dump(mode="json", include=_HARDWARE)  # type: ignore[arg-type]
    cfg = daq_config(bench)
    data["daq"].update(ai_range=cfg.ai_range, ao_range=cfg.ao_range)  # the ranges in use
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
