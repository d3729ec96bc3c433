"""The potentiometer controller's protocol logic, emulated: ``drivers/firmware/PROTOCOL.md``
written from that document, independently of the host driver (no I/O: bytes in, bytes out)."""

from __future__ import annotations

import binascii
import struct
import threading
import time
from collections.abc import Callable

import numpy as np
from cobs import cobs

VERSION = (1, 1)
OK, UNKNOWN_COMMAND, BAD_LENGTH, OUT_OF_RANGE, NO_HANDSHAKE, INCOMPATIBLE, HARDWARE_FAULT = range(7)
HELLO, SET_ALL, GET_ALL, SET_ONE, PARK, PING, SET_WATCHDOG, GET_STATUS, BOOT = range(1, 10)
RESET_CAUSE = {"power-on": 0x01, "external": 0x02, "brown-out": 0x04, "watchdog": 0x08}  # MCUSR bits
BOOT_WATCHDOG_MS = 2000  # watchdog armed at every start; also the boot guard's time


class PotFirmware:
    """The potentiometer controller's protocol logic (no I/O): bytes in, bytes out.

    Parameters
    ----------
    n_pots, n_taps : bank size and taps per pot.
    park_tap : safe tap (highest resistance); n_taps - 1 by default.
    clock : monotonic clock (s), for the watchdog, the boot delay and uptime.
    boot_delay : seconds from a reset until the firmware runs (the bootloader's wait);
        bytes arriving meanwhile are lost.

    Construction is a power-on long ago: pots parked, no BOOT pending. :meth:`reset`
    restarts it; :meth:`tick` returns what it sends unprompted (the BOOT packet).
    """

    def __init__(self, n_pots: int, n_taps: int, *, park_tap: int | None = None,
                 name: str = "clln bench emulator", clock: Callable[[], float] = time.monotonic,
                 boot_delay: float = 0.0) -> None:
        if not (1 <= n_pots <= 255 and 2 <= n_taps <= 65535):  # GET_ALL's reply holds 255 taps
            raise ValueError(f"an emulated controller has 1..255 pots of 2..65535 taps, not {n_pots} x {n_taps}")
        self.n_pots, self.n_taps = n_pots, n_taps
        self.park_tap = n_taps - 1 if park_tap is None else park_tap
        self.name = name
        self.clock = clock
        self.taps = np.full(n_pots, self.park_tap, dtype=np.int64)
        self.parked = True
        self.tripped = False
        self.handshake = False
        self.watchdog_ms = BOOT_WATCHDOG_MS
        self.crc_errors = 0
        self.frames_ok = 0
        self.writes = 0  # SET_ALL / SET_ONE / PARK executed
        self.boot_delay = boot_delay
        self.resets = 0
        self._start = clock()
        self._last_valid = clock()
        self._buffer = bytearray()
        self._last: tuple[int, int, bytes, bytes] | None = None  # seq, cmd, crc, reply frame
        self._booting_until: float | None = None  # a reset in progress: BOOT goes out then
        self._boot_cause = 0
        self._guard_until: float | None = None  # kept taps are parked then without a HELLO
        self.lock = threading.Lock()

    def reset(self, cause: str = "external", *, boot_delay: float | None = None) -> None:
        """Reset the microcontroller (``cause``: power-on, external, brown-out, watchdog).

        Every volatile state is lost (handshake, watchdog setting, counters, the replay
        memory). On power-on or brown-out the pots power up at their park tap; on an
        external or watchdog reset they kept power, so their taps are kept (read back)
        and parked (parked and tripped flags set) only if no HELLO arrives within the
        boot guard's 2000 ms. The firmware is deaf for ``boot_delay`` s, then sends BOOT.
        """
        if cause not in RESET_CAUSE:
            raise ValueError(f"reset cause {cause!r}; allowed: {', '.join(RESET_CAUSE)}")
        with self.lock:
            now = self.clock()
            delay = self.boot_delay if boot_delay is None else boot_delay
            keep = cause in ("external", "watchdog")
            if not keep:
                self.taps[:] = self.park_tap
            self.parked = not keep
            self.tripped = self.handshake = False
            self.watchdog_ms = BOOT_WATCHDOG_MS
            self.crc_errors = self.frames_ok = 0
            self._buffer.clear()
            self._last = None
            self._start = now + delay
            self._booting_until = now + delay
            self._boot_cause = RESET_CAUSE[cause]
            self._guard_until = None
            self.resets += 1

    @property
    def booting(self) -> bool:
        """A reset is in progress (the bootloader holds the line)."""
        return self._booting_until is not None

    def receive(self, data: bytes) -> bytes:
        """Process bytes from the host; return the bytes to send back."""
        out = bytearray()
        with self.lock:
            if self._booting_until is not None:
                return b""  # the bootloader has the UART: the bytes are lost
            for byte in data:
                if byte != 0:
                    self._buffer.append(byte)
                    if len(self._buffer) > 600:
                        self._buffer.clear()
                        self.crc_errors = min(self.crc_errors + 1, 65535)
                    continue
                frame, self._buffer = bytes(self._buffer), bytearray()
                if frame:
                    out += self._frame(frame)
        return bytes(out)

    def tick(self) -> bytes:
        """Time passes: the end of a boot (returns the BOOT packet to send), the boot
        guard, and the watchdog, which parks the bank when the host has been silent too
        long. Returns the bytes to send unprompted (usually none)."""
        with self.lock:
            now = self.clock()
            if self._booting_until is not None:
                if now < self._booting_until:
                    return b""
                self._booting_until = None
                self._last_valid = now
                if not self.parked:
                    self._guard_until = now + BOOT_WATCHDOG_MS / 1000
                payload = bytes([OK, self._boot_cause, *VERSION, int(self.parked)])
                return self._encode(0, BOOT | 0x80, payload)
            if self._guard_until is not None and now > self._guard_until:
                self._guard_until = None
                if not self.handshake and not self.parked:
                    self._park()
                    self.tripped = True
            if (self.handshake and self.watchdog_ms and not self.parked
                    and (now - self._last_valid) * 1000 > self.watchdog_ms):
                self._park()
                self.tripped = True
            return b""

    @staticmethod
    def _encode(seq: int, cmd: int, payload: bytes) -> bytes:
        body = bytes([seq, cmd]) + len(payload).to_bytes(2, "little") + payload
        return cobs.encode(body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")) + b"\x00"

    def _park(self) -> None:
        self.taps[:] = self.park_tap
        self.parked = True
        self.writes += 1

    def _frame(self, frame: bytes) -> bytes:
        try:
            packet = cobs.decode(frame)
        except cobs.DecodeError:
            self.crc_errors = min(self.crc_errors + 1, 65535)
            return b""
        if (len(packet) < 6 or int.from_bytes(packet[2:4], "little") != len(packet) - 6
                or binascii.crc_hqx(packet[:-2], 0xFFFF) != int.from_bytes(packet[-2:], "big")):
            self.crc_errors = min(self.crc_errors + 1, 65535)
            return b""
        seq, cmd, payload, crc = packet[0], packet[1], packet[4:-2], packet[-2:]
        if cmd & 0x80:
            return b""
        self._last_valid = self.clock()
        self.frames_ok = min(self.frames_ok + 1, 65535)
        if self._last is not None and self._last[:3] == (seq, cmd, crc):
            return self._last[3]  # a retry: same reply, not executed again
        reply = self._execute(cmd, payload)
        encoded = self._encode(seq, cmd | 0x80, reply)
        self._last = (seq, cmd, crc, encoded)
        return encoded

    def _execute(self, cmd: int, p: bytes) -> bytes:
        if cmd == HELLO:
            if len(p) != 2:
                return bytes([BAD_LENGTH])
            status = OK if p[0] == VERSION[0] else INCOMPATIBLE
            self.handshake = self.handshake or status == OK
            if self.handshake:
                self._guard_until = None
            return bytes([status]) + struct.pack("<BBHHHH", *VERSION, self.n_pots, self.n_taps,
                                                 self.park_tap, self.watchdog_ms) + self.name.encode()[:64]
        if cmd == PING:
            return bytes([OK]) if not p else bytes([BAD_LENGTH])
        if cmd == GET_STATUS:
            if p:
                return bytes([BAD_LENGTH])
            flags = self.parked | (self.tripped << 1) | (self.handshake << 2)
            self.tripped = False
            uptime = int((self.clock() - self._start) * 1000) & 0xFFFFFFFF
            return bytes([OK]) + struct.pack("<BHHI", flags, self.crc_errors, self.frames_ok, uptime)
        if cmd not in (SET_ALL, GET_ALL, SET_ONE, PARK, SET_WATCHDOG):
            return bytes([UNKNOWN_COMMAND])
        if not self.handshake:
            return bytes([NO_HANDSHAKE])
        if cmd == SET_ALL:
            if len(p) != 2 * self.n_pots:
                return bytes([BAD_LENGTH])
            taps = np.array(struct.unpack(f"<{self.n_pots}H", p), dtype=np.int64)
            if np.any(taps >= self.n_taps):
                return bytes([OUT_OF_RANGE])
            self.taps[:] = taps
            self.parked = False
            self.writes += 1
            return bytes([OK])
        if cmd == GET_ALL:
            if p:
                return bytes([BAD_LENGTH])
            return bytes([OK]) + struct.pack(f"<{self.n_pots}H", *self.taps.tolist())
        if cmd == SET_ONE:
            if len(p) != 4:
                return bytes([BAD_LENGTH])
            index, tap = struct.unpack("<HH", p)
            if index >= self.n_pots or tap >= self.n_taps:
                return bytes([OUT_OF_RANGE])
            self.taps[index] = tap
            self.parked = False
            self.writes += 1
            return bytes([OK])
        if cmd == PARK:
            if p:
                return bytes([BAD_LENGTH])
            self._park()
            return bytes([OK])
        # SET_WATCHDOG
        if len(p) != 2:
            return bytes([BAD_LENGTH])
        (ms,) = struct.unpack("<H", p)
        if 0 < ms < 100:
            return bytes([OUT_OF_RANGE])
        self.watchdog_ms = ms
        return bytes([OK])
