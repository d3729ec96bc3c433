"""The emulated controller's serial link: a pseudo-terminal served in a background thread
(:class:`PtyLink`), the faults it can inject on the line (:class:`Faults`), a pyserial class
whose DTR line resets the controller as on an Arduino, and the traffic log of the
emulated bench (:class:`TrafficLog`)."""

from __future__ import annotations

import json
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import serial

from clln.simulator.emulator.firmware import PotFirmware


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
