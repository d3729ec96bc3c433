"""SCPI instruments through ``pyvisa``: a source-measure unit (SMU) and a digital
multimeter (DMM), each a small class over an injected pyvisa resource.

Real and simulated instruments are swapped at the resource manager: a real VISA
library by default, ``"path/to/instruments.yaml@sim"`` for pyvisa-sim
(``drivers/instruments/bench-sim.yaml`` describes the reference bench's pair).
Construction does no I/O.
"""

from __future__ import annotations

from typing import Any

from clln.drivers.errors import DeviceNotFound, DriverError


def open_instrument(address: str, visa_library: str = "", *, timeout_ms: int = 2000) -> Any:
    """Open a VISA resource (``visa_library`` "" for the system VISA, or "file.yaml@sim")."""
    import pyvisa

    try:
        rm = pyvisa.ResourceManager(visa_library)
        resource = rm.open_resource(address, read_termination="\n", write_termination="\n")
    except (pyvisa.errors.VisaIOError, OSError, ValueError) as exc:
        raise DeviceNotFound(f"VISA instrument {address!r}: cannot open ({exc})") from None
    resource.timeout = timeout_ms
    return resource


class ScpiInstrument:
    """Common SCPI plumbing: identification, errors, reset."""

    def __init__(self, resource: Any) -> None:
        self.resource = resource

    def write(self, command: str) -> None:
        self.resource.write(command)

    def ask(self, query: str) -> str:
        return str(self.resource.query(query)).strip()

    def ask_float(self, query: str) -> float:
        reply = self.ask(query)
        try:
            return float(reply)
        except ValueError:
            raise DriverError(f"{query!r} answered {reply!r}, not a number") from None

    def identify(self) -> str:
        return self.ask("*IDN?")

    def reset(self) -> None:
        self.write("*RST")

    def check_errors(self) -> None:
        """Raise DriverError with the instrument's first queued error, if any."""
        reply = self.ask(":SYST:ERR?")
        code = reply.split(",", 1)[0].strip()
        if code not in ("0", "+0"):
            raise DriverError(f"instrument error: {reply}")

    def close(self) -> None:
        self.resource.close()


class Smu(ScpiInstrument):
    """A source-measure unit (Keithley 2400-style SCPI)."""

    def source_voltage(self, volts: float, *, compliance_a: float = 2.5e-3) -> None:
        """Source a DC voltage with a current compliance (A)."""
        self.write(":SOUR:FUNC VOLT")
        self.write(f":SENS:CURR:PROT {compliance_a:.6g}")
        self.write(f":SOUR:VOLT {volts:.6g}")

    def output(self, on: bool) -> None:
        self.write(f":OUTP {'ON' if on else 'OFF'}")

    def measure_current(self) -> float:
        """Current (A) at the sourced voltage."""
        return self.ask_float(":MEAS:CURR?")

    def four_wire_resistance(self) -> float:
        """Resistance (ohm) between the force/sense pairs, 4-wire."""
        self.write(":SYST:RSEN ON")
        return self.ask_float(":MEAS:RES?")

    OVERFLOW = 9.9e37  # what a Keithley 2400 returns for an over-range reading

    def measure_resistance(self, current_a: float, *, compliance_v: float) -> float:
        """4-wire resistance (ohm) in manual-ohms mode: source ``current_a``, measure the
        voltage (limited to ``compliance_v``), output off afterwards.

        Raises
        ------
        DriverError
            When the reading overflowed (the voltage compliance was reached).
        """
        self.write(":SOUR:FUNC CURR")
        self.write(f":SOUR:CURR {current_a:.6g}")
        self.write(f":SENS:VOLT:PROT {compliance_v:.6g}")
        self.write(':SENS:FUNC "RES"')
        self.write(":SENS:RES:MODE MAN")
        self.write(":SYST:RSEN ON")
        self.write(":OUTP ON")
        try:
            value = self.ask_float(":MEAS:RES?")
        finally:
            self.write(":OUTP OFF")
        if abs(value) >= self.OVERFLOW:
            raise DriverError(f"SMU resistance reading overflowed: {current_a:g} A reached the "
                              f"{compliance_v:g} V compliance (open fixture or wrong nodes?)")
        return value


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


class Dmm(ScpiInstrument):
    """A digital multimeter (Keysight 34461A-style SCPI)."""

    def measure_voltage(self) -> float:
        """DC voltage (V)."""
        return self.ask_float("MEAS:VOLT:DC?")

    def four_wire_resistance(self) -> float:
        """4-wire resistance (ohm)."""
        return self.ask_float("MEAS:FRES?")
