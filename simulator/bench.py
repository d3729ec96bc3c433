"""The emulated bench: the simulator's bench model behind the real transports.

* :class:`PotFirmware` implements the potentiometer controller's side of
  ``drivers/firmware/PROTOCOL.md`` (written from that document, independently of the
  host driver), including sequence-number replay, status codes, the watchdog and what
  a reset does (deaf during the bootloader's delay, then a BOOT packet; taps kept on an
  external or watchdog reset, parked on power-on or brown-out).
* :class:`PtyLink` serves it on a pseudo-terminal, so the host driver opens a real
  tty path; it can drop, corrupt and delay bytes, and go deaf for a while (a USB
  hiccup), and it keeps a traffic log. Its :meth:`PtyLink.port_class` is a pyserial
  class whose DTR line is wired to the controller's reset pin, as on an Arduino.
* :class:`EmulatedDaq` answers the DAQ adapter's small interface
  (``acquire``/``zero``/``close``) from the same bench model the simulator uses
  (a :class:`~clln.simulator.backend.SimulatedBackend` whose taps follow the
  firmware's), so a protocol run through the drivers on the emulator matches the
  simulator run with the same model and seed.
* :class:`BenchModel` is that bench model: a SimulatedBackend plus what only a physical
  bench has: injected edge faults (:class:`EdgeFaults`: a stuck wiper, an open edge, a
  shorted pot), readings of the AI channels with their inputs grounded, and the
  two-point resistance between two nodes that an SMU on a fixture measures.
* :class:`~clln.simulator.smu.EmulatedSmu` (in ``simulator/smu.py``) is the SMU on the
  calibration fixture: a Keithley 2400 or 2450 answering from the bench model.
"""

from __future__ import annotations

import binascii
import json
import os
import select
import struct
import threading
import time
import tty
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import serial
from cobs import cobs

from clln.controller.backend import SteppedEdges
from clln.controller.errors import ProtocolError
from clln.simulator.backend import SimulatedBackend
from clln.simulator.imperfections import adc_read
from clln.simulator.smu import EmulatedSmu

VERSION = (1, 1)
OK, UNKNOWN_COMMAND, BAD_LENGTH, OUT_OF_RANGE, NO_HANDSHAKE, INCOMPATIBLE, HARDWARE_FAULT = range(7)
HELLO, SET_ALL, GET_ALL, SET_ONE, PARK, PING, SET_WATCHDOG, GET_STATUS, BOOT = range(1, 10)
RESET_CAUSE = {"power-on": 0x01, "external": 0x02, "brown-out": 0x04, "watchdog": 0x08}  # MCUSR bits
BOOT_WATCHDOG_MS = 2000  # watchdog armed at every start; also the boot guard's time


class TrafficLog:
    """Everything that crossed the emulated bench's interfaces, in order.

    Entries are dicts ``{"t": seconds, "channel": ..., ...}``; channels are
    ``serial-in`` (bytes from the host), ``serial-out`` (bytes to the host), ``ao``
    (analog output levels written) and ``event``. With ``path`` set, every entry is
    also appended to that file as one JSON line (so another process can read it).
    """

    def __init__(self, path: str | Path | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.entries: list[dict[str, Any]] = []
        self.path = Path(path) if path else None
        self.clock = clock
        self._lock = threading.Lock()

    def add(self, channel: str, **data: Any) -> None:
        entry = {"t": self.clock(), "channel": channel, **data}
        with self._lock:
            self.entries.append(entry)
            if self.path is not None:
                with self.path.open("a") as f:
                    f.write(json.dumps(entry) + "\n")

    def of(self, channel: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.entries if e["channel"] == channel]


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


@dataclass
class Faults:
    """Faults injected on the serial link, per byte and direction.

    Attributes
    ----------
    drop, corrupt : probability that a byte is lost / has a random bit flipped.
    delay : seconds added before each reply is sent.
    seed : random seed of the fault pattern.
    """

    drop: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    seed: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def apply(self, data: bytes) -> bytes:
        if not (self.drop or self.corrupt) or not data:
            return data
        arr = np.frombuffer(data, dtype=np.uint8).copy()
        flip = self.rng.random(arr.size) < self.corrupt
        arr[flip] ^= (1 << self.rng.integers(0, 8, int(flip.sum()))).astype(np.uint8)
        keep = self.rng.random(arr.size) >= self.drop
        return arr[keep].tobytes()


def dtr_reset_port_class(reset: Callable[[str], object]) -> type[serial.Serial]:
    """A pyserial class whose DTR line drives a controller's reset pin through a
    capacitor, as on an Arduino: asserting DTR (opening the port with ``dtr`` true,
    pyserial's default) calls ``reset("external")``; a port opened with DTR low does not.
    A pty has no modem lines, so this models the wire for the emulated controllers."""

    class EmulatedPort(serial.Serial):
        _line = False

        def _update_dtr_state(self) -> None:
            if self._dtr_state and not self._line:
                reset("external")
            self._line = bool(self._dtr_state)

        def close(self) -> None:
            self._line = False
            super().close()

    return EmulatedPort


class PtyLink:
    """Serves a :class:`PotFirmware` on a pseudo-terminal in a background thread.

    ``path`` is the tty the host opens (e.g. with pyserial; with :meth:`port_class`, the
    open resets the controller as an Arduino's DTR auto-reset does). ``deafen(seconds)``
    makes the controller ignore the line for a while (a disconnect the host sees as
    timeouts); ``reset(cause)`` resets it; ``close()`` ends the link.
    """

    def __init__(self, firmware: PotFirmware, *, faults: Faults | None = None,
                 log: TrafficLog | None = None) -> None:
        self.firmware = firmware
        self.faults = faults or Faults()
        self.log = log or TrafficLog()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._deaf_until = 0.0
        self._thread = threading.Thread(target=self._serve, name="pot-firmware-pty", daemon=True)
        self._thread.start()

    def deafen(self, seconds: float) -> None:
        self._deaf_until = time.monotonic() + seconds
        self.log.add("event", what=f"link down for {seconds} s")

    def reset(self, cause: str = "external") -> None:
        """Reset the emulated microcontroller (see :meth:`PotFirmware.reset`)."""
        self.firmware.reset(cause)
        self.log.add("event", what=f"reset ({cause})")

    def port_class(self) -> type[serial.Serial]:
        """A pyserial class for :attr:`path` whose DTR line resets the controller (see
        :func:`dtr_reset_port_class`)."""
        return dtr_reset_port_class(self.reset)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.005)
            except (OSError, ValueError):
                return
            unprompted = self.faults.apply(self.firmware.tick())
            if unprompted:
                self.log.add("serial-out", data=unprompted.hex())
                try:
                    os.write(self._master, unprompted)
                except OSError:
                    return
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            self.log.add("serial-in", data=data.hex())
            if time.monotonic() < self._deaf_until:
                continue
            reply = self.firmware.receive(self.faults.apply(data))
            if reply:
                if self.faults.delay:
                    time.sleep(self.faults.delay)
                reply = self.faults.apply(reply)
                self.log.add("serial-out", data=reply.hex())
                try:
                    os.write(self._master, reply)
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class EmulatedDaq:
    """The DAQ adapter's interface, answered from the bench model.

    Parameters
    ----------
    model : the bench model (a stepped SimulatedBackend; its network's roles say which
        nodes the sources and clamps drive).
    firmware : the emulated potentiometer controller whose taps set the model's edges.
    ai_nodes : (n_ai,) node read by each AI channel.
    chain : (m,) firmware pot index (chain position) of every edge.
    log : traffic log (AO levels written).
    clamp_switch : whether switches connect the clamp outputs only when engaged; without
        them the clamp outputs drive their nodes in every measurement.

    The DAQ's set-up (ranges, averaging window, convert rate, timing) is modelled by the
    bench model's imperfection parameters, which ``clln.benchrun.bench_model`` takes from
    the same ``drivers.daq.plan_daq`` set-up the NI driver is given.
    """

    def __init__(self, model: SimulatedBackend, firmware: PotFirmware, ai_nodes: np.ndarray,
                 chain: np.ndarray, log: TrafficLog | None = None, *, clamp_switch: bool = True) -> None:
        self.model = model
        self.clamp_switch = clamp_switch
        self.firmware = firmware
        self.ai_nodes = np.asarray(ai_nodes, dtype=np.int64)
        self.chain = np.asarray(chain, dtype=np.int64)
        roles = model.network.roles
        self.n_sources, self.n_clamps = len(roles.sources), len(roles.clamps)
        self.n_ao = self.n_sources + self.n_clamps
        self.n_ai = self.ai_nodes.size
        self.log = log or TrafficLog()
        self.ao_levels = np.zeros(self.n_ao)
        self.clamps_engaged = False
        self.acquisitions = 0
        self.parked_acquisitions = 0  # measurements taken while the controller was parked

    def acquire(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        """(B, n_ai) readings and (B,) timestamps for B boundary conditions ao (B, n_ao)."""
        ao = np.atleast_2d(np.asarray(ao, dtype=float))
        with self.firmware.lock:
            taps = self.firmware.taps[self.chain]
            parked = self.firmware.parked or self.firmware.booting
        self.model.set_taps(taps)
        self.parked_acquisitions += parked
        self.log.add("ao", levels=ao[-1].tolist(), samples=int(ao.shape[0]), clamps=clamps_engaged,
                     parked=parked)
        sources = ao[:, : self.n_sources]
        # Without a clamp switch the clamp outputs always hold their nodes.
        clamps = ao[:, self.n_sources:] if clamps_engaged or not self.clamp_switch else None
        meas = self.model.measure(sources, clamps)
        self.ao_levels = ao[-1].copy()  # AO holds the last sample after a finite waveform
        self.clamps_engaged = clamps_engaged
        self.acquisitions += 1
        return meas.voltages[:, self.ai_nodes], meas.timestamps

    @property
    def clamps_switched(self) -> bool:
        """Whether switches disconnect the clamp outputs in free measurements."""
        return self.clamp_switch

    def read_grounded(self, repeats: int) -> np.ndarray:
        """(repeats, n_ai) readings, V, of every AI channel with its input grounded."""
        if not isinstance(self.model, BenchModel):
            return np.zeros((repeats, self.n_ai))
        self.acquisitions += 1
        return self.model.read_grounded(repeats)[:, self.ai_nodes]

    def zero(self) -> None:
        """Every AO to 0 V and the clamp switches open."""
        self.ao_levels = np.zeros(self.n_ao)
        self.clamps_engaged = False
        self.log.add("ao", levels=self.ao_levels.tolist(), samples=0, clamps=False)

    def close(self) -> None:
        self.zero()


class EmulatedBench:
    """A whole emulated bench: the potentiometer controller on a pty, the DAQ, one log.

    Parameters
    ----------
    model : the bench model (stepped SimulatedBackend with the bench's network and roles).
    n_pots : pots on the emulated controller (at least the number of edges).
    chain : (m,) pot index of every edge.
    ai_nodes : (n_ai,) node read by each AI channel.
    faults : faults on the serial link.
    log_path : optional file receiving the traffic log as JSON lines.
    controller : a potentiometer controller already served on a tty, used instead of the
        Python firmware: an object with ``path``, ``taps``, ``lock`` and ``close()``, such
        as :class:`clln.simulator.avr.SimavrPotBank` (the compiled firmware under simavr).
    boot_delay : seconds the emulated controller is deaf after a reset (its bootloader).
    clamp_switch : whether the clamp outputs are switched (see :class:`EmulatedDaq`).
    wiring : wiring mistakes (swapped AI channels, pots swapped in the chain): the
        emulated bench is wired differently from what ``ai_nodes`` and ``chain`` say.
    """

    def __init__(self, model: SimulatedBackend, *, n_pots: int, chain: np.ndarray,
                 ai_nodes: np.ndarray, faults: Faults | None = None,
                 log_path: str | Path | None = None,
                 smu_nodes: tuple[int, int] | None = None, smu_seed: int = 0,
                 smu_model: str = "2400", controller: Any = None,
                 boot_delay: float = 0.05, clamp_switch: bool = True,
                 wiring: WiringFaults | None = None) -> None:
        assert model.edges.kind == "stepped"
        wiring = wiring or WiringFaults()
        ai_nodes, chain = wiring.apply(np.asarray(ai_nodes, dtype=np.int64), np.asarray(chain, dtype=np.int64))
        self.log = TrafficLog(log_path)
        if controller is None:
            self.firmware = PotFirmware(n_pots, model.edges.n_taps,  # type: ignore[union-attr]
                                        boot_delay=boot_delay)
            self.link = PtyLink(self.firmware, faults=faults, log=self.log)
        else:
            self.firmware = self.link = controller
        self.daq = EmulatedDaq(model, self.firmware, ai_nodes, chain, self.log, clamp_switch=clamp_switch)
        self.model = model
        self.chain = chain
        self.wiring = wiring
        self.smu: EmulatedSmu | None = None
        if smu_nodes is not None:
            if not isinstance(model, BenchModel):
                raise TypeError("an emulated SMU needs a BenchModel")
            self.smu = EmulatedSmu(model, smu_nodes, sync=self.sync_taps, seed=smu_seed,
                                   instrument=smu_model)

    def sync_taps(self) -> None:
        """Put the model's edges at the firmware's taps (the DAQ does this per acquisition)."""
        with self.firmware.lock:
            taps = self.firmware.taps[self.chain]
        self.model.set_taps(taps)

    def serial_bytes(self) -> int:
        """Bytes that crossed the serial link so far, both directions."""
        return sum(len(e["data"]) // 2 for e in self.log.entries
                   if e["channel"] in ("serial-in", "serial-out"))

    @property
    def port(self) -> str:
        """The tty path the host driver opens."""
        return self.link.path

    @property
    def port_class(self) -> type[serial.Serial]:
        """The pyserial class that opens :attr:`port` with the Arduino's DTR reset wired."""
        return self.link.port_class()

    def close(self) -> None:
        self.link.close()


@dataclass(frozen=True)
class WiringFaults:
    """Wiring mistakes injected into the emulated bench (an emulator option: a bench file
    describes the wiring as intended).

    Attributes
    ----------
    swap_ai : pairs of AI channel indices whose inputs are exchanged (channel a reads the
        node the map gives to channel b, and the other way round).
    swap_chain : pairs of chain positions whose pots are exchanged (the pot at position p
        sits in the edge the map puts at position q).
    """

    swap_ai: tuple[tuple[int, int], ...] = ()
    swap_chain: tuple[tuple[int, int], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.swap_ai or self.swap_chain)

    def apply(self, ai_nodes: np.ndarray, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (ai_nodes, chain) the emulated bench really has."""
        ai_nodes, chain = ai_nodes.copy(), chain.copy()
        for a, b in self.swap_ai:
            ai_nodes[[a, b]] = ai_nodes[[b, a]]
        for p, q in self.swap_chain:
            at_p, at_q = chain == p, chain == q
            chain[at_p], chain[at_q] = q, p
        return ai_nodes, chain

    @classmethod
    def parse(cls, specs: list[str], ai: list[str], chain: list[int]) -> WiringFaults:
        """From ``swap-ai:A:B`` (AI channel names or indices) and ``swap-chain:P:Q``
        (chain positions) strings."""
        swap_ai: list[tuple[int, int]] = []
        swap_chain: list[tuple[int, int]] = []
        for spec in specs:
            parts = spec.split(":")
            if len(parts) != 3 or parts[0] not in ("swap-ai", "swap-chain") or parts[1] == parts[2]:
                raise ProtocolError(f"fault {spec!r}: expected swap-ai:A:B or swap-chain:P:Q with A != B")
            if parts[0] == "swap-ai":
                pair = [ai.index(p) if p in ai else int(p) if p.isdigit() else -1 for p in parts[1:]]
                if not all(0 <= k < len(ai) for k in pair):
                    raise ProtocolError(f"fault {spec!r}: AI channels are {', '.join(ai)} (or 0..{len(ai) - 1})")
                swap_ai.append((pair[0], pair[1]))
            else:
                pair = [int(p) if p.isdigit() else -1 for p in parts[1:]]
                if not all(k in chain for k in pair):
                    raise ProtocolError(f"fault {spec!r}: chain positions in use are "
                                        f"{', '.join(map(str, sorted(chain)))}")
                swap_chain.append((pair[0], pair[1]))
        return cls(tuple(swap_ai), tuple(swap_chain))

    def describe(self) -> dict[str, Any]:
        return {"swap_ai": [list(p) for p in self.swap_ai], "swap_chain": [list(p) for p in self.swap_chain]}


# -- the bench model with what only a physical bench has ---------------------------------


@dataclass(frozen=True)
class EdgeFaults:
    """Edge faults injected into the bench model.

    Attributes
    ----------
    stuck : edge -> tap its wiper is stuck at: tap commands are ignored (the
        potentiometer's register still reads back what was written).
    open : edges that conduct only ``open_conductance`` (a broken trace: 1 GOhm of
        leakage, so the physics stays solvable even when an open edge isolates a node).
    short : edges bypassed down to ``short_resistance`` (a solder bridge across the
        series resistor and the pot).
    """

    stuck: Mapping[int, int] = field(default_factory=dict)
    open: tuple[int, ...] = ()
    short: tuple[int, ...] = ()
    open_conductance: float = 1e-9
    short_resistance: float = 10.0

    def __bool__(self) -> bool:
        return bool(self.stuck or self.open or self.short)

    @classmethod
    def parse(cls, specs: list[str], n_edges: int, n_taps: int) -> EdgeFaults:
        """From ``stuck:EDGE[:TAP]``, ``open:EDGE``, ``short:EDGE`` strings (the stuck tap
        defaults to the middle one)."""
        stuck: dict[int, int] = {}
        opened: list[int] = []
        shorted: list[int] = []
        for spec in specs:
            parts = spec.split(":")
            try:
                kind, edge = parts[0], int(parts[1])
                tap = int(parts[2]) if len(parts) > 2 else n_taps // 2
                if len(parts) > (3 if kind == "stuck" else 2):
                    raise ValueError
            except (IndexError, ValueError):
                raise ProtocolError(f"fault {spec!r}: expected stuck:EDGE[:TAP], open:EDGE or "
                                    f"short:EDGE") from None
            if kind not in ("stuck", "open", "short"):
                raise ProtocolError(f"fault {spec!r}: unknown kind {kind!r}; allowed: stuck, open, short")
            if not 0 <= edge < n_edges:
                raise ProtocolError(f"fault {spec!r}: edge {edge} is not in 0..{n_edges - 1}")
            if not 0 <= tap < n_taps:
                raise ProtocolError(f"fault {spec!r}: tap {tap} is not in 0..{n_taps - 1}")
            if kind == "stuck":
                stuck[edge] = tap
            else:
                (opened if kind == "open" else shorted).append(edge)
        return cls(stuck, tuple(opened), tuple(shorted))

    def describe(self) -> dict[str, Any]:
        return {"stuck": {str(k): v for k, v in self.stuck.items()}, "open": list(self.open),
                "short": list(self.short)}


class BenchModel(SimulatedBackend):
    """The emulated bench's model: a stepped :class:`SimulatedBackend` with edge faults,
    grounded-input readings and the two-point resistance an SMU measures.

    Parameters are those of :class:`SimulatedBackend`, plus ``faults``.
    """

    def __init__(self, *args: Any, faults: EdgeFaults | None = None, **kwargs: Any) -> None:
        self.faults = faults or EdgeFaults()
        super().__init__(*args, **kwargs)
        m = self.network.n_edges
        bad = [j for j in (*self.faults.stuck, *self.faults.open, *self.faults.short) if not 0 <= j < m]
        if bad:
            raise ProtocolError(f"faults name edges {bad}, not in 0..{m - 1}")
        if self.faults.stuck:
            state = self.read_edges()
            assert state.taps is not None
            self.set_taps(state.taps)

    def set_taps(self, taps: np.ndarray) -> None:
        """Commanded taps; a stuck wiper stays where it is stuck."""
        taps = np.array(taps, dtype=np.int64)
        for edge, tap in self.faults.stuck.items():
            taps[edge] = tap
        super().set_taps(taps)

    def true_conductances(self, twin: int = 0, time: float | None = None) -> np.ndarray:
        g = super().true_conductances(twin, time)
        if not (self.faults.open or self.faults.short):
            return g
        g = np.array(g, dtype=float)
        g[list(self.faults.open)] = self.faults.open_conductance
        g[list(self.faults.short)] = 1.0 / self.faults.short_resistance
        return g

    def true_table(self) -> np.ndarray:
        """(m, n_taps) true conductance (S) of every edge at every tap, faults included, at
        the reference temperature. Emulator only: a bench has no such oracle."""
        edges = self.edges
        assert isinstance(edges, SteppedEdges)
        m, n_taps = edges.table.shape
        bench = self._bench
        if bench is None:
            table = edges.table.copy()
        else:
            twin = bench.twins[0]
            assert twin.fixed is not None and twin.element is not None
            table = 1.0 / (twin.fixed + twin.element)
        for edge, tap in self.faults.stuck.items():
            table[edge] = table[edge, tap]
        table[list(self.faults.open)] = self.faults.open_conductance
        table[list(self.faults.short)] = 1.0 / self.faults.short_resistance
        return table

    def true_channels(self) -> dict[str, np.ndarray]:
        """The DAQ channels' true errors (per node's AI channel, per AO channel) and the
        source output impedance. Emulator only."""
        bench = self._bench
        n = self.network.n_nodes
        n_ao = len(self.network.roles.sources) + len(self.network.roles.clamps)
        if bench is None:
            return {"ai_gain": np.zeros(n), "ai_offset": np.zeros(n), "ao_gain": np.zeros(n_ao),
                    "ao_offset": np.zeros(n_ao), "source_impedance": np.zeros(n_ao)}
        return {"ai_gain": bench.ai_gain.copy(), "ai_offset": bench.ai_offset.copy(),
                "ao_gain": bench.ao_gain.copy(), "ao_offset": bench.ao_offset.copy(),
                "source_impedance": np.full(n_ao, self.imperfections.source_impedance)}

    def read_grounded(self, repeats: int) -> np.ndarray:
        """(repeats, n) AI readings, V, with every input grounded: each channel's offset,
        noise and quantization (``repeats`` samples of the simulated clock)."""
        n = self.network.n_nodes
        self.clock.advance(repeats)
        bench = self._bench
        if bench is None:
            return np.zeros((repeats, n))
        p = bench.params
        return adc_read(np.zeros((repeats, n)), gain=bench.ai_gain, offset=bench.ai_offset,
                        noise_rms=p.ai_noise_rms, bits=p.ai_bits, full_range=p.ai_range,
                        averaging=p.averaging, rng=self._noise)

    def two_point_resistance(self, a: int, b: int) -> float:
        """Resistance (ohm) between nodes a and b with every output at 0 V: sources held
        through the source output impedance, grounds at 0 V, clamps open (floating)."""
        net = self.network
        n = net.n_nodes
        g = self.true_conductances()
        e = net.edges
        lap = np.zeros((n, n))
        np.add.at(lap, (e[:, 0], e[:, 0]), g)
        np.add.at(lap, (e[:, 1], e[:, 1]), g)
        np.add.at(lap, (e[:, 0], e[:, 1]), -g)
        np.add.at(lap, (e[:, 1], e[:, 0]), -g)
        held = set(net.roles.grounds)
        z = self.imperfections.source_impedance
        for s in net.roles.sources:
            if z > 0:
                lap[s, s] += 1.0 / z
            else:
                held.add(s)
        keep = np.array([i for i in range(n) if i not in held])
        rhs = np.zeros(n)
        rhs[a] += 1.0
        rhs[b] -= 1.0
        v = np.zeros(n)
        v[keep] = np.linalg.solve(lap[np.ix_(keep, keep)], rhs[keep])
        return float(v[a] - v[b])
