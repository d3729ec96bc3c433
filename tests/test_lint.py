"""The code base stays clean under the project's ruff rules (pyproject.toml [tool.ruff])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    try:
        import ruff  # noqa: F401
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "clln", "controller", "simulator", "drivers",
         "analysis", "tests", "benchmarks", "--output-format", "concise"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
