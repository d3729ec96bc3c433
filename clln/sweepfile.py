"""Sweep files: TOML, versioned, strictly validated like protocols.

A sweep file names a protocol, the seeds, and the values of dotted protocol keys
(``training.eta``) as a grid (every combination) or a list of points; validating it
validates every run's effective protocol. :mod:`clln.sweep` runs it.
"""

from __future__ import annotations

import copy
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from clln.controller.errors import ProtocolError
from clln.tomlfile import StrictModel, read_file, read_toml, validate

FORMAT_VERSION = 1

RESULT_COLUMNS = ("final_test_error", "final_train_error", "initial_test_error",
                  "final_test_accuracy", "wall_time_s")
_RESERVED = {"format": "this clln reads one protocol format",
             "seed": "give seeds in the sweep's 'seeds' list"}


class PlotSpec(StrictModel):
    """``[plot]``: the summary plot, y against x with one line per other setting."""

    x: Annotated[str, Field(strict=True)] | None = None
    y: Literal[RESULT_COLUMNS] = "final_test_error"  # type: ignore[valid-type]
    log_x: Annotated[bool, Field(strict=True)] | None = None
    log_y: Annotated[bool, Field(strict=True)] = True


class SweepSpec(StrictModel):
    """A whole sweep file."""

    format: Annotated[int, Field(strict=True)]
    name: Annotated[str, Field(strict=True, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: Annotated[str, Field(strict=True)] = ""
    protocol: Annotated[str, Field(strict=True)]
    seeds: Annotated[list[Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)]], Field(min_length=1)] | None = None
    set: dict[str, Any] = {}
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] | None = None
    points: Annotated[list[dict[str, Any]], Field(min_length=1)] | None = None
    plot: PlotSpec = PlotSpec()

    @model_validator(mode="after")
    def _grid_or_points(self) -> SweepSpec:
        if (self.grid is None) == (self.points is None):
            raise ValueError("give exactly one of [grid] (every combination) or [[points]] (a list)")
        return self


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its index, parameters and seed; its effective protocol text
    is written when asked for (validation does not need it)."""

    index: int
    parameters: dict[str, Any]
    seed: int
    _base: tuple[str, str, dict[str, Any], dict[str, Any]]  # sweep name, protocol path, base data, set

    @property
    def protocol_text(self) -> str:
        import tomli_w

        name, protocol_path, base_data, fixed = self._base
        effective = copy.deepcopy(base_data)
        for key, value in {**fixed, **self.parameters}.items():
            _set_dotted(effective, key, value)
        effective["seed"] = self.seed
        shown = ", ".join(f"{k} = {v!r}" for k, v in self.parameters.items()) or "no parameters"
        header = (f"# sweep {name!r} run {self.index + 1}: {shown}, seed {self.seed}\n"
                  f"# from {protocol_path}\n")
        return header + tomli_w.dumps(effective)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the file, its spec, the protocol and every run."""

    path: Path
    spec: SweepSpec
    protocol_path: Path
    keys: tuple[str, ...]
    runs: tuple[RunSpec, ...]

    @property
    def plot_x(self) -> str | None:
        return self.spec.plot.x or (self.keys[0] if self.keys else None)


# -- loading and validation ------------------------------------------------------------


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables to dotted keys: ``training.eta = 1`` and ``"training.eta" = 1``
    are the same key."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _protocol_keys(model: type[BaseModel], prefix: str = "") -> dict[str, bool]:
    """Every dotted key of the protocol model -> whether it is a leaf (a value)."""
    keys: dict[str, bool] = {}
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys[dotted] = False
            keys.update(_protocol_keys(sub, dotted + "."))
        else:
            keys[dotted] = True
    return keys


def _check_key(key: str, where: str, source: str) -> None:
    from clln.protocol import Protocol

    known = _protocol_keys(Protocol)
    if key in _RESERVED:
        raise ProtocolError(f"{source}: {where}.{key}: cannot be swept ({_RESERVED[key]})")
    if known.get(key):
        return
    if key in known:
        leaves = sorted(k for k, leaf in known.items() if leaf and k.startswith(key + "."))
        raise ProtocolError(f"{source}: {where}.{key}: is a table; give one of its keys: "
                            f"{', '.join(leaves)}")
    parent = key.rpartition(".")[0]
    siblings = sorted(k for k, leaf in known.items()
                      if leaf and k.rpartition(".")[0] == parent and k not in _RESERVED)
    raise ProtocolError(f"{source}: {where}.{key}: unknown protocol key; allowed: "
                        f"{', '.join(siblings)}")


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def _replace_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in ``data``, copying (not changing) every nested table on its path."""
    parts = key.split(".")
    for part in parts[:-1]:
        inner = data.get(part)
        data[part] = dict(inner) if isinstance(inner, dict) else {}
        data = data[part]
    data[parts[-1]] = value


def parse_sweep(text: str, path: Path) -> Sweep:
    """Validate sweep TOML text read from ``path``; raise ProtocolError naming the file,
    the key and what is allowed. Every run's protocol is validated too, in time linear
    in the number of points: each protocol table is validated once per distinct setting
    of its swept keys (checks never span tables), seeds once."""
    from clln.protocol import Protocol, load_protocol

    source = str(path)
    data = read_toml(text, source, FORMAT_VERSION, "sweep")
    for table in ("set", "grid"):
        if isinstance(data.get(table), dict):
            data[table] = _flatten(data[table])
    if isinstance(data.get("points"), list):
        data["points"] = [_flatten(p) if isinstance(p, dict) else p for p in data["points"]]
    spec = validate(SweepSpec, data, source)

    protocol_path = Path(spec.protocol)
    if not protocol_path.is_absolute():
        protocol_path = path.parent / protocol_path
    if not protocol_path.is_file():
        raise ProtocolError(f"{source}: protocol: no such protocol file {str(protocol_path)!r}")
    base, base_text = load_protocol(protocol_path)
    base_data = tomllib.loads(base_text)

    for key in spec.set:
        _check_key(key, "set", source)
    if spec.grid is not None:
        keys = tuple(spec.grid)
        for key in keys:
            _check_key(key, "grid", source)
        points = [dict(zip(keys, combo)) for combo in itertools.product(*spec.grid.values())]
    else:
        assert spec.points is not None
        keys = tuple(dict.fromkeys(k for p in spec.points for k in p))
        for i, point in enumerate(spec.points):
            for key in point:
                _check_key(key, f"points[{i}]", source)
        points = [dict(p) for p in spec.points]
    overlap = sorted(set(keys) & set(spec.set))
    if overlap:
        raise ProtocolError(f"{source}: set.{overlap[0]}: is also swept; give it in one place")
    if spec.plot.x is not None and spec.plot.x not in keys:
        raise ProtocolError(f"{source}: plot.x: {spec.plot.x!r} is not swept; allowed: "
                            f"{', '.join(keys) or '(none)'}")

    seeds = spec.seeds or [base.seed]
    shared = (spec.name, str(protocol_path), base_data, dict(spec.set))
    checked: set[tuple[Any, ...]] = set()
    runs: list[RunSpec] = []
    for point in points:
        tables: dict[str, dict[str, Any]] = {}
        for key, value in {**spec.set, **point}.items():
            tables.setdefault(key.split(".")[0], {})[key] = value
        for table, values in tables.items():
            memo: tuple[Any, ...] = (table, *values.items())
            try:
                if memo in checked:
                    continue
            except TypeError:  # a list value: compare by its text
                memo = (table, repr(sorted(values.items())))
                if memo in checked:
                    continue
            effective = dict(base_data)  # copies only the dicts on the swept keys' paths
            for key, value in values.items():
                _replace_dotted(effective, key, value)
            model = Protocol.model_fields[table].annotation
            try:  # the table's own model is enough (and fast) when it is valid
                if not (isinstance(model, type) and issubclass(model, BaseModel)):
                    raise ValueError
                model.model_validate(effective[table])
            except (ValueError, TypeError):  # the whole protocol names the key and values
                shown = ", ".join(f"{k} = {v!r}" for k, v in point.items()) or "no parameters"
                validate(Protocol, effective, f"{source} ({shown})")
            checked.add(memo)
        for seed in seeds:
            runs.append(RunSpec(len(runs), point, seed, shared))
    return Sweep(path, spec, protocol_path, keys, tuple(runs))


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file."""
    return parse_sweep(read_file(path, "sweep"), Path(path))
