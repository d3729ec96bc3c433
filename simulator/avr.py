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
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import serial

from clln.simulator.bench import dtr_reset_port_class

FIRMWARE = Path(__file__).resolve().parents[1] / "drivers" / "firmware"
TOOLS = ("make", "avr-gcc", "avr-size", "cc")
# Chip selects of the reference firmware on the Mega 2560: digital pins 22-29 are PA0-PA7
# and 30-37 are PC7-PC0 (the board's schematic); 16 pots.
MEGA2560_CS = tuple(f"A{b}" for b in range(8)) + tuple(f"C{b}" for b in range(7, -1, -1))
MCP4131_TAPS = 129  # wiper positions 0..128 (DS22060)
RESET_CAUSES = ("power", "external", "brownout", "watchdog")


class SimavrError(RuntimeError):
    """The firmware or the harness could not be built or run."""


def missing_tools() -> list[str]:
    """Tools (and libraries) that building and running the harness needs but are absent."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not Path("/usr/include/simavr/sim_avr.h").exists():
        missing.append("libsimavr-dev (simavr headers)")
    if not Path("/usr/share/arduino/hardware/arduino/avr/cores/arduino").is_dir():
        missing.append("arduino-core-avr")
    return missing


@dataclass(frozen=True)
class Build:
    elf: Path
    harness: Path
    size: str  # avr-size summary line of the firmware


def _make(directory: Path, *args: str) -> str:
    proc = subprocess.run(["make", "-s", "-C", str(directory), *args], capture_output=True, text=True)
    if proc.returncode:
        raise SimavrError(f"make in {directory} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def build(out: str | Path, *, board: str = "mega2560", n_pots: int = 16, defines: str = "") -> Build:
    """Compile the firmware (for ``board``, with extra ``-D`` ``defines``) and the harness
    into ``out``; up-to-date files are not rebuilt."""
    out = Path(out)
    fw_dir = out / f"{board}-{n_pots}{'-' + defines.replace(' ', '') if defines else ''}"
    size = _make(FIRMWARE / "potbank", f"BOARD={board}", f"N_POTS={n_pots}", f"BUILD={fw_dir}",
                 f"EXTRA={defines}")
    _make(FIRMWARE / "simavr", f"BUILD={out}")
    return Build(fw_dir / "potbank.elf", out / "potbank_sim", size.strip().splitlines()[-1])


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
                 startup_timeout: float = 10.0) -> None:
        self.taps = np.full(len(cs), -1, dtype=np.int64)
        self.wiper_log: list[tuple[int, int, float]] = []
        self.resets: list[int] = []
        self.slow_reads = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._synced: set[str] = set()
        self._token = 0
        self._stderr: list[str] = []
        self._proc = subprocess.Popen(
            [str(build.harness), str(build.elf), "-m", mcu, "-f", str(frequency),
             *(["-b"] if bootloader else []), *cs],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1)
        self.path = ""
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()
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
                self._cond.notify_all()

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
        for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


def default_build_dir() -> Path:
    """Where builds are cached between runs (``CLLN_AVR_BUILD`` or a per-user temp dir)."""
    env = os.environ.get("CLLN_AVR_BUILD")
    return Path(env) if env else Path("/tmp") / f"clln-avr-{os.getuid()}"

