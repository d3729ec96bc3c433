"""mypy (default mode, ``[tool.mypy]`` in pyproject.toml) finds no error in the package.

``tools/typecheck.py`` lays the package out as installed (``clln.controller`` is the
folder ``controller/``) and runs mypy on it; the first run takes about a minute, later
ones reuse ``.mypy_cache``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a cold mypy run takes about a minute


def _typecheck():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("typecheck", ROOT / "tools" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mypy_finds_no_error() -> None:
    code, lines = _typecheck().run()
    errors = [line for line in lines if ": error:" in line]
    assert errors == [], "\n".join(errors)
    assert code == 0, "\n".join(lines)


def test_the_paths_are_the_source_files(tmp_path: Path) -> None:
    """An error is reported at the file to edit (controller/x.py, not clln/controller/x.py)."""
    typecheck = _typecheck()
    assert typecheck.real_path("clln/controller/rules.py:3: error: x") == "controller/rules.py:3: error: x"
    assert typecheck.real_path("clln/commands/runs.py:1: note: y") == "clln/commands/runs.py:1: note: y"
    where = typecheck.layout(tmp_path)
    assert (where / "clln" / "controller" / "rules.py").resolve() == ROOT / "controller" / "rules.py"
    assert (where / "clln" / "cli.py").resolve() == ROOT / "clln" / "cli.py"
