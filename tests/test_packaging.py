"""A plain (non-editable) install puts every layer under the clln namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_provides_namespaced_packages(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        check=True, cwd=tmp_path, capture_output=True,
    )
    code = (
        "import clln, clln.controller, clln.simulator, clln.drivers, clln.analysis, clln.cli;"
        "print(clln.controller.__file__); print(clln.simulator.__file__)"
    )
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                         check=True, cwd=tmp_path, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(target / "clln") for p in out), out
    assert (target / "clln" / "py.typed").exists()
    assert not (target / "controller").exists()  # never a bare top-level package
