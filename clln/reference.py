"""The protocol reference, generated from the pydantic models that validate protocol
files (so the documentation cannot drift from what clln accepts)."""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class KeyDoc:
    """One key of a protocol file."""

    key: str
    kind: str
    default: str
    section: str


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _constraints(metadata: list[Any]) -> list[str]:
    out = []
    for m in metadata:
        inner = getattr(m, "metadata", None)
        if isinstance(inner, list):  # a pydantic FieldInfo: its constraints
            out.extend(_constraints(inner))
            continue
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(m, attr, None)
            if value is not None:
                out.append(f"{sym} {value}")
    return out


def describe(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A type as a reader of a TOML file sees it: number, integer, text, true/false,
    one of ..., [a, b], list of ..., with its bounds."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    extra = _constraints(metadata or [])
    if origin is typing.Annotated:
        return describe(args[0], [*args[1:], *(metadata or [])])
    if origin is Literal:
        text = "one of " + ", ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    elif origin in (typing.Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        if type(None) in args:
            text += " (optional)"
    elif origin is tuple:
        text = "[" + ", ".join(describe(a) for a in args) + "]"
    elif origin is list:
        text = f"list of {describe(args[0])}"
    elif annotation is bool:
        text = "true/false"
    elif annotation is int:
        text = "integer"
    elif annotation is float:
        text = "number"
    elif annotation is str:
        text = "text"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        text = "table"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    return f"{text} ({', '.join(extra)})" if extra else text


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is PydanticUndefined or isinstance(value, BaseModel):
        return "—"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def protocol_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[KeyDoc]:
    """Every key of a protocol file, as dotted names (``training.scheme.overclamp.eta``);
    a table (sub-model) is listed, then its keys."""
    if model is None:
        from clln.protocol import Protocol

        model = Protocol
    found: list[KeyDoc] = []
    section = prefix.rstrip(".") or "(top level)"
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)  # the key as written in the file
        models = _models_in(field.annotation)
        found.append(KeyDoc(key, describe(field.annotation, list(field.metadata)), _default(field),
                            section))
        for sub in models:
            found.extend(protocol_keys(sub, key + "."))
    return found


def protocol_reference() -> str:
    """The protocol reference as Markdown: one table per section, with the section's
    description from its model."""
    from clln.protocol import FORMAT_VERSION, Protocol

    lines = [f"Protocol files are TOML, format {FORMAT_VERSION}. Unknown keys are errors. This "
             "page is generated from the models that validate protocol files.", ""]
    sections: dict[str, list[KeyDoc]] = {}
    for doc in protocol_keys(Protocol):
        sections.setdefault(doc.section, []).append(doc)
    models: dict[str, type[BaseModel]] = {"(top level)": Protocol}

    def collect(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = prefix + (field.alias or name)
            for sub in _models_in(field.annotation):
                models[key] = sub
                collect(sub, key + ".")

    collect(Protocol, "")
    for section, docs in sections.items():
        title = "Top level" if section == "(top level)" else f"[{section}]"
        lines += [f"## {title}", ""]
        text = inspect.getdoc(models[section]) or ""
        if text:
            lines += [text.replace("``", "`"), ""]
        lines += ["| key | type | default |", "| --- | --- | --- |"]
        for d in docs:
            kind = d.kind.replace("|", "\\|")
            lines.append(f"| `{d.key}` | {kind} | `{d.default}` |")
        lines.append("")
    return "\n".join(lines)
