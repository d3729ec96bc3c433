"""The emulated bench: the simulator's bench model behind the real transports.

* :class:`PotFirmware` implements the potentiometer controller's side of
  ``drivers/firmware/PROTOCOL.md`` (written from that document, independently of the
  host driver), including sequence-number replay, status codes and the watchdog.
* :class:`PtyLink` serves it on a pseudo-terminal, so the host driver opens a real
  tty path; it can drop, corrupt and delay bytes, and go deaf for a while (a USB
  hiccup), and it keeps a traffic log.
* :class:`EmulatedDaq` answers the DAQ adapter's small interface
  (``acquire``/``zero``/``close``) from the same bench model the simulator uses
  (a :class:`~clln.simulator.backend.SimulatedBackend` whose taps follow the
  firmware's), so a protocol run through the drivers on the emulator matches the
  simulator run with the same model and seed.
* :class:`BenchModel` is that bench model: a SimulatedBackend plus what only a physical
  bench has: injected edge faults (:class:`EdgeFaults`: a stuck wiper, an open edge, a
  shorted pot), readings of the AI channels with their inputs grounded, and the
  two-point resistance between two nodes that an SMU on a fixture measures.
* :class:`EmulatedSmu` answers the SCPI that ``drivers.visa.Smu`` sends (a pyvisa
  resource look-alike, as pyvisa-sim is for fixed replies) from the bench model.
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
from cobs import cobs

from clln.controller.backend import SteppedEdges
from clln.controller.errors import ProtocolError
from clln.simulator.backend import SimulatedBackend
from clln.simulator.imperfections import adc_read

VERSION = (1, 0)
OK, UNKNOWN_COMMAND, BAD_LENGTH, OUT_OF_RANGE, NO_HANDSHAKE, INCOMPATIBLE, HARDWARE_FAULT = range(7)
HELLO, SET_ALL, GET_ALL, SET_ONE, PARK, PING, SET_WATCHDOG, GET_STATUS = range(1, 9)


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
    clock : monotonic clock (s), for the watchdog and uptime.
    """

    def __init__(self, n_pots: int, n_taps: int, *, park_tap: int | None = None,
                 name: str = "clln bench emulator", clock: Callable[[], float] = time.monotonic) -> None:
        if not (1 <= n_pots <= 256 and 2 <= n_taps <= 65535):
            raise ValueError(f"an emulated controller has 1..256 pots of 2..65535 taps, not {n_pots} x {n_taps}")
        self.n_pots, self.n_taps = n_pots, n_taps
        self.park_tap = n_taps - 1 if park_tap is None else park_tap
        self.name = name
        self.clock = clock
        self.taps = np.full(n_pots, self.park_tap, dtype=np.int64)
        self.parked = True
        self.tripped = False
        self.handshake = False
        self.watchdog_ms = 2000
        self.crc_errors = 0
        self.frames_ok = 0
        self.writes = 0  # SET_ALL / SET_ONE / PARK executed
        self._start = clock()
        self._last_valid = clock()
        self._buffer = bytearray()
        self._last: tuple[int, int, bytes, bytes] | None = None  # seq, cmd, crc, reply frame
        self.lock = threading.Lock()

    def receive(self, data: bytes) -> bytes:
        """Process bytes from the host; return the bytes to send back."""
        out = bytearray()
        with self.lock:
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

    def tick(self) -> None:
        """Watchdog: park the bank when the host has been silent too long."""
        with self.lock:
            if (self.handshake and self.watchdog_ms and not self.parked
                    and (self.clock() - self._last_valid) * 1000 > self.watchdog_ms):
                self._park()
                self.tripped = True

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
        body = bytes([seq, cmd | 0x80]) + len(reply).to_bytes(2, "little") + reply
        encoded = cobs.encode(body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")) + b"\x00"
        self._last = (seq, cmd, crc, encoded)
        return encoded

    def _execute(self, cmd: int, p: bytes) -> bytes:
        if cmd == HELLO:
            if len(p) != 2:
                return bytes([BAD_LENGTH])
            status = OK if p[0] == VERSION[0] else INCOMPATIBLE
            self.handshake = self.handshake or status == OK
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


class PtyLink:
    """Serves a :class:`PotFirmware` on a pseudo-terminal in a background thread.

    ``path`` is the tty the host opens (e.g. with pyserial). ``deafen(seconds)``
    makes the controller ignore the line for a while (a disconnect the host sees as
    timeouts); ``close()`` ends the link.
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

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.005)
            except (OSError, ValueError):
                return
            self.firmware.tick()
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

    def acquire(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        """(B, n_ai) readings and (B,) timestamps for B boundary conditions ao (B, n_ao)."""
        ao = np.atleast_2d(np.asarray(ao, dtype=float))
        with self.firmware.lock:
            taps = self.firmware.taps[self.chain]
        self.model.set_taps(taps)
        self.log.add("ao", levels=ao[-1].tolist(), samples=int(ao.shape[0]), clamps=clamps_engaged)
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
    clamp_switch : whether the clamp outputs are switched (see :class:`EmulatedDaq`).
    wiring : wiring mistakes (swapped AI channels, pots swapped in the chain): the
        emulated bench is wired differently from what ``ai_nodes`` and ``chain`` say.
    """

    def __init__(self, model: SimulatedBackend, *, n_pots: int, chain: np.ndarray,
                 ai_nodes: np.ndarray, faults: Faults | None = None,
                 log_path: str | Path | None = None,
                 smu_nodes: tuple[int, int] | None = None, smu_seed: int = 0,
                 clamp_switch: bool = True, wiring: WiringFaults | None = None) -> None:
        assert model.edges.kind == "stepped"
        wiring = wiring or WiringFaults()
        ai_nodes, chain = wiring.apply(np.asarray(ai_nodes, dtype=np.int64), np.asarray(chain, dtype=np.int64))
        self.log = TrafficLog(log_path)
        self.firmware = PotFirmware(n_pots, model.edges.n_taps)  # type: ignore[union-attr]
        self.link = PtyLink(self.firmware, faults=faults, log=self.log)
        self.daq = EmulatedDaq(model, self.firmware, ai_nodes, chain, self.log, clamp_switch=clamp_switch)
        self.model = model
        self.chain = chain
        self.wiring = wiring
        self.smu: EmulatedSmu | None = None
        if smu_nodes is not None:
            if not isinstance(model, BenchModel):
                raise TypeError("an emulated SMU needs a BenchModel")
            self.smu = EmulatedSmu(model, smu_nodes, sync=self.sync_taps, seed=smu_seed)

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


class EmulatedSmu:
    """A source-measure unit on a fixture across two nodes, as a pyvisa resource
    look-alike: the SCPI subset of ``drivers.visa.Smu`` (Keithley 2400 style), answered
    from the bench model.

    ``:MEAS:RES?`` in manual-ohms mode (source current, measure voltage, 4-wire) returns
    the model's two-point resistance between the fixture nodes with every output at
    0 V, times (1 + gain error) and with relative noise; beyond the voltage compliance
    it returns the overflow value 9.91e37. Each reading advances the model's clock by
    ``reading_time``.

    Parameters
    ----------
    model : the bench model.
    nodes : (a, b) fixture nodes.
    sync : puts the model at the firmware's taps before a reading.
    gain_error : relative gain error; drawn uniform in +-3e-4 from ``seed`` when None
        (a Keithley 2400's 4-wire ohms accuracy on the 10 kOhm range is ~0.03 %).
    noise : relative rms noise per reading.
    reading_time : seconds per reading (integration, settling, GPIB).
    """

    IDN = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,EMULATED,C30 (clln bench emulator)"

    def __init__(self, model: BenchModel, nodes: tuple[int, int], *, sync: Callable[[], None],
                 gain_error: float | None = None, noise: float = 3e-5, reading_time: float = 0.2,
                 seed: int = 0) -> None:
        self.model = model
        self.nodes = (int(nodes[0]), int(nodes[1]))
        self.sync = sync
        self._rng = np.random.default_rng(seed)
        self.gain_error = float(self._rng.uniform(-3e-4, 3e-4)) if gain_error is None else gain_error
        self.noise = noise
        self.reading_time = reading_time
        self.timeout = 2000
        self.readings = 0
        self._errors: list[str] = []
        self._reset()

    def _reset(self) -> None:
        self.function, self.current, self.compliance = "VOLT", 0.0, 21.0
        self.mode, self.sense, self.output = "AUTO", "RES", False
        self.four_wire = False

    def write(self, command: str) -> None:
        head, _, arg = command.strip().partition(" ")
        head = head.upper()
        try:
            if head == "*RST":
                self._reset()
            elif head == ":SOUR:FUNC":
                self.function = {"CURR": "CURR", "VOLT": "VOLT"}[arg.upper()]
            elif head == ":SOUR:CURR":
                self.current = float(arg)
            elif head == ":SENS:VOLT:PROT":
                self.compliance = float(arg)
            elif head == ":SENS:FUNC":
                self.sense = arg.strip('"').upper()
            elif head == ":SENS:RES:MODE":
                self.mode = {"MAN": "MAN", "AUTO": "AUTO"}[arg.upper()]
            elif head == ":SYST:RSEN":
                self.four_wire = arg.upper() in ("ON", "1")
            elif head == ":OUTP":
                self.output = arg.upper() in ("ON", "1")
            else:
                self._errors.append('-113,"Undefined header"')
        except (KeyError, ValueError):
            self._errors.append('-224,"Illegal parameter value"')

    def query(self, command: str) -> str:
        q = command.strip().upper()
        if q == "*IDN?":
            return self.IDN
        if q == ":SYST:ERR?":
            return self._errors.pop(0) if self._errors else '0,"No error"'
        if q == ":MEAS:RES?":
            return self._measure()
        self._errors.append('-113,"Undefined header"')
        return ""

    def _measure(self) -> str:
        if self.function != "CURR" or self.mode != "MAN" or self.sense != "RES" or not self.four_wire:
            self._errors.append('-221,"Settings conflict"')
            return "+9.910000E+37"
        self.sync()
        self.model.clock.now += self.reading_time
        self.readings += 1
        true = self.model.two_point_resistance(*self.nodes)
        if not self.output or abs(self.current * true) > self.compliance:
            return "+9.910000E+37"
        reading = true * (1.0 + self.gain_error) * (1.0 + self.noise * self._rng.standard_normal())
        return f"{reading:+.7E}"

    def close(self) -> None:
        self.output = False
