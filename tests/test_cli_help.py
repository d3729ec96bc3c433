"""The command line as a new user meets it: --version, -h, --debug anywhere, readable help,
and the runs listing's filters."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from clln.controller.store import RunStore
from tests.conftest import ROOT


def clln(*args: object) -> subprocess.CompletedProcess:
    """``clln ARGS`` in this process (its entry point, exit code and both streams)."""
    import contextlib
    import io
    from unittest import mock

    from clln import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["clln", *map(str, args)]), \
            mock.patch.dict(cli._state, {"debug": False}), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        except Exception:  # --debug lets unexpected errors through, as a traceback
            import traceback

            traceback.print_exc(file=err)
            code = 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_version_matches_the_package_metadata() -> None:
    res = clln("--version")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert res.returncode == 0 and res.stdout.strip() == f"clln {declared}"


@pytest.mark.parametrize("args", [("-h",), ("train", "-h"), ("runs", "-h"), ("watch", "-h")])
def test_short_help_and_no_type_placeholders(args: tuple[str, ...]) -> None:
    res = clln(*args)
    assert res.returncode == 0 and res.stdout.startswith("Usage: clln")
    assert "<bool>" not in res.stdout
    assert "\x1b[" not in res.stdout


def test_choices_shown_as_choices() -> None:
    out = clln("runs", "-h").stdout
    assert "completed|running|interrupted|paused|failed" in out


def test_debug_accepted_after_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clln.commands import runs

    def broken(*args: object, **kwargs: object) -> None:  # an unexpected failure (a bug)
        raise ZeroDivisionError("an unexpected failure")

    monkeypatch.setattr(runs, "open_store", broken)
    plain = clln("runs", "--out", tmp_path)
    assert plain.returncode == 1 and "run with --debug" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = clln("runs", "--out", tmp_path, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "ZeroDivisionError" in debug.stderr


def _fake_run(store: RunStore, name: str, status: str, tags: list[str], sweep: dict | None,
              test_error: float | None) -> str:
    info = {"meta": {"tags": tags}, **({"sweep": sweep} if sweep else {})}
    run_id = store.create_run(name=name, protocol_text="", protocol_path=None, version="0", seed=0,
                              backend={"backend": "simulator", "preset": "ideal"}, info=info,
                              steps_planned=10, initial_state=np.zeros(2))
    if test_error is not None:
        store.record_test(run_id, 0, 1.0, None)
        store.record_test(run_id, 10, test_error, None)
    store.finish(run_id, status=status, final_state=None, final_taps=None, wall_time=1.0)
    return run_id


def test_runs_filters_and_columns(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        a = _fake_run(store, "alpha", "completed", ["good", "x"], None, 1.25e-7)
        b = _fake_run(store, "beta", "interrupted", ["x"], None, None)
        c = _fake_run(store, "alpha-sweep", "completed", [],
                      {"name": "eta", "index": 2, "seed": 5, "parameters": {"training.eta": 0.3}},
                      4.5e-3)
    def ids(*args: object) -> set[str]:
        res = clln("runs", "--out", tmp_path, *args)
        assert res.returncode == 0, res.stderr
        return {i for i in (a, b, c) if i in res.stdout}

    assert ids() == {a, b, c}
    assert ids("--status", "completed") == {a, c}
    assert ids("--status", "interrupted", "--status", "completed") == {a, b, c}
    assert ids("--name", "alpha") == {a, c}
    assert ids("--tag", "x") == {a, b} and ids("--tag", "x", "--tag", "good") == {a}
    assert ids("--sweep", "eta") == {c}
    assert ids("--since", "2000-01-01") == {a, b, c} and ids("--since", "2999-01-01") == set()
    listing = clln("runs", "--out", tmp_path).stdout
    assert "1.25e-07" in listing and "4.5e-03" in listing.replace("0.0045", "4.5e-03")
    assert "eta #3 (seed 5, eta=0.3)" in listing and "simulator (ideal)" in listing
    bad = clln("runs", "--out", tmp_path, "--since", "last tuesday")
    assert bad.returncode == 2 and "--since" in bad.stderr and "YYYY-MM-DD" in bad.stderr
