"""Layer rules of docs/design.md ("Layers"), checked on the source: controller <- simulator | drivers
<- analysis <- clln. The controller never imports a backend; the simulator and the
drivers never import each other; nothing imports a bare top-level folder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"controller": "clln.controller", "simulator": "clln.simulator",
           "drivers": "clln.drivers", "analysis": "clln.analysis", "clln": "clln"}
# package -> project packages it may import (besides itself)
ALLOWED = {
    "clln.controller": set(),
    "clln.simulator": {"clln.controller"},
    "clln.drivers": {"clln.controller"},
    # analysis may use the simulator's physics (linear, nonlinear, devices, and the in-place
    # transistor pair that seed 002's limit-cycle analysis drives), never a backend or driver
    "clln.analysis": {"clln.controller", "clln.simulator.physics", "clln.simulator.nonlinear",
                      "clln.simulator.devices", "clln.simulator.insitu_transistor"},
    "clln": {"clln.controller", "clln.simulator", "clln.drivers", "clln.analysis"},
}
BARE = {"controller", "simulator", "drivers", "analysis"}


def project_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "." * node.level + (node.module or "")))
            elif node.module:
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def owner(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "clln" and f"clln.{parts[1]}" in ALLOWED:
        return f"clln.{parts[1]}"
    return "clln"


def violations() -> list[str]:
    bad = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, module in project_imports(path):
                where = f"{path.relative_to(ROOT)}:{line}: imports {module}"
                head = module.split(".")[0]
                if module.startswith("."):
                    bad.append(f"{where} (relative import; use the clln namespace)")
                elif head in BARE:
                    bad.append(f"{where} (bare top-level import; use clln.{head})")
                elif head == "clln" and module.count(".") >= 1:
                    target = owner(module)
                    if target == package:
                        continue
                    allowed = ALLOWED[package]
                    if not any(module == a or module.startswith(a + ".") for a in allowed):
                        bad.append(f"{where} ({package} may import only {sorted(allowed) or 'itself'})")
    return bad


def test_layer_rules_hold() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("package", "module", "ok"),
    [
        ("clln.controller", "clln.simulator.backend", False),
        ("clln.simulator", "clln.drivers.potbank", False),
        ("clln.drivers", "clln.simulator.physics", False),
        ("clln.analysis", "clln.simulator.physics", True),
        ("clln.analysis", "clln.simulator.backend", False),
        ("clln.simulator", "clln.controller.network", True),
    ],
)
def test_checker_catches_forbidden_imports(tmp_path: Path, package: str, module: str,
                                           ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = next(f for f, p in FOLDERS.items() if p == package)
    fake_root = tmp_path
    for f in FOLDERS:
        (fake_root / f).mkdir()
    (fake_root / folder / "mod.py").write_text(f"import {module}\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", fake_root)
    assert (violations() == []) == ok
