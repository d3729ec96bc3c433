"""The compiled firmware (drivers/firmware/potbank, built for the Mega 2560) under simavr,
with MCP4131 models on its chip-select pins, driven by the project's serial driver."""

from __future__ import annotations

import re
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tool

from clln.benchrun import emulated_trajectory
from clln.drivers.boards import BOARDS
from clln.drivers.errors import FirmwareError
from clln.drivers.potbank import PotBank, open_port
from clln.drivers.wire import FrameReader, Packet
from clln.simulator import avr

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

BOOT_REPLY = 0x89
PARK_TAP = 128  # MCP4131 full scale 0x080: W = A, the highest W-B resistance


@pytest.fixture(scope="session")
def avr_build(tmp_path_factory: pytest.TempPathFactory) -> avr.Build:
    require_tool("make", "avr-gcc", "avr-size", "cc", "simavr")
    missing = avr.missing_tools()
    if missing:
        require_tool(*missing)
    return avr.build(tmp_path_factory.mktemp("avr"))


@pytest.fixture
def sim(avr_build: avr.Build) -> Iterator[avr.SimavrPotBank]:
    bank = avr.SimavrPotBank(avr_build)
    try:
        yield bank
    finally:
        bank.close()


@pytest.fixture
def bank(sim: avr.SimavrPotBank) -> Iterator[PotBank]:
    port = open_port(sim.path)
    try:
        yield PotBank(port, reply_timeout=0.2)
    finally:
        port.close()


def boot_packets(port, seconds: float) -> list[Packet]:  # noqa: ANN001
    """Unsolicited BOOT packets read from the port for ``seconds``."""
    reader = FrameReader()
    found: list[Packet] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not found:
        data = port.read(64)
        found += [p for p in reader.feed(data) if p.cmd == BOOT_REPLY]
    return found


def boot_fields(packet: Packet) -> dict[str, int]:
    assert packet.seq == 0 and len(packet.payload) == 5
    status, cause, major, minor, parked = struct.unpack("<5B", packet.payload)
    return {"status": status, "cause": cause, "version": (major, minor), "parked": parked}


def flash_and_ram(build: avr.Build) -> tuple[int, int]:
    flash, ram = re.search(r"flash (\d+) bytes, static RAM (\d+)", build.size).groups()
    return int(flash), int(ram)


def test_firmware_builds_for_the_mega_2560_and_the_uno(avr_build: avr.Build, tmp_path: Path) -> None:
    """-Wall -Werror builds; the RAM model the bench-file check uses (drivers/boards.py)
    gives the static RAM avr-size reports."""
    flash, ram = flash_and_ram(avr_build)
    mega, uno_board = BOARDS["mega2560"], BOARDS["uno"]
    assert flash < 253952 and ram == mega.static_ram(16), avr_build.size  # 256 kB less the bootloader
    uno = avr.build(tmp_path, board="uno", n_pots=15)
    flash, ram = flash_and_ram(uno)
    assert flash < 32256 and ram == uno_board.static_ram(15), uno.size  # 32 kB less optiboot
    assert uno_board.max_pots() == 15 and mega.max_pots() == 44
    # one chip-select pin per pot: 16 pots do not fit an Uno, and the build says so
    with pytest.raises(avr.SimavrError, match="more pots than chip-select pins"):
        avr.build(tmp_path, board="uno", n_pots=16)


def test_handshake_and_verified_writes(sim: avr.SimavrPotBank, bank: PotBank) -> None:
    info = bank.connect()
    assert info.version == (1, 1) and info.n_pots == 16 and info.n_taps == 129
    assert info.park_tap == PARK_TAP and info.name == "clln potbank MCP4131 mega2560"
    sim.sync()
    assert np.array_equal(sim.taps, np.full(16, PARK_TAP))  # parked at power-on
    rng = np.random.default_rng(7)
    for _ in range(100):
        taps = rng.integers(0, 129, 16)
        bank.set_all(taps)  # the driver verifies it with GET_ALL (read from the parts)
        assert np.array_equal(bank.get_all(), taps)
        sim.sync()
        assert np.array_equal(sim.taps, taps)  # what the MCP4131 models hold
    bad = taps.copy()
    bad[5] = 129
    with pytest.raises(FirmwareError, match="OUT_OF_RANGE"):
        bank._exchange(0x02, struct.pack("<16H", *bad.tolist()))  # past the driver's own check
    sim.sync()
    assert np.array_equal(sim.taps, taps) and np.array_equal(bank.get_all(), taps)
    with pytest.raises(FirmwareError, match="UNKNOWN_COMMAND"):
        bank._exchange(0x09)  # BOOT is never a request
    status = bank.status()
    assert status.handshake and not status.parked and status.crc_errors == 0
    assert sim.slow_reads == 0  # every read-back within the part's 250 kHz


def test_read_back_faster_than_the_part_allows_fails(avr_build: avr.Build, tmp_path: Path) -> None:
    """The model holds the firmware to DS22060 Table 1-3: a firmware that reads over the
    shared SDI/SDO pin at 1 MHz gets its data a bit late, and SET_ALL reports it."""
    fast = avr.build(tmp_path, defines="-DPOTBANK_READ_HZ=1000000")
    sim = avr.SimavrPotBank(fast)
    port = open_port(sim.path)
    try:
        bank = PotBank(port, reply_timeout=0.2)
        bank.connect()
        with pytest.raises(FirmwareError, match="HARDWARE_FAULT"):
            bank._exchange(0x02, struct.pack("<16H", *range(16)))
        assert sim.slow_reads >= 16
    finally:
        port.close()
        sim.close()


def wait_parked(sim: avr.SimavrPotBank, timeout: float = 10.0) -> float:
    """Simulated time (ms since the last reset) at which every model reached the park
    tap, polled without a word to the firmware."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sim.sync()
        if np.array_equal(sim.taps, np.full(16, PARK_TAP)):
            return max(ms for pot, value, ms in sim.wiper_log[-16:])
        time.sleep(0.05)
    raise AssertionError(f"not parked: {sim.taps}")


def test_watchdog_park_is_seen_by_the_host(sim: avr.SimavrPotBank, bank: PotBank) -> None:
    bank.connect()
    bank.set_watchdog(300)
    taps = np.arange(16) * 8
    bank.set_all(taps)
    last_frame_ms = sim.wiper_log[-1][2]  # the GET_ALL that verified it came a little later
    parked_ms = wait_parked(sim)  # the host stays silent
    assert 300 < parked_ms - last_frame_ms < 300 + 100
    status = bank.status()
    assert status.parked and status.watchdog_tripped
    sim.sync()
    assert np.array_equal(sim.taps, np.full(16, PARK_TAP))
    assert np.array_equal(bank.get_all(), np.full(16, PARK_TAP))


def test_external_reset_keeps_the_taps_and_sends_boot(sim: avr.SimavrPotBank, bank: PotBank) -> None:
    bank.connect()
    taps = np.arange(16) * 3 + 40
    bank.set_all(taps)
    changes = len(sim.wiper_log)
    sim.reset("external")  # the USB adapter's DTR pulse on the reset pin
    (boot,) = boot_packets(bank.transport, 2.0)
    assert boot_fields(boot) == {"status": 0, "cause": 2, "version": (1, 1), "parked": 0}
    bank.connect()  # a new HELLO within the watchdog time disarms the boot guard
    assert np.array_equal(bank.get_all(), taps)  # read back from the parts
    assert not bank.status().parked
    time.sleep(0.3)
    sim.sync()
    assert np.array_equal(sim.taps, taps) and len(sim.wiper_log) == changes  # no wiper moved


def test_boot_guard_parks_without_a_hello(sim: avr.SimavrPotBank, bank: PotBank) -> None:
    bank.connect()
    bank.set_watchdog(0)  # a reset brings the default 2000 ms back
    bank.set_all(np.full(16, 10))
    sim.reset("watchdog")
    (boot,) = boot_packets(bank.transport, 2.0)
    assert boot_fields(boot)["cause"] == 8 and boot_fields(boot)["parked"] == 0
    time.sleep(0.5)
    sim.sync()
    assert np.array_equal(sim.taps, np.full(16, 10))  # kept while the guard waits
    assert 2000 < wait_parked(sim) < 2000 + 50  # parked by the guard, simulated ms after boot
    bank.connect()
    status = bank.status()
    assert status.parked and status.watchdog_tripped


@pytest.mark.parametrize("cause, code", [("power", 1), ("brownout", 4)])
def test_power_on_and_brown_out_park(sim: avr.SimavrPotBank, bank: PotBank, cause: str, code: int) -> None:
    bank.connect()
    bank.set_all(np.full(16, 20))
    sim.reset(cause)
    (boot,) = boot_packets(bank.transport, 2.0)
    assert boot_fields(boot) == {"status": 0, "cause": code, "version": (1, 1), "parked": 1}
    sim.sync()
    assert np.array_equal(sim.taps, np.full(16, PARK_TAP))
    if cause == "power":  # the parts came up at their power-on mid-scale before the park
        assert any(v == 0x40 for _, v, _ in sim.wiper_log[-32:])


def test_reset_cause_behind_a_stock_bootloader(avr_build: avr.Build) -> None:
    """The stock bootloaders clear MCUSR: the firmware tells a reset from a power cycle by
    its marker in RAM, which a power cycle scrambles."""
    sim = avr.SimavrPotBank(avr_build, bootloader=True)
    port = open_port(sim.path)
    try:
        bank = PotBank(port, reply_timeout=0.2)
        bank.connect()
        bank.set_all(np.full(16, 33))
        sim.reset("external")
        (boot,) = boot_packets(port, 2.0)
        assert boot_fields(boot)["cause"] == 2 and boot_fields(boot)["parked"] == 0
        bank.connect()
        assert np.array_equal(bank.get_all(), np.full(16, 33))
        sim.reset("power")
        (boot,) = boot_packets(port, 2.0)
        assert boot_fields(boot)["cause"] == 1 and boot_fields(boot)["parked"] == 1
        sim.sync()
        assert np.array_equal(sim.taps, np.full(16, PARK_TAP))
    finally:
        port.close()
        sim.close()


def test_harness_rejects_a_bad_chip_select(avr_build: avr.Build) -> None:
    proc = subprocess.run([str(avr_build.harness), str(avr_build.elf), "Z9"], capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 2 and "bad argument Z9" in proc.stderr


ROOT = Path(__file__).resolve().parents[1]


def test_training_under_simavr_matches_the_python_emulator(avr_build: avr.Build) -> None:
    """bench-regression-2x2 on example-16, noise off: the compiled firmware and the Python
    firmware give the same taps after every step (the full 200 steps:
    benchmarks/simavr_equivalence.py)."""
    protocol = (ROOT / "protocols" / "bench-regression-2x2.toml").read_text()
    bench = (ROOT / "protocols" / "benches" / "example-16.toml").read_text().replace(
        "seed = 1\n", "seed = 1\n[emulator.parameters]\nai_noise_rms = 0.0\n", 1)
    steps = 25
    python = emulated_trajectory(protocol, bench, steps)
    sim = avr.SimavrPotBank(avr_build)
    compiled = emulated_trajectory(protocol, bench, steps, controller=sim)
    assert len(python) == len(compiled) == steps
    assert all(np.array_equal(a, b) for a, b in zip(python, compiled))
    assert len({a.tobytes() for a in python}) > 5  # the taps did move
    assert len(sim.wiper_log) > 16 * 5  # and the models saw them move
