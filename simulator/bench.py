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

The parts live in :mod:`clln.simulator.emulator`, one module each (``firmware``,
``link``, ``daq``, ``model``, ``bench``); this module keeps the names importable from
where they have always been.
"""

from __future__ import annotations

from clln.simulator.emulator.bench import EmulatedBench, WiringFaults
from clln.simulator.emulator.daq import EmulatedDaq
from clln.simulator.emulator.firmware import (
    BAD_LENGTH,
    BOOT,
    BOOT_WATCHDOG_MS,
    GET_ALL,
    GET_STATUS,
    HARDWARE_FAULT,
    HELLO,
    INCOMPATIBLE,
    NO_HANDSHAKE,
    OK,
    OUT_OF_RANGE,
    PARK,
    PING,
    RESET_CAUSE,
    SET_ALL,
    SET_ONE,
    SET_WATCHDOG,
    UNKNOWN_COMMAND,
    VERSION,
    PotFirmware,
)
from clln.simulator.emulator.link import Faults, PtyLink, TrafficLog, dtr_reset_port_class
from clln.simulator.emulator.model import BenchModel, EdgeFaults
from clln.simulator.smu import EmulatedSmu

__all__ = [
    "BAD_LENGTH", "BOOT", "BOOT_WATCHDOG_MS", "GET_ALL", "GET_STATUS", "HARDWARE_FAULT", "HELLO",
    "INCOMPATIBLE", "NO_HANDSHAKE", "OK", "OUT_OF_RANGE", "PARK", "PING", "RESET_CAUSE", "SET_ALL",
    "SET_ONE", "SET_WATCHDOG", "UNKNOWN_COMMAND", "VERSION", "BenchModel", "EdgeFaults",
    "EmulatedBench", "EmulatedDaq", "EmulatedSmu", "Faults", "PotFirmware", "PtyLink", "TrafficLog",
    "WiringFaults", "dtr_reset_port_class",
]
