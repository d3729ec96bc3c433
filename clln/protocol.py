"""Protocol files: TOML, versioned, strictly validated.

A protocol says which network to build, which task to learn, how to train and,
for the simulator, which imperfection preset to use. Unknown keys are errors.
Every error names the file, the key and the allowed values, in one line.
"""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clln.controller.bounds import INT64_MAX, bounded_float, bounded_int
from clln.controller.errors import ProtocolError
from clln.controller.files import read_user_text
from clln.controller.packing import COORDINATION_RANGE as JAMMED_COORDINATION
from clln.simulator.imperfections import Imperfections

FORMAT_VERSION = 1

# Strict scalars: a boolean or a string is never silently turned into a number.
Float = Annotated[float, Field(strict=True)]
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
Positive = Annotated[float, Field(gt=0, strict=True)]
NonNegative = Annotated[float, Field(ge=0, strict=True)]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]

# Ranges that keep the physics finite (clln.controller.bounds): what a bench can be.
Volts = bounded_float(-1e3, 1e3, "V", "no bench drives more than 1 kV; beyond, squared drops overflow")
Siemens = bounded_float(1e-12, 1e3, "S", "1 TOhm to 1 mOhm: wider ratios make the network singular")
Ohms = bounded_float(0.0, 1e9, "ohm", "up to 1 GOhm")
PositiveOhms = bounded_float(1e-3, 1e9, "ohm", "1 mOhm to 1 GOhm")
Alpha = bounded_float(1e-15, 1e6, "S/V^2", "larger rates overflow the update in one step")
Nudge = bounded_float(1e-6, 1e3, "", "alpha / eta must stay finite and the clamps within the bench")
Count = bounded_int(1, 10**9, "", "at most a billion")
SmallCount = bounded_int(1, 10**6, "", "at most a million")
Seed = bounded_int(0, INT64_MAX, "", "seeds are stored as signed 64-bit integers")
SquaredVolts = bounded_float(0.0, 1e6, "V^2", "errors and signals are squared volts within +-1 kV")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NetworkSpec(_Strict):
    """``[network]``: the topology."""

    kind: Literal["lattice", "delaunay", "jammed", "edge-list"]
    rows: bounded_int(1, 10**6, "", "the size estimate refuses what memory cannot hold") | None = None
    cols: bounded_int(1, 10**6, "", "the size estimate refuses what memory cannot hold") | None = None
    periodic: Bool = False
    nodes: bounded_int(3, 10**9, "", "the size estimate refuses what memory cannot hold") | None = None
    coordination: bounded_float(1e-3, 1e3, "", "a mean number of contacts") | None = None
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


class EdgeSpec(_Strict):
    """``[edges]``: the actuators.

    continuous: conductance in [gmin, gmax] siemens, initial values uniform in ``init``.
    stepped: a digital potentiometer in rheostat mode, R(D) = r_series + r_wiper +
    D r_ab / (taps - 1), initial taps uniform in ``init_taps``.
    """

    kind: Literal["continuous", "stepped"] = "continuous"
    gmin: Siemens = 1e-4
    gmax: Siemens = 1e-2
    init: tuple[Siemens, Siemens] | None = None
    taps: bounded_int(2, 65536, "", "digital potentiometers have at most 16-bit wipers") = 129
    r_series: Ohms = 1000.0
    r_ab: PositiveOhms = 10_000.0
    r_wiper: Ohms = 75.0
    init_taps: tuple[Int, Int] | None = None

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
        return self


class TaskSpec(_Strict):
    """``[task]``: what to learn. Node roles are picked at random (seeded) unless given."""

    kind: Literal["regression", "allostery", "classification"]
    inputs: SmallCount = 2
    outputs: SmallCount = 2
    classes: bounded_int(2, 10**6, "", "at most a million") | None = None
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
    spread: bounded_float(1e-12, 1e3, "V", "a spread beyond 1 kV is no class") = 0.08

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
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
        return 2 * self.inputs + 1 if self.kind == "classification" else self.inputs


class OverclampSpec(_Strict):
    """``[training.scheme.overclamp]``: clamp past the target (effective nudge ``eta``,
    optionally clipped at the ``rails``, V), on both sides when ``symmetric``; samples
    within ``margin`` (V, or "auto": ``noise_margin`` times the rms output noise the
    controller measures from ``noise_readings`` free readings before its first update) stop
    teaching; the update is averaged over the samples still teaching when ``normalise``.
    See clln.controller.schemes.Overclamp."""

    eta: Nudge = 10.0
    margin: Annotated[float, Field(ge=0, le=1e3, strict=True)] | Literal["auto"] = "auto"  # V, within 1 kV
    noise_margin: bounded_float(0.0, 1e6, "", "a multiple of the measured noise") = 5.0
    noise_readings: Annotated[int, Field(ge=2, le=10**6, strict=True)] = 4
    rails: tuple[Volts, Volts] | None = None
    normalise: Bool = True
    symmetric: Bool = True

    @model_validator(mode="after")
    def _rails_ordered(self) -> OverclampSpec:
        if self.rails is not None and not self.rails[0] < self.rails[1]:
            raise ValueError(f"rails must be [low, high] with low < high, got {list(self.rails)}")
        return self


class AutoZeroSpec(_Strict):
    """``[training.scheme.auto-zero]``: a zero-nudge measurement every ``every`` steps,
    averaged over the last ``window`` of them, subtracted from every update."""

    every: Count = 10
    window: SmallCount = 10


class ChopSpec(_Strict):
    """``[training.scheme.chop]`` (twin benches): swap the twins' roles every step."""


class ResidualsSpec(_Strict):
    """``[training.scheme.residuals]`` (stepped edges): carry each edge's fractional tap."""


class SchemeSpec(_Strict):
    """``[training.scheme]``: bias suppression. Each sub-table present turns that
    component on (``[training.scheme.chop]`` may be empty); none is plain coupled
    learning."""

    overclamp: OverclampSpec | None = None
    auto_zero: AutoZeroSpec | None = Field(default=None, alias="auto-zero")
    chop: ChopSpec | None = None
    residuals: ResidualsSpec | None = None


class TrainingSpec(_Strict):
    """``[training]``: rule and hyper-parameters."""

    rule: Literal["coupled", "stepped"] = "coupled"
    alpha: Alpha = 1e-3
    eta: Nudge = 0.1
    step: bounded_int(1, 65535, "taps", "at most a 16-bit wiper's range") = 1
    threshold: SquaredVolts = 0.0
    batch: SmallCount = 30
    steps: Count = 1000
    test_every: Count = 50
    snapshot_every: Count = 100
    target_error: bounded_float(1e-300, 1e6, "", "a positive cost in squared volts") | None = None
    backoff: Annotated[int, Field(ge=2, le=1000, strict=True)] | None = None
    scheme: SchemeSpec | None = None


class SimulatorSpec(_Strict):
    """``[simulator]``: imperfection preset, overrides of its parameters, sparse solver.

    ``parameters`` overrides any imperfection parameter of the preset
    (clln.simulator.Imperfections); ``bench_seed`` picks the simulated bench's drawn
    part errors (the protocol seed when omitted).
    """

    preset: Literal["ideal", "pot-bench", "twin-bench"] = "ideal"
    parameters: Imperfections = Imperfections()
    bench_seed: Seed | None = None
    solver: Literal["auto", "cholmod", "qdldl", "superlu"] = "auto"

    @property
    def overrides(self) -> dict[str, Any]:
        """The parameters given in the protocol (not the defaults)."""
        return self.parameters.model_dump(include=set(self.parameters.model_fields_set))


class Protocol(_Strict):
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



def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model at ``loc`` (the location of an unknown key)."""
    def model_in(annotation: Any) -> Any:
        """The pydantic model inside an annotation such as ``list[M]`` or ``M | None``."""
        if hasattr(annotation, "model_fields"):
            return annotation
        for arg in typing.get_args(annotation):
            found = model_in(arg)
            if found is not None:
                return found
        return None

    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list of tables
            continue
        fields = getattr(current, "model_fields", {})
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return []
        current = model_in(field.annotation)
    return sorted(f.alias or name for name, f in getattr(current, "model_fields", {}).items())


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) if str(p).isprintable() and str(p).strip() == str(p) and str(p) else repr(p)
                    for p in loc) or "(top level)"


def _union_tag(part: Any) -> bool:
    """Whether a location part is pydantic's tag of a union member (e.g. 'constrained-float',
    "literal['auto']"), not a key of the file."""
    return isinstance(part, str) and ("[" in part or part.startswith("constrained-")
                                      or part in ("float", "int", "str", "bool"))


def _describe_union(errors: list[dict[str, Any]]) -> tuple[str, int] | None:
    """One line for a value that matched no member of a union (e.g. a number or 'auto'),
    and how many of ``errors`` it covers; None when the first error is not such a case."""
    loc = tuple(errors[0]["loc"])
    if not loc or not _union_tag(loc[-1]):
        return None
    members = [e for e in errors if len(e["loc"]) == len(loc) and tuple(e["loc"])[:-1] == loc[:-1]
               and _union_tag(e["loc"][-1])]
    parts = [f"one of {e['ctx']['expected']}" if e["type"] == "literal_error"
             else e["msg"].removeprefix("Value error, ").removeprefix("Input should be ") for e in members]
    return f"{_dotted(loc[:-1])}: should be {', or '.join(parts)} (got {errors[0]['input']!r})", len(members)


def _describe_error(model: type[BaseModel], error: dict[str, Any]) -> str:
    """One line for a pydantic error of ``model``: the dotted key and what is allowed."""
    loc = tuple(error["loc"])
    key = _dotted(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        return f"{key}: unknown key; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "literal_error":
        return f"{key}: {error['input']!r} is not allowed; allowed: {error['ctx']['expected']}"
    msg = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across keys names its keys itself
        return msg
    if kind.endswith(("_type", "_parsing")) or kind.startswith(("greater", "less", "too_short")):
        return f"{key}: {msg} (got {error['input']!r})"
    return f"{key}: {msg}"


Model = typing.TypeVar("Model", bound=BaseModel)


MAX_NESTING = 32


def _depth(value: Any, level: int = 0) -> int:
    """Nesting depth of parsed TOML (stops counting past MAX_NESTING)."""
    if level > MAX_NESTING or not isinstance(value, (dict, list)):
        return level
    items = value.values() if isinstance(value, dict) else value
    return max((_depth(v, level + 1) for v in items), default=level + 1)


def read_toml(text: str, source: str, version: int, kind: str = "") -> dict[str, Any]:
    """Parse TOML text and check its ``format`` version; ProtocolError naming ``source``.
    ``kind`` names the file's kind in the message (e.g. "sweep")."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{source}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ProtocolError(f"{source}: arrays or tables nested too deeply (at most "
                            f"{MAX_NESTING} levels)") from None
    if _depth(data) > MAX_NESTING:
        raise ProtocolError(f"{source}: arrays or tables nested too deeply (at most {MAX_NESTING} levels)")
    found = data.get("format")
    if found is None:
        raise ProtocolError(f"{source}: format: required key is missing; this clln reads "
                            f"{kind + ' ' if kind else ''}format {version}")
    if type(found) is not int or found != version:
        raise ProtocolError(
            f"{source}: format: version {found!r} is not supported; allowed: {version}"
            + (" (upgrade clln)" if isinstance(found, int) and found > version else "")
        )
    return data


def validate(model: type[Model], data: dict[str, Any], source: str) -> Model:
    """Validate parsed file data; the first error as one line naming the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        union = _describe_union(errors)
        line, covered = union if union is not None else (_describe_error(model, errors[0]), 1)
        more = f" (and {len(errors) - covered} more)" if len(errors) > covered else ""
        raise ProtocolError(f"{source}: {line}{more}") from None


def read_file(path: str | Path, what: str) -> str:
    """A user file's text; ProtocolError (one line) when it is missing, not a regular
    file, too large, not UTF-8 or unreadable (clln.controller.files)."""
    return read_user_text(path, what)


def parse_protocol(text: str, source: str = "<protocol>") -> Protocol:
    """Validate protocol TOML text; raise ProtocolError naming ``source`` and the key."""
    return validate(Protocol, read_toml(text, source, FORMAT_VERSION), source)


def load_protocol(path: str | Path) -> tuple[Protocol, str]:
    """Read and validate a protocol file; returns (protocol, its text)."""
    text = read_file(path, "protocol")
    return parse_protocol(text, str(path)), text
