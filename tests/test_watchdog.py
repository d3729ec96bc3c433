"""The controller's watchdog on a running bench: the host keeps it fed while it computes,
a silent host makes the run pause before anything is measured on the parked network, a
paused run resumes, and emulated runs reproduce; serial set-up errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clln.benchfile import parse_bench
from clln.benchrun import bench_experiment
from clln.compose import run_training
from clln.controller import Trainer
from clln.controller.store import RunStore
from clln.drivers.errors import FirmwareParked
from clln.protocol import parse_protocol
from clln.resume import bench_info

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "protocols" / "benches" / "example-16.toml"
DEMO = ROOT / "protocols" / "demo.toml"
REGRESSION = ROOT / "protocols" / "bench-regression-2x2.toml"
WATCHDOG_S = 1.0  # shortened from 2000 ms; the keep-alive pings after 250 ms idle


def bench_text(watchdog_ms: int = int(WATCHDOG_S * 1000)) -> str:
    text = BENCH.read_text()
    assert "watchdog_ms = 2000" in text
    return text.replace("watchdog_ms = 2000", f"watchdog_ms = {watchdog_ms}")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "clln.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def emulated(protocol: Path, steps: int, text: str, bench_path: str = "bench.toml"):
    proto = parse_protocol(protocol.read_text(), str(protocol))
    return bench_experiment(proto, parse_bench(text, bench_path), text, source=str(protocol),
                            bench_source=bench_path, target="emulate", steps=steps)


def trajectory(protocol: Path, steps: int, text: str, busy: dict[int, float] | None = None):
    """Taps after every step; the host's main thread sleeps ``busy[step]`` s after a step."""
    exp, session = emulated(protocol, steps, text)
    taps: list[np.ndarray] = []

    def record(rec: object) -> None:
        taps.append(exp.backend.read_edges().taps)
        time.sleep((busy or {}).get(rec.step, 0.0))

    try:
        Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run([record])
    finally:
        session.close()
    return np.array(taps), session.emulator


def test_a_silent_host_pauses_the_run_before_measuring_a_parked_network(tmp_path: Path) -> None:
    """The whole host (keep-alive included) silent for 1.5x the watchdog after step 20: the
    controller parks, the run pauses at the next status read with 0 measurements taken on
    the parked network (counted in the emulated DAQ's log), and `clln resume` finishes it."""
    text = bench_text()
    bench_path = tmp_path / "bench.toml"
    bench_path.write_text(text)
    exp, session = emulated(DEMO, 60, text, str(bench_path))
    store = RunStore(tmp_path / "runs")
    backend = exp.backend

    def stall(rec: object) -> None:
        if rec.step == 20:
            with backend.potbank.lock:  # nothing reaches the controller meanwhile
                time.sleep(1.5 * WATCHDOG_S)

    try:
        with pytest.raises(FirmwareParked, match="watchdog tripped"):
            run_training(exp, store, protocol_text=DEMO.read_text(), protocol_path=str(DEMO),
                         callbacks=[stall], extra_info=bench_info(bench_path, text, "emulate"))
        emulator = session.emulator
        assert emulator.firmware.parked  # the watchdog did trip
        measured = [e for e in emulator.log.of("ao") if e["samples"] > 0]
        assert len(measured) > 40 and emulator.daq.parked_acquisitions == 0
        assert sum(e["parked"] for e in measured) == 0
        assert measured[-1]["t"] < emulator.log.of("ao")[-1]["t"]  # then the outputs went to 0 V
        assert emulator.log.of("ao")[-1]["levels"] == [0.0] * 4
        rec = store.run("latest")
        assert rec["status"] == "paused" and rec["steps_done"] == 20
        assert "watchdog tripped" in rec["message"] and "nothing was measured" in rec["message"]
    finally:
        session.close()
    store.close()
    result = cli("resume", rec["id"], "--out", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    done = RunStore(tmp_path / "runs").run(rec["id"])
    assert done["status"] == "completed" and done["steps_done"] == 60


@pytest.mark.parametrize(("cause", "says"), [("external", "restarted mid-run (external reset)"),
                                             ("brown-out", "restarted mid-run (brown-out) and parked")])
def test_a_controller_reset_mid_run_pauses_it(tmp_path: Path, cause: str, says: str) -> None:
    exp, session = emulated(DEMO, 40, BENCH.read_text())
    emulator = session.emulator

    def reset(rec: object) -> None:
        if rec.step == 12:
            emulator.link.reset(cause)
            time.sleep(0.2)  # the bootloader's delay, then BOOT

    store = RunStore(tmp_path)
    try:
        with pytest.raises(FirmwareParked) as err:
            run_training(exp, store, protocol_text=DEMO.read_text(), protocol_path=None, callbacks=[reset])
        assert says in str(err.value)
        rec = store.run("latest")
        assert rec["status"] == "paused" and rec["steps_done"] == 12
        assert emulator.daq.parked_acquisitions == 0
    finally:
        session.close()


def test_a_busy_host_keeps_the_watchdog_fed_and_the_run_reproduces() -> None:
    """The main thread busy for 1.5x the watchdog after two steps (a slow store, a long
    evaluation): the keep-alive pings, nothing parks, the taps are those of a run without
    stalls at every step."""
    text = bench_text()
    plain, _ = trajectory(DEMO, 30, text)
    busy, emulator = trajectory(DEMO, 30, text, {8: 1.5 * WATCHDOG_S, 19: 1.5 * WATCHDOG_S})
    assert np.array_equal(plain, busy)
    assert emulator.daq.parked_acquisitions == 0 and not emulator.firmware.tripped
    assert emulator.firmware.resets == 1  # the DTR reset at open, and none since


def test_emulated_runs_of_one_protocol_and_seed_are_bit_identical() -> None:
    runs = [trajectory(REGRESSION, 150, BENCH.read_text())[0] for _ in range(3)]
    assert runs[0].shape == (150, 16)
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
    assert len({tuple(t) for t in runs[0]}) > 20  # the taps did move


def test_a_controller_that_never_answers_is_exit_2_with_hints(tmp_path: Path) -> None:
    master, slave = os.openpty()  # a tty with nothing behind it
    try:
        port = os.ttyname(slave)
        bench = tmp_path / "bench.toml"
        bench.write_text(BENCH.read_text().replace('"/dev/ttyACM0"', f'"{port}"').replace(
            "retries = 20", "retries = 2").replace("boot_timeout = 2.5", "boot_timeout = 0.3"))
        result = cli("check", str(bench))
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    for hint in (port, "did not answer", "115200 baud", "firmware is flashed", "reset_on_open"):
        assert hint in result.stderr


def test_a_serial_url_is_refused_without_side_effects(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    bench = tmp_path / "bench.toml"
    bench.write_text(BENCH.read_text().replace('"/dev/ttyACM0"', f'"spy://{victim}?file={victim}"'))
    result = cli("check", str(bench))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "serial.port: must be a device path" in result.stderr
    assert victim.read_text() == "precious"
