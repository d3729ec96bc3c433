"""Bench files: TOML, versioned, strictly validated — the one place that describes the
lab hardware (DAQ, serial port, potentiometer chip, edge/node/channel maps, limits)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clln.drivers.chips import CHIPS
from clln.protocol import read_file, read_toml, validate
from clln.simulator.imperfections import Imperfections

FORMAT_VERSION = 1
Positive = Annotated[float, Field(gt=0, strict=True)]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]
Index = Annotated[int, Field(ge=0, le=10**6, strict=True)]
Name = Annotated[str, Field(strict=True, min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DaqSpec(_Strict):
    """``[daq]``: the NI-DAQ device and its timing."""

    device: Name
    terminal_config: Literal["RSE", "NRSE", "DIFF", "PSEUDO_DIFF"] = "RSE"
    sample_rate: Annotated[float, Field(gt=0, le=1e8, strict=True)] = 10_000.0  # samples/s
    settle_samples: Annotated[int, Field(ge=0, le=10**6, strict=True)] = 20
    average_samples: Annotated[int, Field(ge=1, le=10**6, strict=True)] = 16
    ai_range: Annotated[float, Field(gt=0, le=1e3, strict=True)] = 10.0  # V
    ao_range: Annotated[float, Field(gt=0, le=1e3, strict=True)] = 10.0  # V
    clamp_switch: Name | None = None
    timeout: Annotated[float, Field(gt=0, le=1e4, strict=True)] = 10.0  # s


class SerialSpec(_Strict):
    """``[serial]``: the potentiometer controller's port."""

    port: Name
    baudrate: Annotated[int, Field(gt=0, le=50_000_000, strict=True)] = 115200  # no UART is faster
    retries: Annotated[int, Field(ge=0, le=100, strict=True)] = 20
    reply_timeout: Annotated[float, Field(gt=0, le=60, strict=True)] = 0.05  # s
    watchdog_ms: Annotated[int, Field(ge=0, le=65535, strict=True)] = 2000


class PotSpec(_Strict):
    """``[pots]``: the potentiometer chip and the series resistor of every edge."""

    chip: Literal["MCP4131", "MCP41HV51", "AD5293", "AD5206", "X9C103"]
    r_ab: Positive
    r_series: Annotated[float, Field(ge=0, le=1e9, strict=True)] = 1000.0  # ohm
    r_wiper: Annotated[float, Field(ge=0, le=1e9, strict=True)] | None = None  # ohm

    @model_validator(mode="after")
    def _r_ab_of_chip(self) -> PotSpec:
        options = CHIPS[self.chip].r_ab_options
        if self.r_ab not in options:
            raise ValueError(f"{self.chip} comes with r_ab in {', '.join(f'{o:g}' for o in options)} ohm, "
                             f"not {self.r_ab:g}")
        return self

    @property
    def taps(self) -> int:
        return CHIPS[self.chip].taps

    @property
    def wiper(self) -> float:
        return CHIPS[self.chip].r_wiper if self.r_wiper is None else self.r_wiper


class EdgeSpec(_Strict):
    """``[[edges]]``: one edge: its two nodes and its potentiometer's chain position."""

    nodes: tuple[Index, Index]
    chain: Annotated[int, Field(ge=0, le=255, strict=True)]  # SET_ALL carries at most 256 pots


class DrivenSpec(_Strict):
    """``[sources]`` / ``[clamps]``: driven nodes and their AO channels, in order."""

    nodes: list[Index]
    ao: list[Name]

    @model_validator(mode="after")
    def _same_length(self) -> DrivenSpec:
        if len(self.nodes) != len(self.ao):
            raise ValueError(f"nodes ({len(self.nodes)}) and ao ({len(self.ao)}) differ in length")
        return self


class LimitSpec(_Strict):
    """``[limits]``: hard limits, checked before anything is written."""

    max_node_voltage: Annotated[float, Field(gt=0, le=1e3, strict=True)]  # V
    max_edge_current: Positive  # A (checked against the chip's rating)


class SmuSpec(_Strict):
    """``[smu]``: an SMU on a fixture across two nodes (4-wire), which gives the
    calibration its scale in ohms."""

    address: Name                              # VISA resource, e.g. GPIB0::24::INSTR
    visa_library: str = ""                     # "" the system VISA; "file.yaml@sim" for pyvisa-sim
    nodes: tuple[Index, Index]                 # the fixture's two nodes
    current: Annotated[float, Field(gt=0, le=1e-2, strict=True)] = 5e-5  # A, test current
    compliance: Annotated[float, Field(gt=0, le=1e3, strict=True)] = 1.0  # V, voltage compliance


class EmulatorSpec(_Strict):
    """``[emulator]``: the bench model used by ``--emulate``."""

    preset: Literal["ideal", "pot-bench", "twin-bench"] = "pot-bench"
    seed: Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)] = 0
    parameters: Imperfections = Imperfections()

    @property
    def overrides(self) -> dict[str, object]:
        return self.parameters.model_dump(include=set(self.parameters.model_fields_set))


class Bench(_Strict):
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
    edges: list[EdgeSpec]
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
        chip = CHIPS[self.pots.chip]
        if self.limits.max_edge_current > chip.max_current:
            raise ValueError(f"limits.max_edge_current = {self.limits.max_edge_current:g} A exceeds the "
                             f"{chip.name}'s rating of {chip.max_current:g} A")
        if self.limits.max_node_voltage > min(self.daq.ao_range, self.daq.ai_range):
            raise ValueError(f"limits.max_node_voltage = {self.limits.max_node_voltage:g} V exceeds the "
                             f"DAQ ranges (ao_range {self.daq.ao_range:g} V, ai_range {self.daq.ai_range:g} V)")
        return self


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
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
