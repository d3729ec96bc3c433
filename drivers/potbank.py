"""Driver of the potentiometer controller (``firmware/PROTOCOL.md``) over a serial port.

``PotBank(transport)`` takes an *open* ``serial.SerialBase`` (a real port or a pty);
:func:`open_port` is the factory that opens a bench file's device path. Construction
does no I/O; :meth:`PotBank.connect` waits for the firmware's BOOT packet (opening the
port resets an Arduino through DTR) and does the handshake.

Once connected, :meth:`PotBank.start_keepalive` keeps the firmware's watchdog fed from a
background thread (every exchange holds :attr:`PotBank.lock`), and
:meth:`PotBank.check_running` raises :class:`~clln.drivers.errors.FirmwareParked` when
the firmware parked its pots or restarted behind the host's back.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import serial

from clln.controller.events import emit
from clln.drivers.errors import (
    ControllerSilent,
    DeviceLost,
    DeviceNotFound,
    DriverError,
    FirmwareError,
    FirmwareParked,
    FirmwareReset,
    FrameError,
    IncompatibleFirmware,
    PotBankTimeout,
    ReadbackMismatch,
)
from clln.drivers.wire import (
    PROTOCOL_VERSION,
    STATUS_NAMES,
    BootInfo,
    Cmd,
    FrameReader,
    Packet,
    encode_packet,
    is_boot,
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


def open_port(port: str, baudrate: int = 115200, *, reset_on_open: bool = True,
              port_class: type[serial.Serial] = serial.Serial) -> serial.Serial:
    """Open a serial device path (never a pyserial URL: nothing but the device is touched).

    ``reset_on_open`` false holds DTR low from the start, so a board with DTR auto-reset
    (an Arduino) is not reset by the open. ``port_class`` is the pyserial class used
    (the emulated bench passes one whose DTR line is wired to its controller's reset).
    """
    if "://" in port:
        raise DeviceNotFound(f"serial port {port!r}: a device path is needed (such as /dev/ttyACM0), "
                             f"not a URL")
    transport = port_class()
    try:
        transport.port = port
        transport.baudrate = baudrate
        transport.timeout = 0.01
        transport.write_timeout = 1.0
        transport.dtr = reset_on_open  # set before open(): the line is driven as the port opens
        transport.open()
    except (serial.SerialException, OSError, ValueError, OverflowError) as exc:
        reason = str(exc)
        hint = ("; is the controller plugged in? its stable name is under /dev/serial/by-id"
                if "No such file" in reason else
                "; add your user to the port's group (dialout on Debian) and log in again"
                if "Permission denied" in reason else "")
        raise DeviceNotFound(f"serial port {port!r}: cannot open ({reason}){hint}") from None
    return transport


class PotBank:
    """The potentiometer bank behind its microcontroller.

    Parameters
    ----------
    transport : an open serial port.
    reply_timeout : seconds to wait for a reply, plus the frame's transmission time.
    retries : resends of a request without a valid reply before giving up.
    write_retries : repeats of a ``SET_ALL`` whose read-back differs.
    boot_timeout : seconds :meth:`connect` waits for the BOOT packet when ``expect_boot``;
        otherwise the HELLO is retried for at least this long (a reset nobody expected).
    expect_boot : the port was just opened with DTR asserted (the board resets).
    clock : monotonic clock (s), injectable for tests.

    Attributes
    ----------
    frames_sent, retries_used, frames_dropped : traffic counters.
    boot : the last BOOT packet seen (None if none came).
    lock : held by every exchange (the keep-alive thread shares the port through it).
    """

    def __init__(
        self,
        transport: serial.SerialBase,
        *,
        reply_timeout: float = 0.05,
        retries: int = 20,
        write_retries: int = 3,
        boot_timeout: float = 0.0,
        expect_boot: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.reply_timeout = reply_timeout
        self.retries = retries
        self.write_retries = write_retries
        self.boot_timeout = boot_timeout
        self.expect_boot = expect_boot
        self.clock = clock
        self.info: FirmwareInfo | None = None
        self.boot: BootInfo | None = None
        self.watchdog_ms: int | None = None
        self.lock = threading.RLock()
        self._seq = 0
        self._reader = FrameReader()
        self.frames_sent = 0
        self.retries_used = 0
        self._last_write = clock()
        self._fault: DriverError | None = None
        self._keepalive: tuple[threading.Thread, threading.Event] | None = None

    @property
    def frames_dropped(self) -> int:
        return self._reader.dropped

    # -- transport -----------------------------------------------------------

    @property
    def port(self) -> str:
        return str(getattr(self.transport, "port", None) or "?")

    def _byte_time(self) -> float:
        baud = getattr(self.transport, "baudrate", 115200) or 115200
        return 10.0 / baud

    def _exchange(self, cmd: int, payload: bytes = b"", *, span: float = 0.0) -> bytes:
        """Send a request, return the reply payload after its status byte.

        Retries with the same sequence number on timeout (``retries`` times, and for at
        least ``span`` seconds); raises FirmwareError on an error status, PotBankTimeout
        when every attempt timed out, FirmwareReset on a BOOT packet after the handshake,
        and first any fault the keep-alive thread met.
        """
        with self.lock:
            if self._fault is not None:
                fault, self._fault = self._fault, None
                raise fault
            seq = self._seq
            self._seq = (self._seq + 1) % 256
            frame = encode_packet(Packet(seq, cmd, payload))
            deadline_extra = len(frame) * self._byte_time() * 2
            start = self.clock()
            attempts = 0
            while attempts <= self.retries or self.clock() - start < span:
                if attempts:
                    self.retries_used += 1
                    emit("retry", f"serial command {cmd:#04x} resent (attempt {attempts + 1})",
                         command=cmd, attempt=attempts + 1)
                attempts += 1
                try:
                    self._drain()
                    self.transport.write(b"\x00" + frame)
                    self._last_write = self.clock()
                    self.frames_sent += 1
                    reply = self._await(seq, cmd, self.reply_timeout + deadline_extra)
                except (serial.SerialException, OSError) as exc:
                    raise DeviceLost(f"potentiometer controller on {self.port} went away ({exc}); "
                                     f"check its USB cable and power") from None
                if reply is not None:
                    status = reply.payload[0] if reply.payload else 0xFF
                    if status != 0:
                        name = STATUS_NAMES.get(status, f"status {status:#04x}")
                        raise FirmwareError(f"potentiometer controller answered {name} to command "
                                            f"{cmd:#04x}", status)
                    return reply.payload[1:]
            raise PotBankTimeout(f"potentiometer controller on {self.port} did not answer command "
                                 f"{cmd:#04x} after {attempts} attempts")

    def _drain(self) -> None:
        """Discard what waits in the input buffer (late replies, garbage), noticing a BOOT
        packet among it, and forget any partial frame."""
        waiting = self.transport.in_waiting
        if waiting:
            self._scan(self._reader.feed(self.transport.read(waiting)))
        self._reader.reset()

    def _scan(self, packets: list[Packet]) -> list[Packet]:
        """The packets that are not BOOT announcements (those are recorded, and raise
        FirmwareReset after the handshake)."""
        rest = []
        for packet in packets:
            if not is_boot(packet):
                rest.append(packet)
                continue
            try:
                self.boot = BootInfo.from_packet(packet)
            except FrameError:
                self.boot = BootInfo(0, (0, 0), True)
            if self.info is not None:
                pots = ("parked its pots" if self.boot.parked else
                        "kept its taps but parks them unless a host says HELLO within its watchdog time")
                raise FirmwareReset(f"potentiometer controller on {self.port} restarted mid-run "
                                    f"({self.boot.causes}) and {pots}")
        return rest

    def _await(self, seq: int, cmd: int, timeout: float) -> Packet | None:
        """The matching reply, or None on timeout or as soon as a damaged frame arrives
        (the caller then resends at once instead of waiting out the timeout)."""
        deadline = self.clock() + timeout
        dropped = self._reader.dropped
        while self.clock() < deadline:
            data = self.transport.read(max(1, self.transport.in_waiting))
            if not data:
                continue
            for packet in self._scan(self._reader.feed(data)):
                if packet.seq == seq and packet.cmd == (cmd | Cmd.REPLY) and packet.payload:
                    return packet
            if self._reader.dropped != dropped:
                return None
        return None

    def _await_boot(self, timeout: float) -> BootInfo | None:
        """Wait up to ``timeout`` s for the BOOT packet; anything else is ignored."""
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            data = self.transport.read(max(1, self.transport.in_waiting))
            if data:
                self._scan(self._reader.feed(data))
                if self.boot is not None:
                    return self.boot
        return None

    # -- commands ------------------------------------------------------------

    def connect(self) -> FirmwareInfo:
        """Handshake: identify the firmware and refuse an incompatible one.

        With ``expect_boot`` it first waits up to ``boot_timeout`` for the BOOT packet;
        when none came (no auto-reset, DTR held low, a 1.0 firmware) the HELLO is retried
        until ``boot_timeout`` has passed as well as ``retries`` times. A firmware that
        never answers raises ControllerSilent (a user error with what to check).
        """
        with self.lock:
            start = self.clock()
            self.info, self.boot = None, None
            if self.expect_boot and self.boot_timeout > 0:
                self._await_boot(self.boot_timeout)
            span = 0.0 if self.expect_boot else self.boot_timeout
            try:
                return self._hello(span)
            except PotBankTimeout:
                raise ControllerSilent(self._silence(self.clock() - start)) from None

    def _silence(self, waited: float) -> str:
        baud = getattr(self.transport, "baudrate", "?")
        boot = (f"no BOOT packet within {self.boot_timeout:g} s of opening, " if self.expect_boot
                else "opened without a reset, ")
        return (f"potentiometer controller on {self.port} did not answer the handshake ({boot}"
                f"{waited:.1f} s in all at {baud} baud): check that {self.port} is its port "
                f"(ls -l /dev/serial/by-id), that the firmware is flashed (drivers/firmware), "
                f"that [serial] baudrate matches the firmware's, and that the board is not held "
                f"in reset or still booting ([serial] reset_on_open, boot_timeout)")

    def _hello(self, span: float) -> FirmwareInfo:
        try:
            body = self._exchange(Cmd.HELLO, bytes(PROTOCOL_VERSION), span=span)
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
        self.watchdog_ms = timeout_ms

    def status(self) -> FirmwareStatus:
        body = self._exchange(Cmd.GET_STATUS)
        if len(body) < 9:
            raise FirmwareError(f"GET_STATUS returned {len(body)} bytes, expected 9", 0x02)
        flags, crc_errors, frames_ok, uptime = struct.unpack_from("<BHHI", body)
        return FirmwareStatus(bool(flags & 1), bool(flags & 2), bool(flags & 4), crc_errors,
                              frames_ok, uptime)

    def check_running(self) -> FirmwareStatus:
        """GET_STATUS, raising FirmwareParked if the firmware parked its pots or its
        watchdog tripped since the last status read, FirmwareReset if it lost the
        handshake (it restarted). Called before every measurement batch."""
        st = self.status()
        if not st.handshake:
            raise FirmwareReset(f"potentiometer controller on {self.port} has restarted (no "
                                f"handshake): its taps are no longer known; nothing was measured")
        if st.parked or st.watchdog_tripped:
            why = (f"its watchdog tripped: the host was silent for more than {self.watchdog_ms} ms"
                   if st.watchdog_tripped else "it is parked")
            emit("watchdog", f"controller parked ({why})", parked=st.parked,
                 tripped=st.watchdog_tripped)
            raise FirmwareParked(f"potentiometer controller on {self.port} parked every pot ({why}); "
                                 f"nothing was measured on the parked network")
        return st

    # -- keep-alive ----------------------------------------------------------

    def start_keepalive(self, idle: float) -> None:
        """PING from a background thread whenever nothing was sent for ``idle`` seconds
        (a quarter of the watchdog is a safe choice), so the watchdog stays fed while the
        host computes, stores or waits. A fault it meets is raised by the next command."""
        self.stop_keepalive()
        if not math.isfinite(idle) or idle <= 0:
            return
        stop = threading.Event()

        def feed() -> None:
            while not stop.wait(idle / 4):
                if self.clock() - self._last_write < idle:
                    continue
                with self.lock:
                    if stop.is_set() or self.clock() - self._last_write < idle:
                        continue
                    try:
                        self._exchange(Cmd.PING)
                    except DriverError as exc:
                        self._fault = exc
                        return

        thread = threading.Thread(target=feed, name=f"potbank-keepalive {self.port}", daemon=True)
        self._keepalive = (thread, stop)
        thread.start()

    def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            thread, stop = self._keepalive
            stop.set()
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)
            self._keepalive = None

    def close(self) -> None:
        self.stop_keepalive()
        self.transport.close()
