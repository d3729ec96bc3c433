"""SCPI source-measure units (SMUs) through ``pyvisa``: 4-wire resistance with a sourced
current, on a Keithley 2400 (2400 Series SourceMeter User's Manual, 2400S-900-01) or a
Keithley 2450 in its native SCPI (Model 2450 Reference Manual, 2450-901-01).

Each driver is a small class over an injected pyvisa resource; construction does no I/O.
Real and simulated instruments are swapped at the resource manager: the system VISA by
default, a named backend (``@py``, ``@ivi``, ``@sim``), or ``"path/instruments.yaml@sim"``
for pyvisa-sim (``drivers/instruments/bench-sim.yaml`` describes both SMUs as their
manuals say they answer). A bench file may name only a backend; a library path comes from
the command line (``--visa-library``) or the environment (``CLLN_VISA_LIBRARY``).
"""

from __future__ import annotations

import math
import os
from typing import Any

from clln.controller.errors import LimitError
from clln.drivers.errors import DeviceNotFound, DriverError

#: VISA backends a bench file may name ("" is the system VISA).
VISA_BACKENDS = ("", "@py", "@ivi", "@sim")
VISA_LIBRARY_ENV = "CLLN_VISA_LIBRARY"


def visa_library(bench_value: str = "", command_line: str | None = None) -> str:
    """The VISA library to open: the command line's ``--visa-library``, else
    ``$CLLN_VISA_LIBRARY``, else the bench file's backend (one of :data:`VISA_BACKENDS`,
    checked when the bench file is read)."""
    if command_line:
        return command_line
    return os.environ.get(VISA_LIBRARY_ENV) or bench_value


def open_instrument(address: str, visa_library: str = "", *, timeout_ms: int = 2000) -> Any:
    """Open a VISA resource (``visa_library`` "" for the system VISA, a backend such as
    "@py", or "file.yaml@sim")."""
    import pyvisa

    try:
        rm = pyvisa.ResourceManager(visa_library)
        resource = rm.open_resource(address, read_termination="\n", write_termination="\n")
    except (pyvisa.errors.VisaIOError, OSError, ValueError) as exc:
        raise DeviceNotFound(f"VISA instrument {address!r}: cannot open ({exc})") from None
    resource.timeout = timeout_ms
    return resource


class ScpiInstrument:
    """Common SCPI plumbing: identification, the error queue, reset.

    ``NO_ERROR`` is the code the error queue answers when it is empty.
    """

    NAME = "SCPI instrument"

    def __init__(self, resource: Any) -> None:
        self.resource = resource

    def write(self, command: str) -> None:
        self.resource.write(command)

    def ask(self, query: str) -> str:
        import pyvisa

        try:
            return str(self.resource.query(query)).strip()
        except pyvisa.errors.VisaIOError as exc:
            errors = self._drain_errors_quietly()
            raise DriverError(f"{self.NAME}: no answer to {query!r} ({exc.description})"
                              + (f"; error queue: {'; '.join(errors)}" if errors else "")) from None

    def ask_float(self, query: str) -> float:
        reply = self.ask(query)
        try:
            return float(reply)
        except ValueError:
            raise DriverError(f"{self.NAME}: {query!r} answered {reply!r}, not one number") from None

    def identify(self) -> str:
        return self.ask("*IDN?")

    def reset(self) -> None:
        self.write("*RST")

    def errors(self, limit: int = 32) -> list[str]:
        """Empty the error queue (``:SYST:ERR?`` until code 0); the entries, oldest first."""
        out: list[str] = []
        for _ in range(limit):
            reply = self.ask(":SYST:ERR?")
            code = reply.split(",", 1)[0].strip()
            try:
                if int(code) == 0:
                    return out
            except ValueError:
                raise DriverError(f"{self.NAME}: ':SYST:ERR?' answered {reply!r}") from None
            out.append(reply)
        return out

    def check_errors(self, what: str = "") -> None:
        """Raise DriverError listing the queued errors (after ``what``), if any."""
        found = self.errors()
        if found:
            after = f" after {what}" if what else ""
            raise DriverError(f"{self.NAME} reported {len(found)} error(s){after}: {'; '.join(found)}")

    def _drain_errors_quietly(self) -> list[str]:
        try:
            return self.errors(limit=8)
        except Exception:  # the instrument is not answering at all
            return []

    def close(self) -> None:
        self.resource.close()


class Smu(ScpiInstrument):
    """A source-measure unit measuring 4-wire resistance with a sourced current.

    Subclasses give the model's command set: :meth:`setup_commands` configures manual
    ohms (source ``current_a``, limit the voltage to ``compliance_v``, 4-wire, output-off
    state high impedance so that the idle SMU does not load the network);
    :meth:`measure_resistance` turns the output on, triggers one reading with ``:READ?``
    (never ``:MEAS``, which re-runs ``:CONF`` and puts the defaults back), asks whether
    the voltage limit was reached, and turns the output off.
    """

    MODEL = ""
    OVERFLOW = 9.9e37  # an over-range reading (9.9e37; 9.91e37 is the "not a number" value)
    LIMIT_QUERY = ""
    PARK_COMMANDS: tuple[str, ...] = ()

    def __init__(self, resource: Any) -> None:
        super().__init__(resource)
        self._configured: tuple[float, float] | None = None

    def setup_commands(self, current_a: float, compliance_v: float) -> list[str]:
        raise NotImplementedError

    def configure_resistance(self, current_a: float, compliance_v: float) -> None:
        """Send the manual-ohms set-up (it starts with ``*RST`` and ``*CLS``, which empties
        the error queue), then read the error queue: any error raises DriverError naming
        the command set, before the output is ever turned on."""
        if not (math.isfinite(current_a) and math.isfinite(compliance_v) and compliance_v > 0):
            raise LimitError(f"SMU set-up needs a finite current and a positive finite compliance, "
                             f"not {current_a!r} A, {compliance_v!r} V (nothing was sent)")
        commands = self.setup_commands(current_a, compliance_v)
        for command in commands:
            self.write(command)
        found = self.errors()
        if found:
            self._configured = None
            raise DriverError(f"{self.NAME} rejected the resistance set-up ({'; '.join(commands)}): "
                              f"{'; '.join(found)}")
        self._configured = (current_a, compliance_v)

    def park(self) -> None:
        """Output off, in the high-impedance output-off state (the output relay open), so
        that the idle SMU does not load the nodes its leads join; the error queue is
        checked afterwards. Nothing else of the set-up changes."""
        for command in self.PARK_COMMANDS:
            self.write(command)
        self.check_errors(f"parking ({'; '.join(self.PARK_COMMANDS)})")

    def measure_resistance(self, current_a: float, *, compliance_v: float) -> float:
        """4-wire resistance (ohm) at the sourced ``current_a`` (A) with the voltage limited
        to ``compliance_v`` (V); the output is off again afterwards.

        Raises
        ------
        DriverError
            When the set-up was rejected, the reading overflowed, or the voltage limit was
            reached (open fixture, wrong nodes, or a current too large for the network).
        """
        if self._configured != (current_a, compliance_v):
            self.configure_resistance(current_a, compliance_v)
        self.write(":OUTP ON")
        try:
            value = self.ask_float(":READ?")
            limited = self.ask(self.LIMIT_QUERY).strip() in ("1", "+1")
        finally:
            self.write(":OUTP OFF")
        if abs(value) >= self.OVERFLOW or limited:
            raise DriverError(f"SMU resistance reading overflowed: {current_a:g} A reached the "
                              f"{compliance_v:g} V compliance (open fixture or wrong nodes?)")
        return value


class Keithley2400(Smu):
    """Keithley 2400 SourceMeter (2400 Series User's Manual, sections 4 and 17-18).

    Manual ohms (``:SENS:RES:MODE MAN``): the user sources the current and sets the
    voltage compliance (``:SENS:VOLT:PROT``); the reading is V/I. ``:FORM:ELEM RES`` makes
    ``:READ?`` return the resistance alone instead of the default five elements
    (VOLT,CURR,RES,TIME,STAT). ``:SENS:VOLT:PROT:TRIP?`` says whether the compliance was
    reached.
    """

    MODEL = "2400"
    NAME = "Keithley 2400"
    LIMIT_QUERY = ":SENS:VOLT:PROT:TRIP?"
    PARK_COMMANDS = ("*CLS", ":OUTP:SMOD HIMP", ":OUTP OFF")

    def setup_commands(self, current_a: float, compliance_v: float) -> list[str]:
        # the output-off state first: *RST puts back NORMAL (relay closed, 0 V)
        return ["*RST", "*CLS", ":OUTP:SMOD HIMP", ':SENS:FUNC "RES"', ":SENS:RES:MODE MAN",
                ":SOUR:FUNC CURR", f":SOUR:CURR {current_a:.6g}", f":SENS:VOLT:PROT {compliance_v:.6g}",
                ":SYST:RSEN ON", ":FORM:ELEM RES"]


class Keithley2450(Smu):
    """Keithley 2450 SourceMeter, native SCPI (Reference Manual 2450-901-01, section 6).

    Source current with a voltage limit (``:SOUR:CURR:VLIM``), resistance measure
    function, 4-wire (``:SENS:RES:RSEN ON``) and offset-compensated
    (``:SENS:RES:OCOM ON``); ``:OUTP:CURR:SMOD HIMP`` opens the output relay when the
    current source is off. ``:READ?`` returns the reading alone by default;
    ``:SOUR:CURR:VLIM:TRIP?`` says whether the voltage limit was reached.
    """

    MODEL = "2450"
    NAME = "Keithley 2450"
    LIMIT_QUERY = ":SOUR:CURR:VLIM:TRIP?"
    PARK_COMMANDS = ("*CLS", ":OUTP:SMOD HIMP", ":OUTP OFF")  # no <function>: every source function

    def setup_commands(self, current_a: float, compliance_v: float) -> list[str]:
        # the output-off state is stored per source function: set it right after choosing
        # the function (*RST puts back NORMAL)
        return ["*RST", "*CLS", ":SOUR:FUNC CURR", ":OUTP:CURR:SMOD HIMP", f":SOUR:CURR {current_a:.6g}",
                f":SOUR:CURR:VLIM {compliance_v:.6g}", ':SENS:FUNC "RES"', ":SENS:RES:RSEN ON",
                ":SENS:RES:OCOM ON"]


SMU_MODELS: dict[str, type[Smu]] = {"2400": Keithley2400, "2450": Keithley2450}


def make_smu(model: str, resource: Any) -> Smu:
    """The driver of an SMU model (a key of :data:`SMU_MODELS`) over ``resource``."""
    try:
        return SMU_MODELS[model](resource)
    except KeyError:
        raise ValueError(f"unknown SMU model {model!r}; allowed: {', '.join(SMU_MODELS)}") from None


class FixtureMeter:
    """An SMU on a fixture across two nodes of the network, as the calibration's
    ``ResistanceMeter``: 4-wire resistance at a fixed test current and voltage compliance.

    Parameters
    ----------
    smu : the SMU driver.
    nodes : the two nodes its force and sense leads join.
    current : test current, A.
    compliance : voltage compliance, V.
    guard : called with the compliance voltage before every reading; raises if that
        voltage could exceed the bench's limits (so nothing is sourced before the check).
    """

    def __init__(self, smu: Smu, nodes: tuple[int, int], *, current: float, compliance: float,
                 guard: Any = None) -> None:
        self.smu = smu
        self.nodes = (int(nodes[0]), int(nodes[1]))
        self.current = current
        self.compliance = compliance
        self.guard = guard
        self.readings = 0

    def measure(self) -> float:
        if self.guard is not None:
            self.guard(self.compliance)
        self.readings += 1
        return self.smu.measure_resistance(self.current, compliance_v=self.compliance)

    def close(self) -> None:
        self.smu.close()
