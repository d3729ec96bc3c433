"""Generators of malformed protocol and bench files (shared by tests and benchmarks)."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = tomllib.loads((ROOT / "protocols" / "demo.toml").read_text())
BENCH = tomllib.loads((ROOT / "protocols" / "benches" / "example-16.toml").read_text())

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-5, 200), max_size=4),
    st.dictionaries(st.text(min_size=1, max_size=6), st.integers(), max_size=2),
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a parsed TOML document (dict keys and list indices)."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append(prefix + (i,))
            out += paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> str:
    """A TOML text: ``base`` with one to three random edits (drop, retype, add a key), or
    raw garbage."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=200))
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        candidates = paths(doc)
        if not candidates:
            break
        where = draw(st.sampled_from(candidates))
        parent = doc
        for part in where[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["drop", "retype", "add"]))
        key = where[-1]
        if action == "drop" and isinstance(parent, dict):
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(scalars)
        else:
            parent[key] = draw(scalars)
    try:
        return tomli_w.dumps(_toml_safe(doc))
    except (TypeError, ValueError):
        return draw(st.text(max_size=50))


def _toml_safe(value: Any) -> Any:
    """TOML has no null: drop Nones (a missing key is a malformation too)."""
    if isinstance(value, dict):
        return {k: _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_toml_safe(v) for v in value if v is not None]
    return value
