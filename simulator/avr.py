"""The compiled potentiometer-controller firmware under simavr, as a served controller.

:func:`build` compiles ``drivers/firmware/potbank`` for the Arduino Mega 2560 with
Debian's AVR toolchain and the simavr harness ``drivers/firmware/simavr/potbank_sim.c``;
:class:`SimavrPotBank` runs that firmware on a simulated ATmega2560 at 16 MHz (paced to
wall-clock time) with its UART0 on a pseudo-terminal and one MCP4131 model on each
chip-select pin. The host driver opens :attr:`SimavrPotBank.path` like any serial port;
:attr:`SimavrPotBank.taps` are the wipers the models hold, so an emulated DAQ
(:class:`clln.simulator.bench.EmulatedDaq`) measures the network at the taps the
firmware actually set. ``EmulatedBench(..., controller=SimavrPotBank(...))`` puts it
behind the emulated bench in place of the Python firmware.

``build(..., insitu=True)`` compiles the protocol-1.2 firmware with the in-situ mode
(``make INSITU=1``); :class:`SimavrInSitu` runs it with its analog front end
(PROTOCOL.md §12.7) served by :class:`AnalogFrontEnd` on the harness's second pty, from a
:class:`~clln.simulator.insitu_pot.ComparatorTwinPhysics` (tracked taps) or a
:class:`~clln.simulator.insitu_transistor.TransistorTwinPhysics` (gate volts): the physics
models the Python emulator of the device (:mod:`clln.simulator.insitu_device`) runs on.

Building the firmware and the harness is in :mod:`clln.simulator.avr_build`; its names
(:func:`build`, :class:`Build`, :func:`missing_tools`, ...) are re-exported here.
"""

from __future__ import annotations

import binascii
import os
import queue
import select
import struct
import subprocess
import termios
import threading
import time
import tty
from typing import Any

import numpy as np
import serial

from clln.simulator.avr_build import (
    FIRMWARE,
    TOOLS,
    Build,
    SimavrError,
    build,
    default_build_dir,
    missing_tools,
)
from clln.simulator.bench import Faults, dtr_reset_port_class
from clln.simulator.insitu_pot import ComparatorTwinPhysics
from clln.simulator.insitu_transistor import TransistorTwinPhysics

#: the physics an analog front end serves: tracked taps, or gate volts
FrontEndPhysics = ComparatorTwinPhysics | TransistorTwinPhysics

# Chip selects of the reference firmware on the Mega 2560: digital pins 22-29 are PA0-PA7
# and 30-37 are PC7-PC0 (the board's schematic); 16 pots.
MEGA2560_CS = tuple(f"A{b}" for b in range(8)) + tuple(f"C{b}" for b in range(7, -1, -1))
MCP4131_TAPS = 129  # wiper positions 0..128 (DS22060)
RESET_CAUSES = ("power", "external", "brownout", "watchdog")
LEARN_PIN = "E4"  # the in-situ firmware's LEARN enable line: Mega 2560 digital pin 2 is PE4
SRAM_START = 0x200  # first SRAM byte of the ATmega2560 (after the extended I/O space)


__all__ = ["FIRMWARE", "TOOLS", "AnalogFrontEnd", "Build", "FaultyPort", "SimavrError", "SimavrInSitu",
           "SimavrPotBank", "build", "default_build_dir", "missing_tools"]


class _SyncedLock:
    """The lock around :attr:`SimavrPotBank.taps`: entering it first waits until every
    wiper change the harness made so far has been read."""

    def __init__(self, bank: SimavrPotBank) -> None:
        self._bank = bank

    def __enter__(self) -> None:
        self._bank.sync()
        self._bank._lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self._bank._lock.release()


class SimavrPotBank:
    """The compiled firmware running under simavr with MCP4131 models.

    Parameters
    ----------
    build : the firmware and harness (:func:`build`).
    cs : chip-select pins, port letter and bit, in chain order (the Mega 2560 firmware's
        by default).
    mcu, frequency : the simulated part.
    bootloader : as behind a stock Arduino bootloader, which clears MCUSR before the
        firmware starts (the firmware then infers the reset cause, PROTOCOL.md §7.1).

    Attributes
    ----------
    path : the pseudo-terminal carrying UART0.
    taps : (n_pots,) wiper register of every MCP4131 model, as last reported.
    wiper_log : every wiper change, ``(pot, value, simulated ms since reset)``.
    resets : MCUSR cause of every reset so far (the first is the power-on).
    slow_reads : reads clocked faster than the MCP4131 allows over its shared pin.
    """

    def __init__(self, build: Build, cs: tuple[str, ...] = MEGA2560_CS, *, mcu: str = "atmega2560",
                 frequency: int = 16_000_000, bootloader: bool = False,
                 startup_timeout: float = 10.0, extra_args: tuple[str, ...] = ()) -> None:
        self.taps = np.full(len(cs), -1, dtype=np.int64)
        self.wiper_log: list[tuple[int, int, float]] = []
        self.resets: list[int] = []
        self.slow_reads = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._synced: set[str] = set()
        self._token = 0
        self._stderr: list[str] = []
        self.frequency = frequency
        self.stack_low: int | None = None
        self._proc = subprocess.Popen(
            [str(build.harness), str(build.elf), "-m", mcu, "-f", str(frequency),
             *(["-b"] if bootloader else []), *extra_args, *cs],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1)
        self.path = ""
        self._readers = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for reader in self._readers:
            reader.start()
        deadline = time.monotonic() + startup_timeout
        with self._cond:
            while not (self.path and self.resets):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise SimavrError(f"simavr harness did not start: {''.join(self._stderr)[-500:]}")
                self._cond.wait(0.05)

    @property
    def lock(self) -> _SyncedLock:
        return _SyncedLock(self)

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = line.split()
            if not parts:
                continue
            with self._cond:
                if parts[0] == "W" and len(parts) == 4:
                    pot, value = int(parts[1]), int(parts[2])
                    with self._lock:
                        self.taps[pot] = value
                    self.wiper_log.append((pot, value, float(parts[3])))
                elif parts[0] == "PTY" and len(parts) == 2:
                    self.path = parts[1]
                elif parts[0] == "RESET" and len(parts) == 2:
                    self.resets.append(int(parts[1]))
                elif parts[0] == "SLOW":
                    self.slow_reads += 1
                elif parts[0] == "S" and len(parts) == 2:
                    self._synced.add(parts[1])
                elif parts[0] == "STACK" and len(parts) == 2:
                    self.stack_low = int(parts[1])
                else:
                    self._line(parts)
                self._cond.notify_all()

    def _line(self, parts: list[str]) -> None:
        """A harness line this class does not read (subclasses do)."""

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line)

    def _send(self, command: str) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(command + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise SimavrError(f"simavr harness has stopped: {''.join(self._stderr)[-500:]}") from None

    def sync(self, timeout: float = 5.0) -> None:
        """Return once every wiper change made so far has been read into :attr:`taps`."""
        self._token += 1
        token = str(self._token)
        self._send(f"sync {token}")
        with self._cond:
            if not self._cond.wait_for(lambda: token in self._synced, timeout):
                raise SimavrError("simavr harness did not answer a sync")
            self._synced.discard(token)

    def lowest_stack(self) -> int:
        """The lowest stack pointer (SRAM address) the firmware has reached since its last
        reset; ``lowest_stack() - (SRAM_START + static RAM)`` is the headroom left."""
        self.sync()
        self.stack_low = None
        self._send("stack")
        with self._cond:
            if not self._cond.wait_for(lambda: self.stack_low is not None, 5.0):
                raise SimavrError("simavr harness did not report its stack")
            low = self.stack_low
        assert low is not None
        return int(low)

    def reset(self, cause: str = "external", timeout: float = 5.0) -> None:
        """Reset the MCU: ``external`` (the reset pin: a DTR auto-reset), ``watchdog``,
        ``brownout``, or ``power`` (a power cycle: the pots too go to their power-on
        value). Returns once the reset has happened."""
        if cause not in RESET_CAUSES:
            raise ValueError(f"reset cause must be one of {', '.join(RESET_CAUSES)}, not {cause!r}")
        n = len(self.resets)
        self._send(f"reset {cause}")
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.resets) > n, timeout):
                raise SimavrError("simavr harness did not reset")

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    @property
    def parked(self) -> bool:
        """Whether every pot sits at the firmware's park tap (n_taps - 1 of the 129-tap
        MCP4131): a parked network, seen from the parts rather than from the firmware.
        Read it under :attr:`lock`, as the taps."""
        return bool(np.all(self.taps == MCP4131_TAPS - 1))

    # The pots hold their wipers through a reset, so a network under a booting firmware is
    # no different from a running one: only :attr:`parked` tells a measurement apart.
    booting = False

    def port_class(self) -> type[serial.Serial]:
        """A pyserial class for :attr:`path` whose DTR line resets the simulated board, as
        an Arduino's auto-reset does (see :func:`clln.simulator.bench.dtr_reset_port_class`)."""
        return dtr_reset_port_class(self.reset)

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._send("quit")
                self._proc.wait(timeout=2.0)
            except (SimavrError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for reader in self._readers:  # they end at the pipes' end of file
            if reader is not threading.current_thread():
                reader.join(timeout=2.0)
        for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


class AnalogFrontEnd:
    """The in-situ controller's analog front end (PROTOCOL.md §12.7), served on the
    harness's UART1 pty from ``physics``: the twin networks settled at the sources and
    clamps the firmware sends, their node voltages as the converters read them, and the
    learning window as long as the firmware held its LEARN line high (simulated CPU
    cycles, reported by the harness, at ``frequency`` Hz). A physics with tracked taps
    (``params.taps``) is served through ``GET_TAPS``/``SET_TAPS``; one whose state is analog
    (gate volts) reports 0 taps in ``INFO`` and is served through ``GET_STATE``/``SET_STATE``
    as float64 volts, :data:`STATE_EDGES` edges per request at most.

    Attributes: ``windows`` (cycles of every learning window), ``requests`` served,
    ``releases`` (RELEASE requests: a PARK or the watchdog), ``repeats`` (requests the
    firmware sent again, its reply lost, damaged or late: answered again, not executed
    again), ``damaged`` requests (dropped; the firmware
    sends them again), ``slowest`` reply (s, wall time),
    ``errors`` (stray windows, model errors).
    """

    INFO, MEASURE, ARM, GET_TAPS, SET_TAPS, RELEASE, GET_STATE, SET_STATE = range(1, 9)
    OK, BAD_LENGTH, OUT_OF_RANGE = 0, 2, 3
    STATE_EDGES = 31  # f64 values in one reply: its length byte counts the status too

    def __init__(self, path: str, physics: FrontEndPhysics, frequency: int) -> None:
        self.physics = physics
        self.frequency = frequency
        self.windows: list[int] = []
        self.requests = 0
        self.releases = 0
        self.repeats = 0
        self.damaged = 0
        self.slowest = 0.0  # s, the longest a request waited for its reply here
        self.errors: list[str] = []
        self._pending: queue.Queue[int] = queue.Queue()
        self._armed: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._lock = threading.Lock()
        self._closed = False
        roles = physics.network.roles
        self.n_sources, self.outputs = len(roles.sources), tuple(physics.output_nodes)
        self.n_taps = int(getattr(physics.params, "taps", 0))  # 0: an analog state
        self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._fd, termios.TCSANOW)  # not TCSAFLUSH: keep what the firmware sent
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def window(self, cycles: int) -> None:
        """The harness saw LEARN high for ``cycles``: the armed window has ended."""
        with self._lock:
            self.windows.append(cycles)
            if self._armed is None:
                self.errors.append(f"learning window of {cycles} cycles with nothing armed")
            else:
                self._pending.put(cycles)

    def _learn(self) -> None:
        """Apply the armed window before anything else happens on the bench."""
        with self._lock:
            armed = self._armed
        if armed is None:
            return
        try:
            cycles = self._pending.get(timeout=5.0)
        except queue.Empty:
            self.errors.append("armed window never came")
            cycles = 0
        with self._lock:
            self._armed = None
        sources, clamps, free_clamps = armed
        if cycles:
            self.physics.learn(sources, clamps, cycles / self.frequency, free_clamps)

    def _floats(self, data: bytes, offset: int, count: int) -> np.ndarray:
        return np.frombuffer(data, dtype="<f4", count=count, offset=offset).astype(np.float64)

    def _handle(self, cmd: int, p: bytes) -> bytes:
        self._learn()
        ns, no = self.n_sources, len(self.outputs)
        phys = self.physics
        m = phys.network.n_edges
        if cmd == self.INFO:
            return struct.pack("<BBBHBB", self.OK, phys.network.n_nodes, m, self.n_taps, ns,
                               no) + bytes(self.outputs)
        if cmd in (self.GET_TAPS, self.SET_TAPS) and not self.n_taps:
            return bytes([self.OUT_OF_RANGE])  # no tracked taps: GET_STATE, SET_STATE
        if cmd in (self.GET_STATE, self.SET_STATE):
            return self._state(cmd, p)
        if cmd in (self.MEASURE, self.ARM):
            mirrored = cmd == self.ARM and len(p) >= 1 and p[0] & 1
            clamped = cmd == self.ARM or (len(p) >= 1 and p[0] & 1)
            need = 1 + 4 * (ns + no * (clamped + bool(mirrored)))
            if len(p) != need:
                return bytes([self.BAD_LENGTH])
            sources = self._floats(p, 1, ns)
            clamps = self._floats(p, 1 + 4 * ns, no) if clamped else None
            if cmd == self.ARM:
                free = self._floats(p, 1 + 4 * (ns + no), no) if mirrored else None
                with self._lock:
                    self._armed = (sources, clamps, free)  # type: ignore[assignment]
                return bytes([self.OK])
            volts = phys.measure(sources[None], None if clamps is None else clamps[None])[0]
            return bytes([self.OK]) + volts.astype("<f4").tobytes()
        if cmd == self.GET_TAPS:
            return bytes([self.OK]) + phys.taps.astype("<u2").tobytes()  # type: ignore[union-attr]
        if cmd == self.SET_TAPS:
            if len(p) != 2 * m:
                return bytes([self.BAD_LENGTH])
            taps = np.frombuffer(p, dtype="<u2").astype(np.int64)
            if np.any(taps >= self.n_taps):
                return bytes([self.OUT_OF_RANGE])
            phys.taps = taps  # type: ignore[union-attr]  # a physics with tracked taps
            return bytes([self.OK])
        if cmd == self.RELEASE:
            self.releases += 1
            with self._lock:
                self._armed = None
            return bytes([self.OK])
        return bytes([1])  # unknown

    def _state(self, cmd: int, p: bytes) -> bytes:
        """``GET_STATE`` ``first: u8, count: u8`` -> ``f64[count]``; ``SET_STATE`` ``first: u8,
        f64[count]`` (both twins' gates of those edges, within the driver's rails)."""
        phys = self.physics
        m = phys.network.n_edges
        if self.n_taps:
            return bytes([self.OUT_OF_RANGE])  # tracked taps: GET_TAPS, SET_TAPS
        if cmd == self.GET_STATE:
            if len(p) != 2:
                return bytes([self.BAD_LENGTH])
            first, count = p
            if count > self.STATE_EDGES or first + count > m:
                return bytes([self.OUT_OF_RANGE])
            return bytes([self.OK]) + phys.read_state()[first:first + count].astype("<f8").tobytes()
        if len(p) < 1 or (len(p) - 1) % 8 or (len(p) - 1) // 8 > self.STATE_EDGES:
            return bytes([self.BAD_LENGTH])
        first, volts = p[0], np.frombuffer(p, dtype="<f8", offset=1)
        if first + len(volts) > m or not np.all((volts >= 0) & (volts <= phys.params.rail)):  # type: ignore[union-attr]
            return bytes([self.OUT_OF_RANGE])
        gates = phys.read_state()
        gates[first:first + len(volts)] = volts
        # the gates charged to the given volts, both twins (PROTOCOL.md §12.6)
        phys.load_state_dict({**phys.state_dict(), "gates": np.tile(gates, (2, 1)), "warm": []})
        return bytes([self.OK])

    def _serve(self) -> None:
        buf = self._buf = bytearray()
        last = reply = b""
        heard = time.monotonic()
        while not self._closed:
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                # a request takes well under a millisecond of the link; bytes left unparsed
                # for 200 ms are a fragment (the firmware asks again after 500 ms)
                if buf and time.monotonic() - heard > 0.2:
                    self.damaged += 1
                    buf.clear()
                continue
            try:
                buf += os.read(self._fd, 4096)
            except OSError:
                return
            heard = time.monotonic()
            while len(buf) >= 5 and len(buf) >= 5 + buf[2]:  # cmd, seq, len, payload, CRC
                n = buf[2]
                frame = bytes(buf[:5 + n])
                if binascii.crc_hqx(frame[:3 + n], 0xFFFF) != int.from_bytes(frame[3 + n:], "big"):
                    self.damaged += 1  # out of step: look for a frame one byte on
                    del buf[:1]
                    continue
                del buf[:5 + n]
                self.requests += 1
                if frame == last:  # a retry (same seq): its reply went astray, send it again
                    self.repeats += 1
                    os.write(self._fd, reply)
                    continue
                started = time.monotonic()
                try:
                    body = self._handle(frame[0], frame[3:3 + n])
                except Exception as exc:  # noqa: BLE001 - a model error must not stop the server
                    self.errors.append(f"request {frame[0]}: {exc!r}")
                    body = bytes([0xFF])
                self.slowest = max(self.slowest, time.monotonic() - started)
                head = bytes([frame[0] | 0x80, frame[1], len(body)]) + body
                last, reply = frame, head + binascii.crc_hqx(head, 0xFFFF).to_bytes(2, "big")
                os.write(self._fd, reply)

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=1.0)
        os.close(self._fd)


class SimavrInSitu(SimavrPotBank):
    """The in-situ firmware (``build(..., insitu=True)``) under simavr, its analog front end
    served from ``physics`` (:class:`AnalogFrontEnd`, attribute ``front_end``). The host
    driver (:class:`clln.drivers.insitu.InSituBench`) opens :attr:`path`."""

    def __init__(self, build: Build, physics: FrontEndPhysics, **kwargs: Any) -> None:
        self.front_end: AnalogFrontEnd | None = None
        self._afe_path = ""
        super().__init__(build, extra_args=("-a", LEARN_PIN), **kwargs)
        if not self._afe_path:
            self.close()
            raise SimavrError("simavr harness gave no front-end pty (a firmware without -a?)")
        self.front_end = AnalogFrontEnd(self._afe_path, physics, self.frequency)

    @classmethod
    def twin_of(cls, bench: Any, build: Build, **kwargs: Any) -> SimavrInSitu:
        """The firmware on a front end with the parts and the state of a simulated in-situ
        bench as it stands now: a comparator-twin bench
        (:class:`~clln.simulator.insitu_pot.ComparatorTwinBench`: the parts drawn from the
        same bench seed, its taps) or a twin transistor bench: its physics' replica."""
        return cls(build, bench.physics.replica(), **kwargs)

    def _line(self, parts: list[str]) -> None:
        if parts[0] == "PTY1" and len(parts) == 2:
            self._afe_path = parts[1]
        elif parts[0] == "L" and len(parts) == 2 and self.front_end is not None:
            self.front_end.window(int(parts[1]))

    def close(self) -> None:
        super().close()
        if self.front_end is not None:
            self.front_end.close()
            self.front_end = None


class FaultyPort:
    """An open serial port whose bytes, both ways, suffer ``faults``
    (:class:`clln.simulator.bench.Faults`: lost, or a bit flipped): the host's side of a
    noisy link to the simulated board."""

    def __init__(self, port: serial.Serial, faults: Faults) -> None:
        self._port = port
        self.faults = faults

    def read(self, size: int = 1) -> bytes:
        return self.faults.apply(self._port.read(size))

    def write(self, data: bytes) -> int | None:
        return self._port.write(self.faults.apply(bytes(data)))

    @property
    def timeout(self) -> float | None:
        return self._port.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._port.timeout = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)
