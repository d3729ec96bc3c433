"""The potentiometer-bank driver: expected exchanges, then the real pty emulator."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import serial

from clln.drivers.errors import (
    FirmwareError,
    IncompatibleFirmware,
    PotBankTimeout,
    ReadbackMismatch,
)
from clln.drivers.potbank import PotBank, open_port
from clln.drivers.wire import Cmd, Packet, encode_packet
from clln.simulator.bench import Faults, PotFirmware, PtyLink


class ExpectedExchange(serial.SerialBase):
    """A transport that checks every write against a script of (sent, reply) pairs;
    a reply of None means silence. Fails if any pair is left over."""

    def __init__(self, pairs: list[tuple[bytes, bytes | None]]) -> None:
        super().__init__()  # no port: nothing is opened
        self._port = "expected-exchange"
        self.pairs = list(pairs)
        self.pending = b""
        self.is_open = True

    def write(self, data: bytes) -> int:
        assert self.pairs, f"unexpected write {data.hex()}"
        sent, reply = self.pairs.pop(0)
        assert data == sent, f"sent {data.hex()}, expected {sent.hex()}"
        self.pending += reply or b""
        return len(data)

    def read(self, size: int = 1) -> bytes:
        out, self.pending = self.pending[:size], self.pending[size:]
        return out

    @property
    def in_waiting(self) -> int:
        return len(self.pending)

    def reset_input_buffer(self) -> None:
        self.pending = b""

    def close(self) -> None:
        self.is_open = False

    def done(self) -> None:
        assert not self.pairs, f"{len(self.pairs)} exchanges left over"


def req(seq: int, cmd: int, payload: bytes = b"") -> bytes:
    return b"\x00" + encode_packet(Packet(seq, cmd, payload))


def rep(seq: int, cmd: int, payload: bytes = b"\x00") -> bytes:
    return encode_packet(Packet(seq, cmd | 0x80, payload))


HELLO_REPLY = b"\x00" + struct.pack("<BBHHHH", 1, 0, 2, 129, 128, 2000) + b"fw"


def connected(pairs: list[tuple[bytes, bytes | None]]) -> tuple[PotBank, ExpectedExchange]:
    link = ExpectedExchange([(req(0, Cmd.HELLO, b"\x01\x01"), rep(0, Cmd.HELLO, HELLO_REPLY)), *pairs])
    bank = PotBank(link, reply_timeout=0.01, retries=2)
    info = bank.connect()
    assert info.n_pots == 2 and info.n_taps == 129 and info.name == "fw"
    return bank, link


def test_construction_does_no_io() -> None:
    link = ExpectedExchange([])
    PotBank(link)
    link.done()


def test_set_all_is_verified_by_read_back() -> None:
    taps = struct.pack("<2H", 5, 100)
    bank, link = connected([
        (req(1, Cmd.SET_ALL, taps), rep(1, Cmd.SET_ALL)),
        (req(2, Cmd.GET_ALL), rep(2, Cmd.GET_ALL, b"\x00" + taps)),
    ])
    bank.set_all(np.array([5, 100]))
    link.done()


def test_a_lost_reply_is_retried_with_the_same_sequence_number() -> None:
    taps = struct.pack("<2H", 5, 100)
    bank, link = connected([
        (req(1, Cmd.SET_ALL, taps), None),
        (req(1, Cmd.SET_ALL, taps), rep(9, Cmd.SET_ALL) + rep(1, Cmd.SET_ALL)),  # a stale reply first
        (req(2, Cmd.GET_ALL), rep(2, Cmd.GET_ALL, b"\x00" + taps)),
    ])
    bank.set_all(np.array([5, 100]))
    assert bank.retries_used == 1
    link.done()


def test_read_back_mismatch_rewrites_then_gives_up() -> None:
    taps = struct.pack("<2H", 5, 100)
    wrong = b"\x00" + struct.pack("<2H", 5, 99)
    pairs = []
    for k in range(4):
        pairs += [(req(1 + 2 * k, Cmd.SET_ALL, taps), rep(1 + 2 * k, Cmd.SET_ALL)),
                  (req(2 + 2 * k, Cmd.GET_ALL), rep(2 + 2 * k, Cmd.GET_ALL, wrong))]
    bank, link = connected(pairs)
    with pytest.raises(ReadbackMismatch):
        bank.set_all(np.array([5, 100]))
    link.done()


def test_silence_ends_in_a_timeout_after_bounded_retries() -> None:
    bank, link = connected([(req(1, Cmd.PING), None)] * 3)
    with pytest.raises(PotBankTimeout, match="after 3 attempts"):
        bank.ping()
    link.done()


def test_error_status_is_raised_with_its_name() -> None:
    bank, link = connected([(req(1, Cmd.SET_ONE, struct.pack("<HH", 1, 7)),
                             rep(1, Cmd.SET_ONE, b"\x06"))])
    with pytest.raises(FirmwareError, match="HARDWARE_FAULT"):
        bank.set_one(1, 7)
    link.done()


def test_incompatible_firmware_is_refused() -> None:
    link = ExpectedExchange([(req(0, Cmd.HELLO, b"\x01\x01"),
                              rep(0, Cmd.HELLO, b"\x05" + HELLO_REPLY[1:].replace(b"\x01", b"\x02", 1)))])
    with pytest.raises(IncompatibleFirmware, match="update its firmware"):
        PotBank(link, reply_timeout=0.01).connect()
    link.done()


def test_out_of_range_taps_are_refused_before_sending() -> None:
    bank, link = connected([])
    for bad in (np.array([0, 129]), np.array([-1, 3]), np.array([1, 2, 3]), np.array([1.5, 2])):
        with pytest.raises(ValueError):
            bank.set_all(bad)
    link.done()


def test_driver_and_emulator_over_a_real_pty_with_faults() -> None:
    """1 % of the bytes dropped or corrupted, both ways: every write still lands exactly."""
    firmware = PotFirmware(16, 129)
    link = PtyLink(firmware, faults=Faults(drop=0.005, corrupt=0.005, seed=3))
    try:
        bank = PotBank(open_port(link.path), retries=20)
        assert bank.connect().n_pots == 16
        rng = np.random.default_rng(1)
        for _ in range(60):
            taps = rng.integers(0, 129, 16)
            bank.set_all(taps)
            assert np.array_equal(firmware.taps, taps) and np.array_equal(bank.get_all(), taps)
        status = bank.status()
        assert status.handshake and not status.parked
        assert firmware.crc_errors > 0  # faults did happen
        bank.close()
    finally:
        link.close()
    assert link.log.of("serial-in") and link.log.of("serial-out")
