"""Finite everywhere: no NaN or infinity reaches an AO write or a tap command, values
that pass validation keep the physics finite, and a diverging run fails with one line
and strict JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest.mock import create_autospec

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clln.controller.backend import SteppedEdges
from clln.controller.errors import UserError
from clln.controller.network import NodeRoles, square_lattice
from clln.drivers.daq import NidaqmxDaq
from clln.drivers.hardware import HardwareBackend, Limits, check_limits
from clln.drivers.potbank import FirmwareInfo, FirmwareStatus, PotBank

ROOT = Path(__file__).resolve().parents[1]
TAPS = 129


def bench() -> tuple[HardwareBackend, object, object]:
    """A 3x3 bench whose DAQ and pot controller are autospecs of the real driver classes."""
    net = square_lattice(3, 3).with_roles(NodeRoles((0, 2), (8,), (4,)))
    daq = create_autospec(NidaqmxDaq, instance=True)
    daq.acquire.side_effect = lambda ao, clamps_engaged: (np.zeros((len(ao), 9)), np.zeros(len(ao)))
    pots = create_autospec(PotBank, instance=True)
    pots.connect.return_value = FirmwareInfo((1, 0), net.n_edges, TAPS, 64, 2000, "pots")
    pots.get_all.return_value = np.full(net.n_edges, 64, dtype=np.int64)
    pots.boot = None  # no BOOT packet: the port was opened without a reset
    pots.status.return_value = FirmwareStatus(parked=False, watchdog_tripped=False, handshake=True,
                                              crc_errors=0, frames_ok=0, uptime_ms=0)
    table = np.tile(1.0 / (1075.0 + np.arange(TAPS) * 10_000.0 / (TAPS - 1)), (net.n_edges, 1))
    hw = HardwareBackend(net, daq, pots, SteppedEdges(table), chain=np.arange(net.n_edges),
                         ai_of_node=np.arange(9), limits=Limits(10.0, 0.02))
    hw.connect()
    return hw, daq, pots


values = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=150, deadline=None)
@given(st.lists(values, min_size=3, max_size=3), st.lists(values, min_size=12, max_size=12))
def test_no_nan_or_inf_reaches_an_ao_write_or_a_tap_command(volts: list[float], moves: list[float]) -> None:
    hw, daq, pots = bench()
    pots.set_all.reset_mock()
    try:
        hw.measure(np.array([volts[:2]]), np.array([volts[2:]]))
    except UserError:
        pass
    try:
        hw.adjust(np.array(moves))
    except UserError:
        pass
    for call in daq.acquire.call_args_list:
        assert np.all(np.isfinite(call.args[0]))
    for call in pots.set_all.call_args_list:
        taps = np.asarray(call.args[0])
        assert taps.dtype.kind == "i" and taps.min() >= 0 and taps.max() < TAPS


def test_check_limits_rejects_nan_and_inf() -> None:
    table = np.full((2, 3), 1e-3)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(UserError, match="not finite"):
            check_limits(np.array([[0.1, bad]]), table, Limits(10.0, 1.0))


def clln(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clln.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("old,new,key", [
    ("eta = 0.1 ", "eta = 5e-324 ", "training.eta"),
    ("eta = 0.1 ", "eta = 1e300 ", "training.eta"),
    ("gmax = 1e-2 ", "gmax = 1e300 ", "edges.gmax"),
    ("input_range = [0.0, 1.0]", "input_range = [0.0, 1e300]", "task.input_range"),
    ("preset = \"ideal\"", "preset = \"ideal\"\nparameters = { ai_noise_rms = 1e300 }",
     "simulator.parameters.ai_noise_rms"),
])
def test_values_that_overflow_the_physics_are_refused(tmp_path: Path, old: str, new: str, key: str) -> None:
    text = (ROOT / "protocols" / "demo.toml").read_text()
    assert old in text
    (tmp_path / "p.toml").write_text(text.replace(old, new))
    out = clln("train", "p.toml", "--steps", "2", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f": {key}" in out.stderr and "must be within" in out.stderr
    assert out.stderr.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_a_diverging_run_fails_with_one_line_and_strict_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A learning signal that turns NaN at step 3 (as an overflowing bench would give):
    the run stops as failed at that step, nothing non-finite is sent, stored or printed."""
    from clln import cli
    from clln.controller import trainer

    real = trainer.contrastive_signal
    calls = {"n": 0}

    def poisoned(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        signal = real(*args, **kwargs)
        return signal * np.nan if calls["n"] >= 3 else signal

    monkeypatch.setattr(trainer, "contrastive_signal", poisoned)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["clln", *args])
        with pytest.raises(SystemExit) as done:
            cli.main()
        return int(done.value.code or 0)

    assert run("train", str(ROOT / "protocols" / "demo.toml"), "--steps", "10") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged at step 3: the learning signal of edge 0 is nan")
    assert err.count("\n") == 1 and "marked failed" in err
    assert run("show", "latest", "--json") == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"bare {name} in show --json")

    summary = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert summary["status"] == "failed" and summary["message"].startswith("training diverged at step 3")
    assert summary["steps"] == 2 and all(np.isfinite(summary["final_conductances"]))
