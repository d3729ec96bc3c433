"""Driver of a bench that learns in place over serial (``firmware/PROTOCOL.md`` §12,
protocol 1.2): download the experiment, run N steps, consume the streamed records.

``InSituBench(transport, network, table)`` takes an *open* serial port and the bench's
edges (a tap table, or :class:`~clln.controller.backend.GateEdges` for gate-voltage
state); construction does no I/O, :meth:`InSituBench.connect` does the handshake. It declares
:class:`~clln.controller.capabilities.LearnsInPlace`: :meth:`run_insitu` downloads the
experiment in CRC-checked chunks, starts the run and yields every step record in order,
granting credit (how far the device may run ahead) and asking for any record that did
not arrive intact.
"""

from __future__ import annotations

import binascii
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import serial

from clln.controller.backend import EdgeState, GateEdges, SteppedEdges
from clln.controller.errors import UserError
from clln.controller.insitu import InSituExperiment, InSituRecord
from clln.controller.network import Network
from clln.drivers.errors import DeviceLost, DriverError, PotBankTimeout
from clln.drivers.potbank import PotBank
from clln.drivers.wire import MAX_PAYLOAD, FrameReader, Packet, encode_packet

MAGIC = b"CLX1"
CHUNK = 64  # experiment bytes per EXP_CHUNK: short frames survive a noisy line
VOLT_LSB = 250e-6  # V per count of the int16 node voltages in a STEP record


class InSituCmd:
    """Command codes of protocol 1.2 (§12)."""

    EXP_BEGIN = 0x0A
    EXP_CHUNK = 0x0B
    EXP_COMMIT = 0x0C
    RUN = 0x0D
    ACK = 0x0E
    RESEND = 0x0F
    GET_STATE = 0x10
    SET_STATE = 0x11
    STEP = 0x92  # unsolicited record, 0x12 | 0x80
    STEP_PART = 0x93  # one part of a record longer than a frame, 0x13 | 0x80 (§12.6)


WIDE_STATE = 0x10  # experiment flag bit 4: states travel as float64 (§12.6)
SPLIT = 0x20  # experiment flag bit 5: records travel as STEP_PART frames (§12.6)
PART_HEAD = struct.Struct("<IBB")  # record, part, parts
PART_BYTES = 64  # record bytes per STEP_PART frame: short frames survive a noisy line
STATE_SLICE = 8  # edges per GET_STATE of a wide state (§12.6): 69-byte replies, not one of 4 + 8 m


@dataclass(frozen=True)
class MemoryModel:
    """What the microcontroller holds: ``sram`` bytes, of which ``reserved`` go to the
    firmware (stack, serial buffers, state). Default: ATmega2560, 8 KiB SRAM, 2 KiB
    reserved."""

    name: str = "ATmega2560"
    sram: int = 8192
    reserved: int = 2048

    @property
    def available(self) -> int:
        return self.sram - self.reserved


class ExperimentTooLarge(UserError):
    """The experiment (or one of its records) does not fit the device; nothing was sent."""


def _segments(values: np.ndarray) -> list[tuple[int, int]]:
    """Run-length form of a per-step schedule: (first step, value) where it changes."""
    starts = [0] + [i for i in range(1, len(values)) if values[i] != values[i - 1]]
    return [(i + 1, int(values[i])) for i in starts]


def encode_experiment(ex: InSituExperiment, wide: bool = False, split: bool = False) -> bytes:
    """The experiment as the device stores it (§12.2), little-endian; ``wide``: states as
    float64, ``split``: records in parts (§12.6)."""
    labels = ex.train_labels is not None
    flags = (ex.hinge | ex.normalise << 1 | ex.anti_clamp << 2 | labels << 3
             | (WIDE_STATE if wide else 0) | (SPLIT if split else 0))
    etas = _segments(ex.eta_codes * 2 + ex.amplified.astype(np.int64))
    windows = _segments(ex.learn_ticks)
    n, n_test = len(ex.train_sources), len(ex.test_sources)
    head = MAGIC + struct.pack(
        "<BHHBBIIHffIIHH", flags, n, n_test, ex.train_sources.shape[1], ex.train_targets.shape[1],
        ex.steps, ex.test_every, ex.eta_levels, ex.amplifier_gain or 0.0, ex.margin,
        int(round(ex.timer.tick_s * 1e9)), ex.timer.max_ticks, len(etas), len(windows))
    parts = [head]
    for array in (ex.train_sources, ex.train_targets, ex.test_sources, ex.test_targets):
        parts.append(np.asarray(array, dtype="<f4").tobytes())
    if labels:
        parts.append(np.asarray(ex.train_labels, dtype=np.uint8).tobytes())
        parts.append(np.asarray(ex.test_labels, dtype=np.uint8).tobytes())
    parts.append(np.asarray(ex.learn_flags, dtype=np.uint8).tobytes())
    parts += [struct.pack("<IH", s, v >> 1) + bytes([v & 1]) for s, v in etas]
    parts += [struct.pack("<II", s, v) for s, v in windows]
    return b"".join(parts)


def record_size(n_train: int, n_nodes: int, n_edges: int, wide: bool = False) -> int:
    """Payload bytes of one STEP record (§12.4; float64 states when ``wide``, §12.6)."""
    return 4 + 4 + 4 + 2 + 4 + 4 + 4 + 2 * 2 * n_train * n_nodes + (8 if wide else 4) * n_edges


def record_parts(size: int, split: bool) -> int:
    """Frames a record of ``size`` bytes takes: one STEP frame, or STEP_PART frames of
    :data:`PART_BYTES` when ``split`` (§12.6)."""
    return -(-size // PART_BYTES) if split else 1


def check_fits(ex: InSituExperiment, n_nodes: int, n_edges: int, credit: int,
               memory: MemoryModel, wide: bool = False, max_parts: int = 1) -> None:
    """ExperimentTooLarge (one line, key and limits) unless the experiment and ``credit``
    records fit the device and a record fits one frame (``max_parts`` 1) or
    ``max_parts`` STEP_PART frames."""
    record = record_size(ex.n_train, n_nodes, n_edges, wide)
    split = max_parts > 1
    if (not split and record > MAX_PAYLOAD) or record_parts(record, split) > max_parts:
        limit = max_parts * PART_BYTES if split else MAX_PAYLOAD
        frames = f"{max_parts} parts" if split else "one frame"
        raise ExperimentTooLarge(
            f"training.insitu: a step record of {ex.n_train} samples x {n_nodes} nodes is "
            f"{record} bytes; allowed: at most {limit} ({frames}): use fewer training samples")
    need = len(encode_experiment(ex, wide, split)) + credit * record
    if need > memory.available:
        raise ExperimentTooLarge(
            f"task/training.insitu: the experiment needs {need} bytes of device memory "
            f"({credit} buffered records of {record}); allowed: {memory.available} "
            f"({memory.name}: {memory.sram} bytes SRAM, {memory.reserved} for the firmware)")


def decode_record(payload: bytes, n_train: int, n_nodes: int, n_edges: int,
                  wide: bool = False) -> InSituRecord:
    """A STEP record's payload (§12.4) as an InSituRecord."""
    step, eta, window_us, n_teaching, train, test, acc = struct.unpack_from("<IffHfff", payload)
    off = 26
    count = n_train * n_nodes
    volts = np.frombuffer(payload, dtype="<i2", count=2 * count, offset=off).astype(float)
    volts = np.where(volts == -32768, np.nan, volts * VOLT_LSB).reshape(2, n_train, n_nodes)
    state = np.frombuffer(payload, dtype="<f8" if wide else "<f4", count=n_edges, offset=off + 4 * count)
    return InSituRecord(
        step=step, eta=float(eta), window_s=float(window_us) * 1e-6, n_teaching=n_teaching,
        train_error=float(train), free=volts[0], clamped=volts[1], state=state.astype(float),
        test_error=None if np.isnan(test) else float(test),
        test_accuracy=None if np.isnan(acc) else float(acc))


class InSituBench:
    """A streaming in-situ bench behind a serial port (§12).

    Parameters
    ----------
    transport : an open serial port.
    network : the network the bench realises (roles included).
    table : (m, n_taps) nominal conductance (S) of every edge at every tap (the state the
        device reports is a tracked tap), or :class:`GateEdges` (the state is the gate
        voltages, V, sent as float64: §12.6).
    credit : records the device may run ahead of the host (the rig's DAT).
    memory : the device's memory model.
    record_timeout : seconds without a new record before the host asks again.
    retries : consecutive requests for the same record before the run is paused.
    max_parts : 1 (the reference firmware): a record is one STEP frame; more: records
        travel as at most this many STEP_PART frames (§12.6).
    resend_holdoff : 0: a damaged frame or a gap asks for the record at once. Above 0:
        they ask only once the line is quiet (a poll read nothing) and at least this many
        seconds after the last RESEND. A split record comes back as many frames, some
        of them damaged on a noisy line: asking again for each would multiply the
        traffic until neither side can write.
    """

    twin = True

    def __init__(self, transport: serial.SerialBase, network: Network, table: np.ndarray | GateEdges, *,
                 credit: int = 8, memory: MemoryModel | None = None,
                 record_timeout: float = 0.05, retries: int = 200, max_parts: int = 1,
                 resend_holdoff: float = 0.0) -> None:
        self.transport = transport
        self.bank = PotBank(transport)
        self._network = network
        self.credit = credit
        self.memory = memory or MemoryModel()
        self.record_timeout = record_timeout
        self.retries = retries
        self._reader = FrameReader()
        self._seq = 0
        self._state = np.zeros(network.n_edges)
        self.resends = 0
        self.records = 0
        self.max_parts = max_parts
        self.resend_holdoff = resend_holdoff
        self._edges: SteppedEdges | GateEdges = (
            table if isinstance(table, GateEdges) else SteppedEdges(np.asarray(table, dtype=float)))
        self.wide = not self._edges.is_stepped  # gate volts: float64 states on the wire

    @property
    def network(self) -> Network:
        return self._network

    @property
    def edges(self) -> SteppedEdges | GateEdges:
        return self._edges

    def fits(self, ex: InSituExperiment) -> None:
        """ExperimentTooLarge (one line) unless ``ex`` fits this device (:func:`check_fits`)."""
        check_fits(ex, self._network.n_nodes, self._network.n_edges, self.credit, self.memory,
                   self.wide, self.max_parts)

    def connect(self) -> None:
        """Handshake; refuses a firmware older than 1.2 (no in-situ mode)."""
        info = self.bank.connect()
        if info.version < (1, 2):
            raise UserError(f"the controller speaks protocol {info.version[0]}.{info.version[1]}; "
                            "learning in place needs 1.2 (update its firmware)")
        self._state = self.read_state()

    # -- download and run -------------------------------------------------------------

    def download(self, ex: InSituExperiment) -> None:
        """Send the experiment in chunks; the device checks its CRC before accepting it."""
        self.fits(ex)
        blob = encode_experiment(ex, self.wide, self.max_parts > 1)
        self.bank._exchange(InSituCmd.EXP_BEGIN,
                            struct.pack("<IH", len(blob), binascii.crc_hqx(blob, 0xFFFF)))
        for offset in range(0, len(blob), CHUNK):
            self.bank._exchange(InSituCmd.EXP_CHUNK,
                                struct.pack("<I", offset) + blob[offset:offset + CHUNK])
        self.bank._exchange(InSituCmd.EXP_COMMIT)

    def _send(self, cmd: int, payload: bytes) -> None:
        """A stream command (ACK, RESEND): no reply, §12.5."""
        self._seq = (self._seq + 1) % 256
        try:
            self.transport.write(b"\x00" + encode_packet(Packet(self._seq, cmd, payload)))
        except (serial.SerialException, OSError) as exc:
            raise DeviceLost(f"in-situ controller went away ({exc})") from None

    def run_insitu(self, experiment: InSituExperiment, start_step: int,
                   n_steps: int) -> Iterator[InSituRecord]:
        """Download, then stream records ``start_step`` (0 only) or ``start_step + 1`` to
        ``start_step + n_steps``, in order, none lost."""
        ex = experiment
        self.fits(ex)
        self.download(ex)
        if start_step:  # resume: the device's state must be that of start_step
            self.bank._exchange(InSituCmd.SET_STATE, struct.pack("<I", start_step)
                                + np.asarray(self._state, dtype=self._width).tobytes())
        self.bank._exchange(InSituCmd.RUN, struct.pack("<IIH", start_step, n_steps, self.credit))
        return self._stream(ex, start_step, n_steps)

    def _stream(self, ex: InSituExperiment, start_step: int, n_steps: int) -> Iterator[InSituRecord]:
        expected = start_step if start_step == 0 else start_step + 1
        last = start_step + n_steps
        shape = (ex.n_train, self._network.n_nodes, self._network.n_edges)
        size = record_size(*shape, self.wide)
        held: dict[int, InSituRecord] = {}
        parts: dict[int, dict[int, bytes]] = {}  # pieces of records sent as STEP_PART frames
        self._reader.reset()
        self.transport.timeout = min(self.transport.timeout or 0.01, 0.002)  # poll the stream
        self._send(InSituCmd.ACK, struct.pack("<I", expected))
        clock = self.bank.clock
        deadline = clock() + self.record_timeout
        quiet_until = clock()  # no RESEND for a damaged frame or a gap before this
        damaged = False  # a damaged frame or a gap not yet asked about
        misses = 0
        while expected <= last:
            data = self.transport.read(max(1, self.transport.in_waiting))
            advanced = False
            dropped = self._reader.dropped
            gap = False
            for packet in self._reader.feed(data):
                payload = self._whole(packet, size, parts, expected)
                if payload is None:
                    continue
                rec = decode_record(payload, *shape, self.wide)
                if rec.step >= expected and rec.step & 0xFF == packet.seq:
                    gap = gap or (rec.step > expected and rec.step not in held)
                    held[rec.step] = rec
            while expected in held:
                rec = held.pop(expected)
                self._state = rec.state
                self.records += 1
                yield rec
                expected += 1
                advanced = True
            if advanced:
                misses = 0
                deadline = clock() + self.record_timeout
                self._send(InSituCmd.ACK, struct.pack("<I", expected))
            damaged = damaged or gap or self._reader.dropped != dropped
            if advanced:
                damaged = False
            elif clock() > deadline or (damaged and clock() >= quiet_until
                                        and (not self.resend_holdoff or not data)):
                misses += 1  # a timeout, a gap or a damaged frame: ask for the record now
                if misses > self.retries:
                    raise PotBankTimeout(f"in-situ controller: record {expected} did not arrive "
                                         f"after {self.retries} requests; the run is paused")
                self.resends += 1
                self._send(InSituCmd.RESEND, struct.pack("<I", expected))
                deadline = clock() + self.record_timeout
                quiet_until = clock() + self.resend_holdoff
                damaged = False

    @staticmethod
    def _whole(packet: Packet, size: int, parts: dict[int, dict[int, bytes]], expected: int) -> bytes | None:
        """A whole record's payload: a STEP packet's, or the last missing STEP_PART's
        with its pieces joined; None otherwise (the pieces are kept)."""
        if packet.cmd == InSituCmd.STEP:
            return packet.payload if len(packet.payload) == size else None
        if packet.cmd != InSituCmd.STEP_PART or len(packet.payload) <= PART_HEAD.size:
            return None
        record, part, count = PART_HEAD.unpack_from(packet.payload)
        if record < expected or record & 0xFF != packet.seq or not part < count == record_parts(size, True):
            return None
        pieces = parts.setdefault(record, {})
        pieces[part] = packet.payload[PART_HEAD.size:]
        if len(pieces) < count:
            return None
        payload = b"".join(pieces[k] for k in range(count))
        del parts[record]
        return payload if len(payload) == size else None

    # -- state --------------------------------------------------------------------------

    @property
    def _width(self) -> str:
        return "<f8" if self.wide else "<f4"

    def read_state(self) -> np.ndarray:
        """(m,) adjustable state, from the device (GET_STATE). Gate volts (float64) are read
        :data:`STATE_SLICE` edges per request (§12.6): on a line that corrupts 1 % of the
        bytes a 32-edge state in one 266-byte frame arrives intact about once in 15 tries,
        a slice about once in two. Every slice must report the same step."""
        m = self._network.n_edges
        self._settle()
        if not self.wide:
            body = self.bank._exchange(InSituCmd.GET_STATE, b"")
            return np.frombuffer(body, dtype="<f4", count=m, offset=4).astype(float)
        steps, parts = set(), []
        for first in range(0, m, STATE_SLICE):
            count = min(STATE_SLICE, m - first)
            body = self.bank._exchange(InSituCmd.GET_STATE, bytes([0x08, first, count]))
            if len(body) != 4 + 8 * count:
                raise DriverError(f"in-situ controller: GET_STATE of edges {first}..{first + count - 1} "
                                  f"gave {len(body)} bytes; expected {4 + 8 * count}")
            steps.add(struct.unpack_from("<I", body)[0])
            parts.append(body[4:])
        if len(steps) > 1:
            raise DriverError(f"in-situ controller: the state's slices came from steps {sorted(steps)} "
                              "(a run in progress); read the state while the device is stopped")
        return np.frombuffer(b"".join(parts), dtype="<f8").astype(float)

    def _settle(self, quiet_s: float = 0.05, limit_s: float = 2.0) -> None:
        """Wait until the line has been silent for ``quiet_s`` (at most ``limit_s``). After
        a run the device may still be answering the stream's last RESENDs: on a noisy line
        each damaged frame of those records would cut a GET_STATE attempt short (the bank
        resends at once on a damaged frame), using up its attempts in a fraction of a
        second."""
        clock, bank = self.bank.clock, self.bank
        end = last = clock()
        end += limit_s
        with bank.lock:
            while clock() < end and clock() - last < quiet_s:
                if self.transport.in_waiting:
                    bank._drain()  # a BOOT packet among them is still noticed
                    last = clock()
                else:
                    time.sleep(0.002)

    def read_edges(self) -> EdgeState:
        return self._edges.reported(self._state)

    def state_dict(self) -> dict[str, Any]:
        return {"state": np.asarray(self._state, dtype=float).copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = np.asarray(state["state"], dtype=float)

    def safe(self) -> None:
        try:
            self.bank.park()
        except (PotBankTimeout, DeviceLost):
            pass

    def close(self) -> None:
        self.safe()
        self.bank.close()

    def describe(self) -> dict[str, object]:
        info = self.bank.info
        return {"kind": "insitu-serial", "backend": "in-situ bench over serial",
                "port": getattr(self.transport, "port", None), "credit": self.credit,
                "memory": self.memory.name,
                "firmware": None if info is None else f"{info.name} {info.version}"}
