"""``clln --help`` starts without the numerics: the commands import what they need
inside the command, so asking for help loads neither scipy nor the simulator.

One fresh interpreter asks for the help of the application and of every command in
turn, and after each lists the heavy modules loaded so far."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a subprocess

HEAVY = ("scipy", "clln.simulator", "clln.controller", "clln.compose", "clln.protocol",
         "matplotlib", "dask")

PROBE = """
import contextlib, io, json, sys
from clln.cli import app, main
heavy = {heavy!r}
found = {{}}
for argv in {argvs!r}:
    sys.argv = ["clln", *argv, "--help"]
    with contextlib.redirect_stdout(io.StringIO()) as shown:
        try:
            main()
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "Usage: clln" in shown.getvalue(), (argv, shown.getvalue())
    found[" ".join(argv) or "(none)"] = sorted(
        name for name in sys.modules if any(name == h or name.startswith(h + ".") for h in heavy))
print(json.dumps(found))
"""

COMMANDS = ["train", "resume", "check", "calibrate", "runs", "show", "report", "export", "analyze",
            "sweep", "watch", "control"]


def test_help_loads_no_numerics() -> None:
    argvs = [[]] + [[c] for c in COMMANDS]
    probe = PROBE.format(heavy=HEAVY, argvs=argvs)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(found) == ["(none)", *COMMANDS]
    assert {argv: mods for argv, mods in found.items() if mods} == {}


def test_the_probe_sees_a_heavy_import() -> None:
    """The check above can fail: importing the protocol module does load scipy."""
    done = subprocess.run([sys.executable, "-c", "import sys, clln.protocol; "
                           "print('scipy' in sys.modules)"], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "True", done.stderr
