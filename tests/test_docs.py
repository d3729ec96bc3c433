"""The documentation site builds with ``mkdocs build --strict``, and its protocol
reference lists every key the protocol models accept."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clln.protocol import Protocol
from clln.reference import protocol_reference
from tests.conftest import ROOT


def schema_keys(schema: dict[str, Any], node: dict[str, Any] | None = None,
                prefix: str = "") -> set[str]:
    """Dotted keys from pydantic's JSON schema (walked independently of the generator)."""
    defs = schema.get("$defs", {})
    node = schema if node is None else node
    keys: set[str] = set()
    for name, prop in node.get("properties", {}).items():
        key = prefix + name
        keys.add(key)
        for option in [prop, *prop.get("anyOf", []), *prop.get("allOf", [])]:
            ref = option.get("$ref")
            if ref:
                keys |= schema_keys(schema, defs[ref.split("/")[-1]], key + ".")
    return keys


def test_protocol_reference_lists_every_model_key() -> None:
    listed = set(re.findall(r"^\| `([^`]+)` \|", protocol_reference(), re.M))
    expected = schema_keys(Protocol.model_json_schema())
    assert listed == expected
    assert {"training.scheme.overclamp.margin", "simulator.parameters.ai_noise_rms",
            "meta.operator", "meta.tags"} <= listed


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict",
                          "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    page = (site / "protocol-reference" / "index.html").read_text()
    for key in ("training.eta", "meta.operator", "simulator.parameters.ai_noise_rms"):
        assert f"<code>{key}</code>" in page
    api = (site / "api" / "index.html").read_text()
    assert "load_run" in api and "run store at" in api  # docstrings rendered
    assert (site / "watch-1.png").exists() and (site / "watch-2.png").exists()
