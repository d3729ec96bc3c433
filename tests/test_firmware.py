"""The reference firmware's protocol core (drivers/firmware/potbank/potbank_protocol.h),
built for the host, talking to the Python driver over a real pseudo-terminal."""

from __future__ import annotations

import os
import shutil
import subprocess
import tty
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clln.drivers.errors import FirmwareError
from clln.drivers.potbank import PotBank, open_port

SOURCE = Path(__file__).resolve().parents[1] / "drivers" / "firmware" / "potbank"
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the firmware core")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fw") / "potbank-host"
    subprocess.run(["g++", "-O2", "-std=c++17", "-Wall", "-Werror", "-o", str(out),
                    str(SOURCE / "host_shim.cpp")], check=True, capture_output=True)
    return out


@pytest.fixture
def bank(binary: Path) -> Iterator[PotBank]:
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([str(binary)], stdin=master, stdout=master)
    port = open_port(os.ttyname(slave))
    try:
        yield PotBank(port)
    finally:
        port.close()
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)


def test_c_firmware_interoperates_with_the_driver(bank: PotBank) -> None:
    info = bank.connect()
    assert info.version == (1, 1) and info.n_pots == 16 and info.n_taps == 129
    assert info.park_tap == 128 and info.name == "clln potbank host build"
    assert np.array_equal(bank.get_all(), np.full(16, 128))  # parked at power-up
    rng = np.random.default_rng(0)
    for _ in range(20):
        taps = rng.integers(0, 129, 16)
        bank.set_all(taps)  # verified by read-back inside
    bank.set_one(3, 7)
    assert bank.get_all()[3] == 7
    status = bank.status()
    assert status.handshake and not status.parked and status.crc_errors == 0
    bank.park()
    assert np.array_equal(bank.get_all(), np.full(16, 128)) and bank.status().parked
    with pytest.raises(FirmwareError, match="OUT_OF_RANGE"):
        bank.set_watchdog(50)
    bank.set_watchdog(0)


def test_c_firmware_drops_damaged_frames(bank: PotBank) -> None:
    bank.connect()
    bank.transport.write(b"\x00\x05\x22\x03\x4d\xe8\x01\x00garbage\x00")  # bad delimiter, garbage
    bank.ping()
    assert bank.status().crc_errors == 2
