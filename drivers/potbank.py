"""Driver of the potentiometer controller (``firmware/PROTOCOL.md``) over a serial port.

``PotBank(transport)`` takes an *open* ``serial.SerialBase`` (a real port, a pty, or
``loop://``); :func:`open_port` is the factory that opens one from a bench file.
Construction does no I/O; :meth:`PotBank.connect` does the handshake.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import serial

from clln.controller.events import emit
from clln.drivers.errors import (
    DeviceLost,
    DeviceNotFound,
    FirmwareError,
    IncompatibleFirmware,
    PotBankTimeout,
    ReadbackMismatch,
)
from clln.drivers.wire import (
    PROTOCOL_VERSION,
    STATUS_NAMES,
    Cmd,
    FrameReader,
    Packet,
    encode_packet,
)


@dataclass(frozen=True)
class FirmwareInfo:
    """What ``HELLO`` reported."""

    version: tuple[int, int]
    n_pots: int
    n_taps: int
    park_tap: int
    watchdog_ms: int
    name: str


@dataclass(frozen=True)
class FirmwareStatus:
    """What ``GET_STATUS`` reported."""

    parked: bool
    watchdog_tripped: bool
    handshake: bool
    crc_errors: int
    frames_ok: int
    uptime_ms: int


def open_port(port: str, baudrate: int = 115200) -> serial.SerialBase:
    """Open a serial port (a device path or a pyserial URL such as ``loop://``)."""
    try:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=0.01, write_timeout=1.0)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise DeviceNotFound(f"serial port {port!r}: cannot open ({exc})") from None


class PotBank:
    """The potentiometer bank behind its microcontroller.

    Parameters
    ----------
    transport : an open serial port.
    reply_timeout : seconds to wait for a reply, plus the frame's transmission time.
    retries : resends of a request without a valid reply before giving up.
    write_retries : repeats of a ``SET_ALL`` whose read-back differs.
    clock : monotonic clock (s), injectable for tests.

    Attributes
    ----------
    frames_sent, retries_used, frames_dropped : traffic counters.
    """

    def __init__(
        self,
        transport: serial.SerialBase,
        *,
        reply_timeout: float = 0.05,
        retries: int = 20,
        write_retries: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.reply_timeout = reply_timeout
        self.retries = retries
        self.write_retries = write_retries
        self.clock = clock
        self.info: FirmwareInfo | None = None
        self._seq = 0
        self._reader = FrameReader()
        self.frames_sent = 0
        self.retries_used = 0

    @property
    def frames_dropped(self) -> int:
        return self._reader.dropped

    # -- transport -----------------------------------------------------------

    def _byte_time(self) -> float:
        baud = getattr(self.transport, "baudrate", 115200) or 115200
        return 10.0 / baud

    def _exchange(self, cmd: int, payload: bytes = b"") -> bytes:
        """Send a request, return the reply payload after its status byte.

        Retries with the same sequence number on timeout; raises FirmwareError on
        an error status, PotBankTimeout when every attempt timed out.
        """
        seq = self._seq
        self._seq = (self._seq + 1) % 256
        frame = encode_packet(Packet(seq, cmd, payload))
        deadline_extra = len(frame) * self._byte_time() * 2
        for attempt in range(self.retries + 1):
            if attempt:
                self.retries_used += 1
                emit("retry", f"serial command {cmd:#04x} resent (attempt {attempt + 1})",
                     command=cmd, attempt=attempt + 1)
            try:
                self.transport.reset_input_buffer()
                self._reader.reset()
                self.transport.write(b"\x00" + frame)
                self.frames_sent += 1
                reply = self._await(seq, cmd, self.reply_timeout + deadline_extra)
            except (serial.SerialException, OSError) as exc:
                raise DeviceLost(
                    f"potentiometer controller on {getattr(self.transport, 'port', '?')} went away "
                    f"({exc}); check its USB cable and power"
                ) from None
            if reply is not None:
                status = reply.payload[0] if reply.payload else 0xFF
                if status != 0:
                    name = STATUS_NAMES.get(status, f"status {status:#04x}")
                    raise FirmwareError(f"potentiometer controller answered {name} to command "
                                        f"{cmd:#04x}", status)
                return reply.payload[1:]
        raise PotBankTimeout(
            f"potentiometer controller on {getattr(self.transport, 'port', '?')} did not answer "
            f"command {cmd:#04x} after {self.retries + 1} attempts"
        )

    def _await(self, seq: int, cmd: int, timeout: float) -> Packet | None:
        """The matching reply, or None on timeout or as soon as a damaged frame arrives
        (the caller then resends at once instead of waiting out the timeout)."""
        deadline = self.clock() + timeout
        dropped = self._reader.dropped
        while self.clock() < deadline:
            data = self.transport.read(max(1, self.transport.in_waiting))
            if not data:
                continue
            for packet in self._reader.feed(data):
                if packet.seq == seq and packet.cmd == (cmd | Cmd.REPLY) and packet.payload:
                    return packet
            if self._reader.dropped != dropped:
                return None
        return None

    # -- commands ------------------------------------------------------------

    def connect(self) -> FirmwareInfo:
        """Handshake: identify the firmware and refuse an incompatible one."""
        try:
            body = self._exchange(Cmd.HELLO, bytes(PROTOCOL_VERSION))
        except FirmwareError as exc:
            if exc.status != 0x05:
                raise
            raise IncompatibleFirmware(
                f"potentiometer controller speaks another protocol major version than "
                f"{PROTOCOL_VERSION[0]}.x; update its firmware (drivers/firmware/)"
            ) from None
        if len(body) < 10:
            raise FirmwareError("HELLO reply too short", 0x02)
        major, minor, n_pots, n_taps, park, wdt = struct.unpack_from("<BBHHHH", body)
        if major != PROTOCOL_VERSION[0]:
            raise IncompatibleFirmware(
                f"potentiometer controller firmware speaks protocol {major}.{minor}; "
                f"this clln needs {PROTOCOL_VERSION[0]}.x"
            )
        self.info = FirmwareInfo((major, minor), n_pots, n_taps, park, wdt,
                                 body[10:].decode("ascii", "replace"))
        return self.info

    def _require(self) -> FirmwareInfo:
        if self.info is None:
            raise RuntimeError("call connect() first")
        return self.info

    def _check_taps(self, taps: np.ndarray) -> np.ndarray:
        info = self._require()
        taps = np.asarray(taps)
        if taps.shape != (info.n_pots,):
            raise ValueError(f"need {info.n_pots} taps, got shape {taps.shape}")
        if not np.issubdtype(taps.dtype, np.integer):
            raise ValueError("taps must be integers")
        if taps.min() < 0 or taps.max() >= info.n_taps:
            raise ValueError(f"taps must lie in 0..{info.n_taps - 1}")
        return taps.astype(np.int64)

    def set_all(self, taps: np.ndarray) -> None:
        """Write every tap in one frame, verified by read-back (bounded repeats)."""
        taps = self._check_taps(taps)
        payload = struct.pack(f"<{taps.size}H", *taps.tolist())
        for _ in range(self.write_retries + 1):
            self._exchange(Cmd.SET_ALL, payload)
            if np.array_equal(self.get_all(), taps):
                return
        raise ReadbackMismatch(f"taps read back differ from those written after "
                               f"{self.write_retries + 1} writes")

    def get_all(self) -> np.ndarray:
        """(n_pots,) taps read back."""
        info = self._require()
        body = self._exchange(Cmd.GET_ALL)
        if len(body) != 2 * info.n_pots:
            raise FirmwareError(f"GET_ALL returned {len(body)} bytes, expected {2 * info.n_pots}", 0x02)
        return np.array(struct.unpack(f"<{info.n_pots}H", body), dtype=np.int64)

    def set_one(self, index: int, tap: int) -> None:
        info = self._require()
        if not (0 <= index < info.n_pots and 0 <= tap < info.n_taps):
            raise ValueError(f"index must be < {info.n_pots} and tap < {info.n_taps}")
        self._exchange(Cmd.SET_ONE, struct.pack("<HH", index, tap))

    def park(self) -> None:
        """Every pot to its highest-resistance tap (the safe state)."""
        self._exchange(Cmd.PARK)

    def ping(self) -> None:
        self._exchange(Cmd.PING)

    def set_watchdog(self, timeout_ms: int) -> None:
        """Watchdog timeout (ms); 0 disables it."""
        self._exchange(Cmd.SET_WATCHDOG, struct.pack("<H", timeout_ms))

    def status(self) -> FirmwareStatus:
        body = self._exchange(Cmd.GET_STATUS)
        flags, crc_errors, frames_ok, uptime = struct.unpack_from("<BHHI", body)
        return FirmwareStatus(bool(flags & 1), bool(flags & 2), bool(flags & 4), crc_errors,
                              frames_ok, uptime)

    def close(self) -> None:
        self.transport.close()
