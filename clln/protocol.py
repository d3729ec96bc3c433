"""Protocol files: TOML, versioned, strictly validated.

A protocol says which network to build, which task to learn, how to train and,
for the simulator, which imperfection preset to use. Unknown keys are errors.
Every error names the file, the key and the allowed values, in one line.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, create_model, model_validator

from clln.controller.bounds import INT64_MAX
from clln.controller.errors import ProtocolError
from clln.controller.packing import COORDINATION_RANGE as JAMMED_COORDINATION
from clln.controller.ranges import Range
from clln.simulator.imperfections import Imperfections
from clln.simulator.insitu_pot import ComparatorTwinParams
from clln.simulator.insitu_transistor import PRESETS as TRANSISTOR_INSITU_PRESETS
from clln.simulator.insitu_transistor import EdgeCircuitParams
from clln.tomlfile import (
    Bool,
    Int,
    NonNegative,
    Positive,
    Str,
    StrictModel,
    read_file,
    read_toml,
    validate,
)

FORMAT_VERSION = 1

# Ranges that keep the physics finite (clln.controller.bounds): what a bench can be.
Volts = Annotated[float, Range(-1e3, 1e3, "V", "no bench drives more than 1 kV; beyond, squared drops overflow")]
Siemens = Annotated[float, Range(1e-12, 1e3, "S", "1 TOhm to 1 mOhm: wider ratios make the network singular")]
Ohms = Annotated[float, Range(0.0, 1e9, "ohm", "up to 1 GOhm")]
PositiveOhms = Annotated[float, Range(1e-3, 1e9, "ohm", "1 mOhm to 1 GOhm")]
Alpha = Annotated[float, Range(1e-15, 1e6, "S/V^2", "larger rates overflow the update in one step")]
Nudge = Annotated[float, Range(1e-6, 1e3, "", "alpha / eta must stay finite and the clamps within the bench")]
Count = Annotated[int, Range(1, 10**9, "", "at most a billion")]
SmallCount = Annotated[int, Range(1, 10**6, "", "at most a million")]
Seed = Annotated[int, Range(0, INT64_MAX, "", "seeds are stored as signed 64-bit integers")]
SquaredVolts = Annotated[float, Range(0.0, 1e6, "V^2", "errors and signals are squared volts within +-1 kV")]


class NetworkSpec(StrictModel):
    """``[network]``: the topology."""

    kind: Literal["lattice", "delaunay", "jammed", "edge-list"]
    rows: Annotated[int, Range(1, 10**6, "", "the size estimate refuses what memory cannot hold")] | None = None
    cols: Annotated[int, Range(1, 10**6, "", "the size estimate refuses what memory cannot hold")] | None = None
    periodic: Bool = False
    nodes: Annotated[int, Range(3, 10**9, "", "the size estimate refuses what memory cannot hold")] | None = None
    coordination: Annotated[float, Range(1e-3, 1e3, "", "a mean number of contacts")] | None = None
    file: Str | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> NetworkSpec:
        needed = {"lattice": ("rows", "cols"), "delaunay": ("nodes",), "jammed": ("nodes",),
                  "edge-list": ("file",)}
        allowed = {"lattice": {"rows", "cols", "periodic"}, "delaunay": {"nodes", "coordination"},
                   "jammed": {"nodes", "coordination", "periodic"}, "edge-list": {"file"}}
        if self.kind == "jammed":  # nodes: disks before rattler removal; coordination: 2 m / n
            lo, hi = JAMMED_COORDINATION
            if self.nodes is not None and self.nodes < 16:
                raise ValueError(f"kind 'jammed' needs nodes >= 16 (disks), got {self.nodes}")
            if self.coordination is not None and not lo <= self.coordination <= hi:
                raise ValueError(
                    f"kind 'jammed' needs coordination in {lo}..{hi}, got {self.coordination}"
                )
        for key in needed[self.kind]:
            if getattr(self, key) is None:
                raise ValueError(f"kind '{self.kind}' needs key '{key}'")
        extra = {k for k in self.model_fields_set if k != "kind"} - allowed[self.kind]
        if extra:
            raise ValueError(
                f"key(s) {', '.join(sorted(extra))} do not apply to kind '{self.kind}'; "
                f"allowed: {', '.join(sorted(allowed[self.kind]))}"
            )
        return self


GATE_KINDS = ("transistor", "level1")
_GATE_KEYS = {"gate_min", "gate_max", "gate_resolution", "gate_init", "s", "v_t", "lam",
              "g_off", "capacitance", "charge_resistance", "window", "fixed_resistors"}


class EdgeSpec(StrictModel):
    """``[edges]``: the actuators.

    continuous: conductance in [gmin, gmax] siemens, initial values uniform in ``init``.
    stepped: a digital potentiometer in rheostat mode, R(D) = r_series + r_wiper +
    D r_ab / (taps - 1), initial taps uniform in ``init_taps``.
    transistor / level1: NMOS transistor edges (clln.simulator.devices: the seed rig's
    model, or SPICE level 1) whose state is the gate voltage in [gate_min, gate_max] V
    (steps of ``gate_resolution`` V, 0: continuous), initial values uniform in
    ``gate_init``; gain ``s`` (A/V^2), threshold ``v_t`` (V), ``lam`` (1/V, level1),
    parallel conductance ``g_off`` (S); each gate on a ``capacitance`` (F) charged through
    ``charge_resistance`` (ohm) for a learning ``window`` (s) per step;
    ``fixed_resistors`` = [[a, b, ohms], ...] adds untrained resistors between nodes
    (seed 002's small network: two transistors beside a fixed 500 ohm resistor).
    """

    kind: Literal["continuous", "stepped", "transistor", "level1"] = "continuous"
    gmin: Siemens = 1e-4
    gmax: Siemens = 1e-2
    init: tuple[Siemens, Siemens] | None = None
    taps: Annotated[int, Range(2, 65536, "", "digital potentiometers have at most 16-bit wipers")] = 129
    r_series: Ohms = 1000.0
    r_ab: PositiveOhms = 10_000.0
    r_wiper: Ohms = 75.0
    init_taps: tuple[Int, Int] | None = None
    gate_min: Volts = 0.0
    gate_max: Volts = 5.0
    gate_resolution: Annotated[float, Range(0.0, 1e3, "V", "a gate step within the gate range")] = 0.0
    gate_init: tuple[Volts, Volts] | None = None
    s: Annotated[float, Range(1e-12, 1e3, "A/V^2", "a transistor's gain factor")] = 8.5e-4
    v_t: Volts = 0.62
    lam: Annotated[float, Range(0.0, 1e3, "1/V", "channel-length modulation")] = 0.02
    g_off: Annotated[float, Range(0.0, 1e3, "S", "up to 1 kS")] | None = None
    capacitance: Annotated[float, Range(1e-15, 1e3, "F", "1 fF to 1 kF")] = 2.2e-6
    charge_resistance: PositiveOhms = 1e3
    window: Annotated[float, Range(1e-12, 1e6, "s", "a learning window up to 1e6 s")] = 100e-6
    fixed_resistors: list[tuple[Int, Int, PositiveOhms]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EdgeSpec:
        if self.gmin >= self.gmax:
            raise ValueError(f"gmin ({self.gmin}) must be below gmax ({self.gmax})")
        if self.init is not None and not (self.gmin <= self.init[0] <= self.init[1] <= self.gmax):
            raise ValueError(f"init must satisfy gmin <= low <= high <= gmax, got {list(self.init)}")
        if self.init_taps is not None and not (0 <= self.init_taps[0] <= self.init_taps[1] < self.taps):
            raise ValueError(f"init_taps must lie in 0..{self.taps - 1}, got {list(self.init_taps)}")
        if self.kind == "stepped" and self.r_series + self.r_wiper <= 0:
            raise ValueError("r_series + r_wiper must be > 0 ohm (a zero-ohm edge is a short)")
        gate_keys = _GATE_KEYS & self.model_fields_set
        if gate_keys and self.kind not in GATE_KINDS:
            raise ValueError(f"key(s) {', '.join(sorted(gate_keys))} apply to transistor edges only "
                             f"(kind {' or '.join(GATE_KINDS)}), not kind '{self.kind}'")
        if self.gate_min >= self.gate_max:
            raise ValueError(f"gate_min ({self.gate_min} V) must be below gate_max ({self.gate_max} V)")
        if self.gate_init is not None and not (
                self.gate_min <= self.gate_init[0] <= self.gate_init[1] <= self.gate_max):
            raise ValueError(f"gate_init must satisfy gate_min ({self.gate_min}) <= low <= high <= "
                             f"gate_max ({self.gate_max}) volts, got {list(self.gate_init)}")
        return self


class TaskSpec(StrictModel):
    """``[task]``: what to learn. Node roles are picked at random (seeded) unless given."""

    kind: Literal["regression", "allostery", "classification"]
    inputs: SmallCount = 2
    outputs: SmallCount = 2
    classes: Annotated[int, Range(2, 10**6, "", "at most a million")] | None = None
    train: SmallCount = 30
    test: SmallCount = 100
    input_range: tuple[Volts, Volts] = (0.0, 1.0)
    grounds: SmallCount = 1
    source_nodes: list[Int] | None = None
    ground_nodes: list[Int] | None = None
    output_nodes: list[Int] | None = None
    output_edges: list[tuple[Int, Int]] | None = None
    high_ground: Volts = 1.0
    target_high: Volts = 0.3
    target_low: Volts = 0.0
    spread: Annotated[float, Range(1e-12, 1e3, "V", "a spread beyond 1 kV is no class")] = 0.08
    dataset: Literal["xor", "quadratic", "seed002-pair"] | None = None
    encoding: Literal["signed", "complement"] = "signed"

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.dataset == "xor" and (self.kind != "classification" or self.inputs != 2
                                      or self.classes != 2):
            raise ValueError("dataset 'xor' needs kind 'classification', inputs = 2 and classes = 2")
        if self.dataset == "seed002-pair" and (self.kind != "regression" or self.inputs != 3
                                               or self.outputs != 1):
            raise ValueError("dataset 'seed002-pair' needs kind 'regression', inputs = 3 "
                             "(high, low, input) and outputs = 1")
        if self.encoding == "complement" and self.kind != "classification":
            raise ValueError("key 'encoding' applies to kind 'classification' only")
        if self.dataset == "quadratic" and (self.kind != "regression" or self.inputs != 2):
            raise ValueError("dataset 'quadratic' needs kind 'regression' and inputs = 2 "
                             "(the sources carry u and 1 - u)")
        if self.input_range[0] >= self.input_range[1]:
            raise ValueError(f"input_range must be [low, high] with low < high, got {list(self.input_range)}")
        if self.kind == "classification" and self.classes is None:
            raise ValueError("kind 'classification' needs key 'classes'")
        if self.kind != "classification" and self.classes is not None:
            raise ValueError(f"key 'classes' does not apply to kind '{self.kind}'")
        if self.output_edges is not None and self.kind != "allostery":
            raise ValueError(f"key 'output_edges' applies to kind 'allostery' only, not '{self.kind}'")
        if self.output_nodes is not None and self.kind == "allostery":
            raise ValueError("kind 'allostery' takes 'output_edges', not 'output_nodes'")
        return self

    @property
    def n_outputs(self) -> int:
        return self.classes if self.kind == "classification" and self.classes else self.outputs

    @property
    def n_sources(self) -> int:
        if self.kind != "classification":
            return self.inputs
        return 2 * self.inputs + (0 if self.encoding == "complement" else 1)


class OverclampSpec(StrictModel):
    """``[training.scheme.overclamp]``: clamp past the target (effective nudge ``eta``,
    optionally clipped at the ``rails``, V), on both sides when ``symmetric``; samples
    within ``margin`` (V, or "auto": ``noise_margin`` times the rms output noise the
    controller measures from ``noise_readings`` free readings before its first update) stop
    teaching; the update is averaged over the samples still teaching when ``normalise``.
    See clln.controller.schemes.Overclamp."""

    eta: Nudge = 10.0
    margin: Annotated[float, Field(ge=0, le=1e3, strict=True)] | Literal["auto"] = "auto"  # V, within 1 kV
    noise_margin: Annotated[float, Range(0.0, 1e6, "", "a multiple of the measured noise")] = 5.0
    noise_readings: Annotated[int, Field(ge=2, le=10**6, strict=True)] = 4
    rails: tuple[Volts, Volts] | None = None
    normalise: Bool = True
    symmetric: Bool = True

    @model_validator(mode="after")
    def _rails_ordered(self) -> OverclampSpec:
        if self.rails is not None and not self.rails[0] < self.rails[1]:
            raise ValueError(f"rails must be [low, high] with low < high, got {list(self.rails)}")
        return self


class AutoZeroSpec(StrictModel):
    """``[training.scheme.auto-zero]``: a zero-nudge measurement every ``every`` steps,
    averaged over the last ``window`` of them, subtracted from every update."""

    every: Count = 10
    window: SmallCount = 10


class ChopSpec(StrictModel):
    """``[training.scheme.chop]`` (twin benches): swap the twins' roles every step."""


class ResidualsSpec(StrictModel):
    """``[training.scheme.residuals]`` (stepped edges): carry each edge's fractional tap."""


class SchemeSpec(StrictModel):
    """``[training.scheme]``: bias suppression. Each sub-table present turns that
    component on (``[training.scheme.chop]`` may be empty); none is plain coupled
    learning."""

    overclamp: OverclampSpec | None = None
    auto_zero: AutoZeroSpec | None = Field(default=None, alias="auto-zero")
    chop: ChopSpec | None = None
    residuals: ResidualsSpec | None = None


class InSituSpec(StrictModel):
    """``[training.insitu]``: the experiment a bench that learns in place runs itself
    (see docs/insitu.md). ``eta`` and ``learn_time_us`` are one value or one per step."""

    eta: Positive | list[Positive]
    learn_time_us: Positive | list[Positive]
    amplifier_gain: Positive | None = None
    eta_levels: Annotated[int, Field(ge=1, le=65535, strict=True)] = 129
    hinge: Bool = False
    margin: NonNegative = 0.0
    normalise: Bool = False
    anti_clamp: Bool = False
    learn_flags: list[Bool] | None = None
    timer_tick_us: Positive = 0.5
    timer_max_ticks: Annotated[int, Field(ge=1, le=2**32 - 1, strict=True)] = 65535

    def schedule(self, key: str, steps: int) -> list[float]:
        """The per-step values of ``eta`` or ``learn_time_us``."""
        value = getattr(self, key)
        return list(value) if isinstance(value, list) else [value] * steps

    def check(self, steps: int) -> None:
        """ValueError naming the key unless every value can be realised by the bench."""
        for key in ("eta", "learn_time_us"):
            value = getattr(self, key)
            if isinstance(value, list) and len(value) != steps:
                raise ValueError(f"insitu.{key}: {len(value)} entries; allowed: one value, or "
                                 f"one per step (training.steps = {steps})")
        top = max(self.schedule("eta", steps))
        gain = self.amplifier_gain
        if top > 1.0 and gain is None:
            raise ValueError(f"insitu.eta: {top:g} is beyond the clamp hardware; allowed: 0 < eta "
                             "<= 1, or eta > 1 with a declared insitu.amplifier_gain")
        if gain is not None and top > gain:
            raise ValueError(f"insitu.eta: {top:g} exceeds the amplifier; allowed: eta <= "
                             f"insitu.amplifier_gain ({gain:g})")
        low = min(self.schedule("eta", steps))
        if low * self.eta_levels < 0.5:
            raise ValueError(f"insitu.eta: {low:g} is below one divider step; allowed: eta >= "
                             f"1/{self.eta_levels}")
        times = self.schedule("learn_time_us", steps)
        shortest, longest = self.timer_tick_us, self.timer_tick_us * self.timer_max_ticks
        bad = [t for t in times if not shortest <= t <= longest]
        if bad:
            raise ValueError(f"insitu.learn_time_us: {bad[0]:g} us is outside the learning timer; "
                             f"allowed: {shortest:g}..{longest:g} us (tick {self.timer_tick_us:g} us, "
                             f"at most {self.timer_max_ticks} ticks)")


class TrainingSpec(StrictModel):
    """``[training]``: rule and hyper-parameters. ``mode = "in-situ"`` hands the loop to
    a bench that learns in place, described by ``[training.insitu]``."""

    rule: Literal["coupled", "stepped"] = "coupled"
    alpha: Alpha = 1e-3
    eta: Nudge = 0.1
    step: Annotated[int, Range(1, 65535, "taps", "at most a 16-bit wiper's range")] = 1
    threshold: SquaredVolts = 0.0
    batch: SmallCount = 30
    steps: Count = 1000
    test_every: Count = 50
    snapshot_every: Count = 100
    target_error: Annotated[float, Range(1e-300, 1e6, "", "a positive cost in squared volts")] | None = None
    backoff: Annotated[int, Field(ge=2, le=1000, strict=True)] | None = None
    reversal_backoff: Annotated[int, Field(ge=1, le=1000, strict=True)] | None = None
    reversal_arm: Annotated[float, Range(1e-300, 1.0, "", "a fraction of the first step's error")] | None = None
    scheme: SchemeSpec | None = None
    mode: Literal["host", "in-situ"] = "host"
    insitu: InSituSpec | None = None

    @model_validator(mode="after")
    def _insitu(self) -> TrainingSpec:
        if self.reversal_arm is not None and self.reversal_backoff is None:
            raise ValueError("reversal_arm: arms the reversal safeguard; set reversal_backoff too")
        if self.mode == "host":
            if self.insitu is not None:
                raise ValueError("insitu: applies to mode 'in-situ' only; set training.mode = 'in-situ'")
            return self
        if self.insitu is None:
            raise ValueError("mode 'in-situ' needs a [training.insitu] table")
        if self.scheme is not None:
            raise ValueError("scheme: does not apply to mode 'in-situ' (the bench's own circuits "
                             "learn); use the insitu keys")
        self.insitu.check(self.steps)
        return self


def _optional_keys(params: type[Any]) -> dict[str, Any]:
    """Every field of a parameter dataclass as an optional key (omitted: its default)."""
    return {f.name: ((Int if f.type in (int, "int") else NonNegative) | None, None)
            for f in fields(params)}


if TYPE_CHECKING:  # built below from the parameter dataclasses; to a type checker, tables
    class ComparatorSpec(StrictModel): ...

    class EdgeCircuitSpec(StrictModel): ...
else:
    # the parts of the comparator-twin bench, and of the transistor benches that learn in
    # place, all optional
    ComparatorSpec = create_model("ComparatorSpec", __base__=StrictModel,
                                  **_optional_keys(ComparatorTwinParams))
    EdgeCircuitSpec = create_model("EdgeCircuitSpec", __base__=StrictModel,
                                   **_optional_keys(EdgeCircuitParams))
ComparatorSpec.__doc__ = ("``[simulator.comparator]``: parts of the 'comparator-twin' bench "
                          "(clln.simulator.insitu_pot.ComparatorTwinParams); omitted keys keep "
                          "their defaults.")
EdgeCircuitSpec.__doc__ = ("``[simulator.edge_circuit]``: parts of the transistor benches that "
                           "learn in place (clln.simulator.insitu_transistor.EdgeCircuitParams); "
                           "omitted keys keep their defaults.")


class SimulatorSpec(StrictModel):
    """``[simulator]``: imperfection preset, overrides of its parameters, sparse solver
    (``solver`` for linear edges, ``lu`` for the Newton solves of transistor edges).

    ``parameters`` overrides any imperfection parameter of the preset
    (clln.simulator.Imperfections); ``bench_seed`` picks the simulated bench's drawn
    part errors (the protocol seed when omitted).
    """

    preset: Literal["ideal", "pot-bench", "twin-bench", "comparator-twin", "transistor-16",
                    "transistor-pair", "transistor-16-insitu", "transistor-pair-insitu"] = "ideal"
    parameters: Imperfections = Imperfections()
    comparator: ComparatorSpec | None = None
    edge_circuit: EdgeCircuitSpec | None = None
    bench_seed: Seed | None = None
    solver: Literal["auto", "cholmod", "qdldl", "superlu"] = "auto"
    lu: Literal["superlu", "umfpack"] = "superlu"

    @property
    def overrides(self) -> dict[str, Any]:
        """The parameters given in the protocol (not the defaults)."""
        return self.parameters.model_dump(include=set(self.parameters.model_fields_set))


class MetaSpec(StrictModel):
    """``[meta]``: the lab notebook entry of every run of this protocol (the command line's
    ``--operator``, ``--sample``, ``--note`` and ``--tag`` add to it)."""

    operator: Str = ""
    sample: Str = ""
    bench_serial: Str = ""
    notes: Str = ""
    tags: list[Str] = []


class Protocol(StrictModel):
    """A whole protocol file."""

    format: Int
    name: Str
    description: Str = ""
    seed: Seed = 0
    network: NetworkSpec
    edges: EdgeSpec = EdgeSpec()
    task: TaskSpec
    training: TrainingSpec = TrainingSpec()
    simulator: SimulatorSpec = SimulatorSpec()
    meta: MetaSpec = MetaSpec()

    @model_validator(mode="after")
    def _insitu_fits(self) -> Protocol:
        insitu = self.training.insitu
        if insitu is not None and insitu.learn_flags is not None and len(insitu.learn_flags) != self.task.train:
            raise ValueError(f"training.insitu.learn_flags: {len(insitu.learn_flags)} entries; "
                             f"allowed: one per training sample (task.train = {self.task.train})")
        preset = self.simulator.preset
        in_place = preset in ("comparator-twin", *TRANSISTOR_INSITU_PRESETS)
        if in_place != (self.training.mode == "in-situ"):
            named = preset if in_place else "comparator-twin"
            raise ValueError(f"simulator.preset: {named!r} learns in place and goes with "
                             "training.mode = 'in-situ' (and only it; so do "
                             f"{', '.join(TRANSISTOR_INSITU_PRESETS)}); got preset "
                             f"{preset!r} with mode {self.training.mode!r}")
        if self.simulator.comparator is not None and preset != "comparator-twin":
            raise ValueError("simulator.comparator: applies to preset 'comparator-twin' only")
        if self.simulator.edge_circuit is not None and preset not in TRANSISTOR_INSITU_PRESETS:
            raise ValueError("simulator.edge_circuit: applies to presets "
                             f"{', '.join(TRANSISTOR_INSITU_PRESETS)} only")
        if preset in TRANSISTOR_INSITU_PRESETS and self.edges.kind not in GATE_KINDS:
            raise ValueError(f"edges.kind: {self.edges.kind!r}; preset {preset!r} needs "
                             f"{' or '.join(GATE_KINDS)}")
        if self.training.mode == "in-situ" and self.task.kind == "allostery":
            raise ValueError("task.kind: 'allostery' is not available in mode 'in-situ'; "
                             "allowed: regression, classification")
        return self


def parse_protocol(text: str, source: str = "<protocol>") -> Protocol:
    """Validate protocol TOML text; raise ProtocolError naming ``source`` and the key."""
    data = read_toml(text, source, FORMAT_VERSION)
    if data.get("kind") == "limit-cycles":  # protocols/seed002/limit-cycles.toml: not trained
        raise ProtocolError(f"{source}: kind: 'limit-cycles' is a seed 002 experiment, not a training "
                            f"protocol; run it with: clln analyze {source}")
    return validate(Protocol, data, source)


def load_protocol(path: str | Path) -> tuple[Protocol, str]:
    """Read and validate a protocol file; returns (protocol, its text)."""
    text = read_file(path, "protocol")
    return parse_protocol(text, str(path)), text
