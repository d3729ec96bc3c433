"""Type-check the clln package with mypy (the settings are ``[tool.mypy]`` in pyproject.toml).

The source tree is not laid out as the package is installed: ``clln.controller`` is the
folder ``controller/`` (pyproject's ``package-dir``), which mypy cannot follow through
the editable install's import hook. This script lays the package out once more with
symbolic links (in ``.mypy_cache/layout/``, next to mypy's cache), runs mypy on it, and
prints every message with the path of the real file.

Usage: python tools/typecheck.py [extra mypy options]; exit code 0 when clean.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"clln": "clln", "clln/controller": "controller", "clln/simulator": "simulator",
            "clln/drivers": "drivers", "clln/analysis": "analysis"}


def layout(where: Path) -> Path:
    """The installed layout of the package under ``where`` (symbolic links to the source),
    rebuilt so that added and removed modules are seen."""
    top = where / "clln"
    if top.exists():
        shutil.rmtree(top)  # removes the links, never what they point to
    top.mkdir(parents=True)
    for entry in (ROOT / "clln").iterdir():
        if entry.name.endswith(".py") or (entry.is_dir() and (entry / "__init__.py").exists()):
            (top / entry.name).symlink_to(entry)
    if (ROOT / "clln" / "py.typed").exists():
        (top / "py.typed").symlink_to(ROOT / "clln" / "py.typed")
    for inside, folder in PACKAGES.items():
        if inside != "clln":
            (where / inside).symlink_to(ROOT / folder, target_is_directory=True)
    return where


def real_path(line: str) -> str:
    """A mypy message with the laid-out path replaced by the source file's."""
    def swap(match: re.Match[str]) -> str:
        path = match.group(0)
        for inside, folder in sorted(PACKAGES.items(), key=lambda kv: -len(kv[0])):
            if path.startswith(inside + "/"):
                return folder + path[len(inside):]
        return path
    return re.sub(r"^clln/[\w/]+\.py", swap, line)


def run(*extra: str) -> tuple[int, list[str]]:
    """Run mypy on the package; (exit code, its output lines with real paths)."""
    cache = ROOT / ".mypy_cache"
    where = layout(cache / "layout")
    env = {**os.environ, "MYPYPATH": str(where)}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(cache), *extra],
        cwd=where, env=env, capture_output=True, text=True)
    lines = [real_path(line) for line in (done.stdout + done.stderr).splitlines()]
    return done.returncode, lines


def main() -> None:
    code, lines = run(*sys.argv[1:])
    print("\n".join(lines))
    sys.exit(code)


if __name__ == "__main__":
    main()
