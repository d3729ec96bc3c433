"""The potentiometer-bank driver: expected exchanges, then the real pty emulator."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest
import serial

from clln.drivers.errors import (
    ControllerSilent,
    DeviceNotFound,
    FirmwareError,
    FirmwareParked,
    FirmwareReset,
    IncompatibleFirmware,
    PotBankTimeout,
    ReadbackMismatch,
)
from clln.drivers.potbank import PotBank, open_port
from clln.drivers.wire import Cmd, FrameReader, Packet, decode_frame, encode_packet
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


@pytest.mark.slow
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


# -- boot, reset and watchdog (wire protocol 1.1) ------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def running() -> Iterator[tuple[PtyLink, PotFirmware]]:
    """An emulated controller that has been running taps 10, 20, ... when the host opens it
    (its bootloader waits 0.6 s after a reset)."""
    firmware = PotFirmware(4, 129, boot_delay=0.6)
    firmware.taps[:] = [10, 20, 30, 40]
    firmware.parked = False
    link = PtyLink(firmware)
    try:
        yield link, firmware
    finally:
        link.close()


def sent_commands(link: PtyLink) -> list[int]:
    """Command codes of the host's requests, in order, from the traffic log."""
    reader = FrameReader()
    return [p.cmd for e in link.log.of("serial-in") for p in reader.feed(bytes.fromhex(e["data"]))]


def test_opening_the_port_resets_the_board_and_the_host_waits_for_boot(running) -> None:
    """DTR asserted at open resets the MCU (its bootloader is deaf for 0.6 s); the host
    sends nothing until BOOT, and an external reset keeps the running taps."""
    link, firmware = running
    t0 = time.monotonic()
    bank = PotBank(open_port(link.path, port_class=link.port_class()), reply_timeout=0.05, retries=2,
                   boot_timeout=2.5, expect_boot=True)
    try:
        info = bank.connect()
        assert time.monotonic() - t0 >= 0.6 and firmware.resets == 1
        assert info.version == (1, 1)
        assert bank.boot is not None and bank.boot.causes == "external reset" and not bank.boot.parked
        assert sent_commands(link)[0] == Cmd.HELLO and bank.retries_used == 0  # no HELLO was lost
        assert bank.get_all().tolist() == [10, 20, 30, 40]
        assert not bank.status().parked
    finally:
        bank.close()


def test_dtr_held_low_does_not_reset_the_board(running) -> None:
    link, firmware = running
    bank = PotBank(open_port(link.path, reset_on_open=False, port_class=link.port_class()),
                   reply_timeout=0.05, retries=2, boot_timeout=2.5)
    try:
        t0 = time.monotonic()
        bank.connect()
        assert time.monotonic() - t0 < 0.5 and firmware.resets == 0 and bank.boot is None
        assert bank.get_all().tolist() == [10, 20, 30, 40]
    finally:
        bank.close()


def test_without_a_boot_packet_hello_retries_span_the_boot_delay(running) -> None:
    """A reset the host did not expect (DTR low, yet the board restarts): 3 attempts of
    50 ms would end inside the bootloader's 0.6 s; the retries go on for boot_timeout."""
    link, firmware = running
    bank = PotBank(open_port(link.path, reset_on_open=False, port_class=link.port_class()),
                   reply_timeout=0.05, retries=2, boot_timeout=2.5)
    try:
        link.reset("external")
        bank.connect()
        assert bank.retries_used > 2 and bank.boot is not None  # BOOT noticed among the retries
        assert bank.get_all().tolist() == [10, 20, 30, 40]
    finally:
        bank.close()


def test_a_power_on_reset_parks_and_says_so(running) -> None:
    link, firmware = running
    bank = PotBank(open_port(link.path, reset_on_open=False, port_class=link.port_class()),
                   reply_timeout=0.05, boot_timeout=2.5, expect_boot=True)
    try:
        link.reset("power-on")
        bank.connect()
        assert bank.boot is not None and bank.boot.causes == "power-on" and bank.boot.parked
        assert bank.get_all().tolist() == [128] * 4 and bank.status().parked
    finally:
        bank.close()


def test_a_1_0_firmware_without_boot_is_accepted_after_the_wait() -> None:
    """No BOOT within boot_timeout (a 1.0 firmware, or no auto-reset): HELLO then, and a
    1.0 reply is compatible with this 1.1 host."""
    reply_1_0 = b"\x00" + struct.pack("<BBHHHH", 1, 0, 2, 129, 128, 2000) + b"old"
    link = ExpectedExchange([(req(0, Cmd.HELLO, b"\x01\x01"), rep(0, Cmd.HELLO, reply_1_0))])
    bank = PotBank(link, reply_timeout=0.01, boot_timeout=0.1, expect_boot=True)
    t0 = time.monotonic()
    assert bank.connect().version == (1, 0)
    assert time.monotonic() - t0 >= 0.1 and bank.boot is None
    link.done()


def test_boot_packet_and_boot_guard_of_the_emulated_firmware() -> None:
    clock = FakeClock()
    fw = PotFirmware(2, 129, clock=clock, boot_delay=0.5)
    fw.taps[:] = [3, 4]
    fw.parked = False
    fw.reset("watchdog")
    assert fw.tick() == b"" and fw.receive(b"\x00" + encode_packet(Packet(0, Cmd.PING))) == b""  # deaf
    clock.now = 0.5
    boot = decode_frame(fw.tick()[:-1])
    assert (boot.seq, boot.cmd, boot.payload) == (0, 0x89, bytes([0, 0x08, 1, 1, 0]))
    assert fw.tick() == b"" and fw.taps.tolist() == [3, 4]
    clock.now = 2.4
    fw.tick()
    assert not fw.parked  # within the guard's 2000 ms
    clock.now = 2.6
    fw.tick()
    assert fw.parked and fw.tripped and fw.taps.tolist() == [128, 128]  # no HELLO came: parked
    reply = decode_frame(fw.receive(b"\x00" + encode_packet(Packet(1, Cmd.BOOT)))[:-1])
    assert reply.payload == b"\x01"  # a request with CMD 0x09 is UNKNOWN_COMMAND


def test_a_reset_after_the_handshake_is_a_fault(running) -> None:
    link, firmware = running
    bank = PotBank(open_port(link.path, reset_on_open=False, port_class=link.port_class()),
                   reply_timeout=0.05, retries=20)
    try:
        bank.connect()
        firmware.boot_delay = 0.05
        link.reset("watchdog")
        time.sleep(0.2)
        with pytest.raises(FirmwareReset, match=r"restarted mid-run \(watchdog\) and kept its taps"):
            bank.ping()
    finally:
        bank.close()


@pytest.mark.slow
def test_keepalive_feeds_the_watchdog_while_the_host_is_busy(running) -> None:
    link, firmware = running
    bank = PotBank(open_port(link.path, reset_on_open=False, port_class=link.port_class()),
                   reply_timeout=0.05)
    try:
        bank.connect()
        bank.set_watchdog(600)
        bank.set_all(np.array([5, 6, 7, 8]))
        bank.start_keepalive(0.15)
        time.sleep(1.2)  # 2 watchdog periods without a command from the main thread
        bank.check_running()
        assert not firmware.parked and Cmd.PING in sent_commands(link)
        with bank.lock:  # the whole host stalls (the keep-alive too) for 1.5 watchdogs
            time.sleep(0.9)
        with pytest.raises(FirmwareParked, match="watchdog tripped.*more than 600 ms"):
            bank.check_running()
        assert firmware.taps.tolist() == [128] * 4
    finally:
        bank.close()


def test_urls_are_not_opened(tmp_path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("content")
    for url in (f"spy:///dev/null?file={victim}", "socket://127.0.0.1:9", "loop://"):
        with pytest.raises(DeviceNotFound, match="device path"):
            open_port(url)
    assert victim.read_text() == "content"


def test_a_silent_port_is_a_user_error_with_hints() -> None:
    import os

    master, slave = os.openpty()  # a tty with nothing behind it
    try:
        bank = PotBank(open_port(os.ttyname(slave), 57600), reply_timeout=0.02, retries=2,
                       boot_timeout=0.2, expect_boot=True)
        with pytest.raises(ControllerSilent) as err:
            bank.connect()
        message = str(err.value)
        for hint in ("did not answer", "57600 baud", "no BOOT packet within 0.2 s", "firmware is flashed",
                     "reset_on_open", os.ttyname(slave)):
            assert hint in message
        assert "\n" not in message
        bank.close()
    finally:
        os.close(master)
        os.close(slave)


def test_the_longest_chain_fits_the_frame_limit() -> None:
    """255 pots: GET_ALL's reply (status + 510 bytes) fits a 512-byte payload; 256 would not,
    so the bench file refuses chain positions above 254 and the emulator more than 255 pots."""
    from clln.benchfile import MAX_CHAIN

    assert 1 + 2 * MAX_CHAIN <= 512 < 1 + 2 * (MAX_CHAIN + 1)
    firmware = PotFirmware(MAX_CHAIN, 129)
    link = PtyLink(firmware)
    try:
        bank = PotBank(open_port(link.path))
        assert bank.connect().n_pots == MAX_CHAIN
        taps = np.random.default_rng(0).integers(0, 129, MAX_CHAIN)
        bank.set_all(taps)
        assert np.array_equal(firmware.taps, taps) and bank.retries_used == 0
        bank.close()
    finally:
        link.close()
    with pytest.raises(ValueError, match="1..255 pots"):
        PotFirmware(MAX_CHAIN + 1, 129)
