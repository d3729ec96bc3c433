"""The TOML files clln reads (protocols, benches, sweeps): the strict base model, strict
scalars, the ``format`` check, and validation errors as one line naming the file, the key
and what is allowed."""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from clln.controller.errors import ProtocolError
from clln.controller.files import read_user_text

# Strict scalars: a boolean or a string is never silently turned into a number.
Float = Annotated[float, Field(strict=True)]
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
Positive = Annotated[float, Field(gt=0, strict=True)]
NonNegative = Annotated[float, Field(ge=0, strict=True)]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]


class StrictModel(BaseModel):
    """A table of a file: unknown keys are errors, values are frozen and finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


def _describe_union(errors: list[ErrorDetails]) -> tuple[str, int] | None:
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


def _describe_error(model: type[BaseModel], error: ErrorDetails) -> str:
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
