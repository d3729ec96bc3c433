"""Emulator of a streaming in-situ bench (``drivers/firmware/PROTOCOL.md`` §12, protocol
1.2), written from that document: the device side of the experiment download, the run,
the credit-based record stream and its retransmission, served on a pty by
:class:`~clln.simulator.bench.PtyLink`.

The device runs the same executor as the simulator
(:func:`clln.controller.insitu.run_loop`) on a simulated bench's physics: the
comparator-clocked twin bench (:class:`~clln.simulator.insitu_pot.ComparatorTwinPhysics`,
tracked taps) or the twin transistor bench
(:class:`~clln.simulator.insitu_transistor.TransistorTwinPhysics`, gate volts), so a
protocol gives the same adjustable-state trajectory on both.

Like the rig, it keeps the state that goes with every record it still holds (§12.5): a
host resuming from one of them with ``SET_STATE`` puts it back exactly, its simulated
physics included (readout-noise generator, solver warm starts).
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Iterator

import numpy as np
from cobs import cobs

from clln.controller.insitu import InSituExperiment, InSituRecord, TimerModel, run_loop
from clln.simulator.bench import (
    BAD_LENGTH,
    HELLO,
    NO_HANDSHAKE,
    OK,
    OUT_OF_RANGE,
    Faults,
    PotFirmware,
    PtyLink,
)
from clln.simulator.insitu_pot import ComparatorTwinPhysics
from clln.simulator.insitu_transistor import TransistorTwinPhysics

Physics = ComparatorTwinPhysics | TransistorTwinPhysics

VERSION = (1, 2)
BAD_EXPERIMENT = 0x07
EXP_BEGIN, EXP_CHUNK, EXP_COMMIT, RUN, ACK, RESEND, GET_STATE, SET_STATE = range(0x0A, 0x12)
STEP = 0x12 | 0x80
STEP_PART = 0x13 | 0x80
NO_VOLTAGE = -32768
VOLT_LSB = 250e-6
WIDE_STATE = 0x10  # experiment flag bit 4: states travel as float64 (§12.6)
SPLIT = 0x20  # experiment flag bit 5: records travel as STEP_PART frames (§12.6)
PART_BYTES = 64  # record bytes per STEP_PART frame
GATE_CODES = 256  # the 1.0 pot commands' range on a transistor bench (no taps to move)


def _frame(seq: int, cmd: int, payload: bytes) -> bytes:
    body = bytes([seq & 0xFF, cmd]) + len(payload).to_bytes(2, "little") + payload
    return cobs.encode(body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")) + b"\x00"


def parse_experiment(blob: bytes) -> InSituExperiment:
    """The experiment from its stored form (§12.2); ValueError when it is malformed."""
    if blob[:4] != b"CLX1":
        raise ValueError("bad magic")
    head = struct.Struct("<BHHBBIIHffIIHH")
    (flags, n, n_test, n_src, n_out, steps, test_every, levels, gain, margin, tick_ns, max_ticks,
     n_eta, n_win) = head.unpack_from(blob, 4)
    off = 4 + head.size

    def floats(count: int) -> np.ndarray:
        nonlocal off
        out = np.frombuffer(blob, dtype="<f4", count=count, offset=off).astype(np.float64)
        off += 4 * count
        return out

    def u8(count: int) -> np.ndarray:
        nonlocal off
        out = np.frombuffer(blob, dtype=np.uint8, count=count, offset=off)
        off += count
        return out

    train_x, train_y = floats(n * n_src).reshape(n, n_src), floats(n * n_out).reshape(n, n_out)
    test_x, test_y = floats(n_test * n_src).reshape(n_test, n_src), floats(n_test * n_out).reshape(n_test, n_out)
    labels = (u8(n).astype(np.int64), u8(n_test).astype(np.int64)) if flags & 8 else (None, None)
    learn = u8(n).astype(bool)
    codes, amplified, ticks = (np.zeros(steps, dtype=np.int64), np.zeros(steps, dtype=bool),
                               np.zeros(steps, dtype=np.int64))
    eta_runs = [struct.unpack_from("<IHB", blob, off + 7 * i) for i in range(n_eta)]
    off += 7 * n_eta
    win_runs = [struct.unpack_from("<II", blob, off + 8 * i) for i in range(n_win)]
    off += 8 * n_win
    if off != len(blob):
        raise ValueError("length does not match the header")
    for i, (start, code, amp) in enumerate(eta_runs):
        end = eta_runs[i + 1][0] - 1 if i + 1 < n_eta else steps
        codes[start - 1:end], amplified[start - 1:end] = code, bool(amp)
    for i, (start, tick) in enumerate(win_runs):
        end = win_runs[i + 1][0] - 1 if i + 1 < n_win else steps
        ticks[start - 1:end] = tick
    return InSituExperiment(
        train_sources=train_x, train_targets=train_y, test_sources=test_x, test_targets=test_y,
        eta_codes=codes, amplified=amplified, learn_ticks=ticks, learn_flags=learn,
        train_labels=labels[0], test_labels=labels[1], hinge=bool(flags & 1), margin=float(margin),
        normalise=bool(flags & 2), anti_clamp=bool(flags & 4),
        amplifier_gain=float(gain) if gain else None, eta_levels=levels, test_every=test_every,
        timer=TimerModel(tick_ns / 1e9, max_ticks))


def record_frames(rec_step: int, payload: bytes, split: bool = False) -> bytes:
    """A record as one STEP frame, or as STEP_PART frames when ``split`` (§12.6)."""
    if not split:
        return _frame(rec_step, STEP, payload)
    chunks = [payload[i:i + PART_BYTES] for i in range(0, len(payload), PART_BYTES)]
    return b"".join(_frame(rec_step, STEP_PART, struct.pack("<IBB", rec_step, k, len(chunks)) + chunk)
                    for k, chunk in enumerate(chunks))


def encode_record(rec: InSituRecord, wide: bool = False) -> bytes:
    """A STEP record's payload (§12.4); the state as float64 when ``wide`` (§12.6)."""
    def code(v: np.ndarray) -> np.ndarray:
        counts = np.clip(np.rint(np.nan_to_num(v, nan=0.0) / VOLT_LSB), -32767, 32767)
        return np.where(np.isnan(v), NO_VOLTAGE, counts).astype("<i2")

    nan = float("nan")
    head = struct.pack("<IffHfff", rec.step, rec.eta, rec.window_s * 1e6, rec.n_teaching,
                       rec.train_error, nan if rec.test_error is None else rec.test_error,
                       nan if rec.test_accuracy is None else rec.test_accuracy)
    return (head + code(rec.free).tobytes() + code(rec.clamped).tobytes()
            + np.asarray(rec.state, dtype="<f8" if wide else "<f4").tobytes())


class InSituFirmware(PotFirmware):
    """The in-situ controller's protocol logic (no I/O): the 1.0 commands of
    :class:`PotFirmware` plus §12. ``memory`` is the bytes available for the experiment
    and the buffered records."""

    def __init__(self, physics: Physics, *, memory: int = 6144, **kwargs: object) -> None:
        taps = physics.params.taps if isinstance(physics, ComparatorTwinPhysics) else GATE_CODES
        super().__init__(physics.network.n_edges, taps,
                         name="clln in-situ emulator", **kwargs)  # type: ignore[arg-type]
        self.physics = physics
        self.wide = self.split = False  # the committed experiment's flag bits 4 and 5
        self._kept: dict[int, tuple[np.ndarray, dict[str, object]]] = {}  # state after each held record
        self.memory = memory
        self.step = 0  # the step the physics is at
        self.experiment: InSituExperiment | None = None
        self._blob = bytearray()
        self._blob_crc = 0
        self._loop: Iterator[InSituRecord] | None = None
        self._first = self._final = 0  # first and last record of the run
        self._ring: dict[int, bytes] = {}
        self._credit = 0
        self.records_sent = 0

    def _frame(self, frame: bytes) -> bytes:  # type: ignore[override]
        try:
            packet = cobs.decode(frame)
        except cobs.DecodeError:
            packet = b""
        stream = (len(packet) >= 6 and packet[1] in (ACK, RESEND)
                  and int.from_bytes(packet[2:4], "little") == len(packet) - 6 == 4
                  and binascii.crc_hqx(packet[:-2], 0xFFFF) == int.from_bytes(packet[-2:], "big"))
        if not stream:
            return super()._frame(frame)
        self._last_valid = self.clock()
        (number,) = struct.unpack("<I", packet[4:8])
        if packet[1] == ACK:
            return self._release(number)
        return self._ring.get(number, b"") or self._release(number)

    def _release(self, acked: int) -> bytes:
        """Run ahead to ``acked - 1 + credit`` records and send the new ones."""
        for old in [r for r in self._ring if r < acked]:
            del self._ring[old]
            self._kept.pop(old, None)
        out = bytearray()
        while self._loop is not None and self._ring_top() < min(acked - 1 + self._credit, self._final):
            rec = next(self._loop, None)
            if rec is None:
                self._loop = None
                break
            self.step = rec.step
            self._ring[rec.step] = record_frames(rec.step, encode_record(rec, self.wide), self.split)
            self._kept[rec.step] = (self.physics.read_state(), self.physics.state_dict())
            out += self._ring[rec.step]
            self.records_sent += 1
        return bytes(out)

    def _ring_top(self) -> int:
        return max(self._ring) if self._ring else self._first - 1

    def _park(self) -> None:
        super()._park()
        self._loop = None  # the safe state (PARK or the watchdog) ends a run

    def _execute(self, cmd: int, p: bytes) -> bytes:
        reply = super()._execute(cmd, p)
        if cmd == HELLO and reply[0] == OK:
            return reply[:1] + bytes(VERSION) + reply[3:]
        if cmd not in range(EXP_BEGIN, SET_STATE + 1):
            return reply
        if not self.handshake:
            return bytes([NO_HANDSHAKE])
        m = self.physics.network.n_edges
        if cmd == EXP_BEGIN:
            if len(p) != 6:
                return bytes([BAD_LENGTH])
            size, self._blob_crc = struct.unpack("<IH", p)
            if size > self.memory:
                return bytes([OUT_OF_RANGE])
            self._blob = bytearray(size)
            self.experiment = self._loop = None
            return bytes([OK])
        if cmd == EXP_CHUNK:
            (offset,) = struct.unpack_from("<I", p) if len(p) >= 4 else (None,)
            if offset is None or offset + len(p) - 4 > len(self._blob):
                return bytes([OUT_OF_RANGE])
            self._blob[offset:offset + len(p) - 4] = p[4:]
            return bytes([OK])
        if cmd == EXP_COMMIT:
            if binascii.crc_hqx(bytes(self._blob), 0xFFFF) != self._blob_crc:
                return bytes([BAD_EXPERIMENT])
            try:
                self.experiment = parse_experiment(bytes(self._blob))
            except (ValueError, struct.error):
                return bytes([BAD_EXPERIMENT])
            self.wide, self.split = bool(self._blob[4] & WIDE_STATE), bool(self._blob[4] & SPLIT)
            return bytes([OK])
        if cmd == GET_STATE:
            state = self.physics.read_state()
            if len(p) == 3 and p[0] == 0x08:  # a slice of the f64 state: first, count (§12.6)
                first, count = p[1], p[2]
                if count == 0 or first + count > m:
                    return bytes([OUT_OF_RANGE])
                state = state[first:first + count]
            elif p not in (b"", b"\x04", b"\x08"):
                return bytes([BAD_LENGTH])
            width = "<f8" if p[:1] == b"\x08" else "<f4"
            return bytes([OK]) + struct.pack("<I", self.step) + state.astype(width).tobytes()
        if cmd == SET_STATE:
            if len(p) not in (4 + 4 * m, 4 + 8 * m):
                return bytes([BAD_LENGTH])
            state = np.frombuffer(p, dtype="<f4" if len(p) == 4 + 4 * m else "<f8", offset=4).astype(float)
            (step,) = struct.unpack_from("<I", p)
            if not self._set_state(step, state):
                return bytes([OUT_OF_RANGE])
            self.step = step
            return bytes([OK])
        if cmd == RUN:
            if len(p) != 10:
                return bytes([BAD_LENGTH])
            start, n_steps, credit = struct.unpack("<IIH", p)
            if self.experiment is None or start != self.step or credit < 1:
                return bytes([OUT_OF_RANGE])
            self._loop = run_loop(self.physics, self.experiment, start, n_steps)
            self._first = start if start == 0 else start + 1
            self._final = min(self.experiment.steps, start + n_steps)
            self._credit, self._ring, self._kept = credit, {}, {}
            return bytes([OK])
        return reply

    def _set_state(self, step: int, state: np.ndarray) -> bool:
        """Put the edges at ``state``; False (nothing changed) for a state they cannot take.
        The state kept with record ``step``, when it is this one, comes back whole."""
        kept = self._kept.get(step)
        ph = self.physics
        if kept is not None and np.array_equal(kept[0], state):
            ph.load_state_dict(kept[1])  # type: ignore[arg-type]
            return True
        if not np.all(np.isfinite(state)):
            return False
        if isinstance(ph, ComparatorTwinPhysics):
            taps = np.rint(state).astype(np.int64)
            if np.any((taps < 0) | (taps >= ph.params.taps)):
                return False
            ph.taps = taps
            return True
        if np.any((state < 0) | (state > ph.params.rail)):
            return False
        fresh = {**ph.state_dict(), "gates": np.tile(state, (2, 1)), "warm": []}
        ph.load_state_dict(fresh)
        return True


class EmulatedInSituBench:
    """The in-situ device on a pseudo-terminal: ``port`` is the tty the driver opens."""

    def __init__(self, physics: Physics, *, faults: Faults | None = None,
                 memory: int = 6144) -> None:
        self.firmware = InSituFirmware(physics, memory=memory)
        self.link = PtyLink(self.firmware, faults=faults)

    @property
    def port(self) -> str:
        return self.link.path

    def close(self) -> None:
        self.link.close()
