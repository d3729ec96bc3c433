"""The emulated source-measure unit: a Keithley 2400 or 2450 on a fixture across two
nodes of the emulated bench, as a pyvisa resource look-alike answering from the bench
model in the formats the manuals give.

It parses the command set of the model it emulates (2400 Series SourceMeter User's
Manual, 2400S-900-01; Model 2450 Reference Manual, 2450-901-01) with SCPI's long and
short forms, keeps the state those commands set, and answers:

* Keithley 2400: ``:READ?`` with the ``:FORM:ELEM`` elements in the instrument's order
  VOLT,CURR,RES,TIME,STAT (all five after ``*RST``; +9.91e37 for a function neither
  sourced nor measured); ``:CONF:RES`` and ``:MEAS:RES?`` put the resistance controls back
  to their ``*RST`` values (auto ohms, which chooses its own test current) and turn the
  output on; ``:READ?`` with the output off queues +803 and sends nothing; in manual
  ohms the reading is V/I with V held at the compliance (``:SENS:VOLT:PROT:TRIP?`` 1).
* Keithley 2450: ``:READ?`` with the reading alone; the current source's voltage limit
  ``:SOUR:CURR:VLIM`` (``:SOUR:CURR:VLIM:TRIP?``); 4-wire per function
  (``:SENS:RES:RSEN``); the output-off state per source function (``:OUTP:CURR:SMOD``);
  the event log's ``code,"message;severity;date time"`` replies.

Both queue -113 "Undefined header" for a command outside their set; a query nobody
answers times out as pyvisa would (``VisaIOError``). 2-wire readings include the leads'
resistance. While the SMU's output is on, or off in any state but high impedance, it
loads the network (:attr:`EmulatedSmu.loads_network`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clln.simulator.bench import BenchModel

NAN_VALUE = 9.91e37     # "not a number": a function neither sourced nor measured
ELEMENTS = ("VOLT", "CURR", "RES", "TIME", "STAT")
_DEFAULT_NODES = {"LEV", "IMM", "AMPL", "NEXT", "DC", "UPP"}
# 2400 auto-ohms ranges (ohm) and their test currents (A), User's Manual section 4.
_AUTO_OHMS = ((21.0, 0.1), (210.0, 0.01), (2.1e3, 1e-3), (21e3, 1e-4), (210e3, 1e-5),
              (2.1e6, 1e-6), (21e6, 1e-6), (210e6, 1e-7))


def short_form(mnemonic: str) -> str:
    """SCPI short form of a mnemonic (its first four letters, three when the fourth is a
    vowel), without the numeric suffix 1: SENSE1 -> SENS, RESISTANCE -> RES."""
    word = mnemonic.upper().rstrip("1") if mnemonic[-1:] == "1" and len(mnemonic) > 1 else mnemonic.upper()
    if len(word) <= 4:
        return word
    return word[:3] if word[3] in "AEIOU" else word[:4]


def canonical(header: str) -> str:
    """A command header in short form with the optional nodes dropped:
    ``:SENSe:RESistance:MODE`` -> ``SENS:RES:MODE``, ``:RES:MODE`` -> ``SENS:RES:MODE``,
    ``:OUTPut:STATe`` -> ``OUTP``, ``:SYSTem:ERRor:NEXT?`` -> ``SYST:ERR?``."""
    query = header.endswith("?")
    nodes = [short_form(n) for n in header.rstrip("?").strip(":").split(":") if n]
    nodes = [n for n in nodes if n not in _DEFAULT_NODES]
    if nodes[:1] == ["OUTP"] and nodes[1:] == ["STAT"]:
        nodes = ["OUTP"]
    if nodes and nodes[0] in ("FUNC", "RES", "VOLT", "CURR") and not (
            len(nodes) == 1 and nodes[0] in ("VOLT", "CURR")):
        nodes = ["SENS", *nodes]  # [:SENSe[1]] is optional
    return ":".join(nodes) + ("?" if query else "")


class _Undefined(Exception):
    """A command outside the emulated model's set."""


class EmulatedSmu:
    """A Keithley 2400 or 2450 on a fixture across nodes ``(a, b)`` of the bench model.

    Parameters
    ----------
    model : the bench model.
    nodes : (a, b) fixture nodes.
    sync : puts the model at the firmware's taps before a reading.
    instrument : "2400" or "2450", the command set and reply formats.
    gain_error : relative gain error; drawn uniform in +-3e-4 from ``seed`` when None
        (a Keithley 2400's 4-wire ohms accuracy on the 10 kOhm range is ~0.03 %).
    noise : relative rms noise per reading.
    reading_time : seconds per reading (integration, settling, bus).
    lead_resistance : ohm per force lead, seen by a 2-wire reading only.
    """

    IDN = {"2400": "KEITHLEY INSTRUMENTS INC.,MODEL 2400,EMULATED,C32 (clln bench emulator)",
           "2450": "KEITHLEY INSTRUMENTS,MODEL 2450,EMULATED,1.7.12b (clln bench emulator)"}

    def __init__(self, model: BenchModel, nodes: tuple[int, int], *, sync: Callable[[], None],
                 instrument: str = "2400", gain_error: float | None = None, noise: float = 3e-5,
                 reading_time: float = 0.2, seed: int = 0, lead_resistance: float = 0.5) -> None:
        if instrument not in self.IDN:
            raise ValueError(f"no emulated SMU model {instrument!r}; allowed: {', '.join(self.IDN)}")
        self.model = model
        self.nodes = (int(nodes[0]), int(nodes[1]))
        self.sync = sync
        self.instrument = instrument
        self._rng = np.random.default_rng(seed)
        self.gain_error = float(self._rng.uniform(-3e-4, 3e-4)) if gain_error is None else gain_error
        self.noise = noise
        self.reading_time = reading_time
        self.lead_resistance = lead_resistance
        self.timeout = 2000
        self.readings = 0
        self.sourced: list[tuple[float, float]] = []  # (A, V limit) of every reading
        self._errors: list[tuple[int, str]] = []
        self._reset()

    # --- state -------------------------------------------------------------------

    def _reset(self) -> None:
        self.output = False
        self.source = "VOLT"
        self.level = {"CURR": 0.0, "VOLT": 0.0}
        self.tripped = False
        if self.instrument == "2400":
            self.functions = {"CURR"}          # concurrent functions, *RST: CURR:DC
            self.ohms_mode = "AUTO"
            self.offset_compensated = False
            self.four_wire = False
            self.volt_protection, self.curr_protection = 21.0, 1.05e-4
            self.elements = list(ELEMENTS)
            self.off_mode = {"CURR": "NORM", "VOLT": "NORM"}
        else:
            self.function = "CURR"
            self.rsense = {"CURR": False, "VOLT": False, "RES": False}
            self.offset_compensated = False
            self.vlim, self.ilim = 21.0, 1.05e-4
            self.off_mode = {"CURR": "NORM", "VOLT": "NORM"}

    @property
    def loads_network(self) -> bool:
        """Whether the SMU is connected to the fixture nodes (output on, or off in a state
        other than high impedance, in which the output relay stays closed)."""
        return self.output or self.off_mode[self.source] != "HIMP"

    # --- pyvisa resource interface -------------------------------------------------

    def write(self, command: str) -> None:
        for unit in command.split(";"):
            if unit.strip():
                self._execute(unit.strip())

    def query(self, command: str) -> str:
        reply = None
        for unit in command.split(";"):
            if unit.strip():
                reply = self._execute(unit.strip())
        if reply is None:
            import pyvisa

            raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_timeout)
        return reply

    def close(self) -> None:
        self.output = False

    # --- parsing -------------------------------------------------------------------

    def _execute(self, unit: str) -> str | None:
        head, _, arg = unit.partition(" ")
        arg = arg.strip()
        if head.startswith("*"):
            key = head.upper()
        else:
            try:
                key = canonical(head)
            except IndexError:
                key = ""
        try:
            if key.startswith("*"):
                return self._common(key, arg)
            handled, reply = self._shared(key, arg)
            if handled:
                return reply
            return (self._scpi_2400 if self.instrument == "2400" else self._scpi_2450)(key, arg)
        except _Undefined:
            self._error(-113, "Undefined header")
        except (KeyError, ValueError):
            self._error(-224, "Illegal parameter value")
        return None

    def _common(self, key: str, arg: str) -> str | None:
        if key == "*IDN?":
            return self.IDN[self.instrument]
        if key == "*RST":
            self._reset()
        elif key == "*CLS":
            self._errors.clear()
        elif key == "*OPC?":
            return "1"
        else:
            raise _Undefined
        return None

    def _error(self, code: int, message: str) -> None:
        self._errors.append((code, message))

    def _next_error(self) -> str:
        code, message = self._errors.pop(0) if self._errors else (0, "No error")
        if self.instrument == "2400":
            return f'{code},"{message}"'
        if code == 0:
            return '0,"No error;0;0 0"'
        seconds = self.model.clock.now
        stamp = f"2026/01/01 {int(seconds // 3600) % 24:02d}:{int(seconds // 60) % 60:02d}:{seconds % 60:06.3f}"
        return f'{code},"{message};1;{stamp}"'

    @staticmethod
    def _boolean(arg: str) -> bool:
        return {"ON": True, "1": True, "OFF": False, "0": False}[arg.upper()]

    @staticmethod
    def _number(arg: str) -> float:
        value = float(arg)
        if not math.isfinite(value):
            raise ValueError(arg)
        return value

    @staticmethod
    def _names(arg: str) -> list[str]:
        return [short_form(a.strip().strip('"\'').split(":")[0]) for a in arg.split(",") if a.strip()]

    def _shared(self, key: str, arg: str) -> tuple[bool, str | None]:
        """The commands both models share: (handled, reply)."""
        if key == "SYST:ERR?":
            return True, self._next_error()
        if key == "OUTP?":
            return True, "1" if self.output else "0"
        if key == "SOUR:FUNC":
            self.source = {"CURR": "CURR", "VOLT": "VOLT"}[short_form(arg)]
        elif key in ("SOUR:CURR", "SOUR:VOLT"):
            self.level[key[5:]] = self._number(arg)
        elif key == "OUTP":
            self.output = self._boolean(arg)
        elif key == "OUTP:SMOD":  # (2450: without <function>, every source function)
            mode = {"HIMP": "HIMP", "NORM": "NORM", "ZERO": "ZERO", "GUAR": "GUAR"}[short_form(arg)]
            self.off_mode = {"CURR": mode, "VOLT": mode}
        else:
            return False, None
        return True, None

    def _scpi_2400(self, key: str, arg: str) -> str | None:
        if key == "SENS:VOLT:PROT":
            self.volt_protection = self._number(arg)
        elif key == "SENS:CURR:PROT":
            self.curr_protection = self._number(arg)
        elif key in ("SENS:FUNC", "SENS:FUNC:ON"):
            self.functions |= set(self._function_names(arg))
        elif key == "SENS:FUNC:OFF":
            self.functions -= set(self._function_names(arg))
        elif key == "SENS:RES:MODE":
            self.ohms_mode = {"MAN": "MAN", "AUTO": "AUTO"}[short_form(arg)]
        elif key == "SENS:RES:OCOM":
            self.offset_compensated = self._boolean(arg)
        elif key == "SYST:RSEN":
            self.four_wire = self._boolean(arg)
        elif key == "FORM:ELEM":
            names = self._names(arg)
            if not names or any(n not in ELEMENTS for n in names):
                raise ValueError(arg)
            self.elements = [e for e in ELEMENTS if e in names]  # the instrument's order
        elif key == "CONF:RES":
            self._configure_resistance()
        elif key == "READ?":
            return self._read_2400()
        elif key == "MEAS:RES?":
            self._configure_resistance()
            return self._read_2400()
        elif key == "SENS:VOLT:PROT:TRIP?":
            return "1" if self.tripped and self.source == "CURR" else "0"
        elif key == "FORM:ELEM?":
            return ",".join(self.elements)
        elif key == "SENS:RES:MODE?":
            return self.ohms_mode
        elif key == "OUTP:SMOD?":
            return self.off_mode["CURR"]
        else:
            raise _Undefined
        return None

    def _function_names(self, arg: str) -> list[str]:
        names = self._names(arg)
        if not names or any(n not in ("VOLT", "CURR", "RES") for n in names):
            raise ValueError(arg)
        return names

    def _configure_resistance(self) -> None:
        """:CONF:RES (User's Manual 17-2): the ohms function alone, its controls back at
        their *RST values (auto ohms, no offset compensation), and the output on."""
        self.functions = {"RES"}
        self.ohms_mode = "AUTO"
        self.offset_compensated = False
        self.output = True

    def _scpi_2450(self, key: str, arg: str) -> str | None:
        if key == "SOUR:CURR:VLIM":
            self.vlim = self._number(arg)
        elif key == "SOUR:VOLT:ILIM":
            self.ilim = self._number(arg)
        elif key == "SENS:FUNC":
            (name,) = self._names(arg)
            self.function = {"CURR": "CURR", "VOLT": "VOLT", "RES": "RES"}[name]
        elif key in ("SENS:RES:RSEN", "SENS:CURR:RSEN", "SENS:VOLT:RSEN"):
            self.rsense[key.split(":")[1]] = self._boolean(arg)
        elif key == "SENS:RES:OCOM":
            self.offset_compensated = {"ON": True, "1": True, "OFF": False, "0": False,
                                       "AUTO": True}[arg.upper()]
        elif key in ("OUTP:CURR:SMOD", "OUTP:VOLT:SMOD"):
            mode = {"HIMP": "HIMP", "NORM": "NORM", "ZERO": "ZERO", "GUAR": "GUAR"}[short_form(arg)]
            self.off_mode[key.split(":")[1]] = mode
        elif key == "READ?":
            return self._read_2450()
        elif key == "MEAS:RES?":
            self.function = "RES"
            return self._read_2450()
        elif key == "SOUR:CURR:VLIM:TRIP?":
            return "1" if self.tripped and self.source == "CURR" else "0"
        elif key == "SOUR:CURR:VLIM?":
            return f"{self.vlim:.6E}"
        elif key == "OUTP:CURR:SMOD?":
            return self.off_mode["CURR"]
        else:
            raise _Undefined
        return None

    # --- measurement -----------------------------------------------------------------

    def _seen_resistance(self, four_wire: bool) -> float:
        """The resistance the leads see: the model's two-point resistance between the
        fixture nodes (every output at 0 V), plus the force leads for 2-wire."""
        self.sync()
        self.model.clock.now += self.reading_time
        self.readings += 1
        r = self.model.two_point_resistance(*self.nodes)
        return r if four_wire else r + 2 * self.lead_resistance

    def _source_measure(self, r: float, current: float | None, volt_limit: float,
                        voltage: float, curr_limit: float) -> tuple[float, float]:
        """(V, I) across resistance ``r``: a current source limited to ``volt_limit``, or
        (``current`` None) a voltage source limited to ``curr_limit``; gain error and
        noise on the measured quantity."""
        if current is not None:
            self.sourced.append((current, volt_limit))
            v = current * r
            self.tripped = abs(v) > volt_limit
            if self.tripped:
                return math.copysign(volt_limit, v), current
            return v * (1.0 + self.gain_error) * (1.0 + self.noise * self._rng.standard_normal()), current
        i = voltage / r
        self.tripped = abs(i) > curr_limit
        if self.tripped:
            return voltage, math.copysign(curr_limit, i)
        return voltage, i * (1.0 + self.gain_error) * (1.0 + self.noise * self._rng.standard_normal())

    def _read_2400(self) -> str | None:
        if not self.output:
            self._error(803, "Not permitted with OUTPUT off")
            return None
        r = self._seen_resistance(self.four_wire)
        auto = "RES" in self.functions and self.ohms_mode == "AUTO"
        if auto:  # auto ohms: source I from the range that holds r, measure V
            self.source = "CURR"
            test = next((i for top, i in _AUTO_OHMS if r <= top), _AUTO_OHMS[-1][1])
            v, i = self._source_measure(r, test, 21.0, 0.0, 0.0)
        elif self.source == "CURR":
            v, i = self._source_measure(r, self.level["CURR"], self.volt_protection, 0.0, 0.0)
        else:
            v, i = self._source_measure(r, None, 0.0, self.level["VOLT"], self.curr_protection)
        measured = self.functions | ({"VOLT"} if self.source == "CURR" and "RES" in self.functions else set())
        status = (1 << 2) | ((1 << 3) if self.tripped else 0) | ((1 << 10) if auto else 0)
        status |= sum(1 << b for f, b in (("VOLT", 11), ("CURR", 12), ("RES", 13)) if f in measured)
        status |= (1 << 14) if self.source == "VOLT" else (1 << 15)
        status |= ((1 << 17) if self.offset_compensated else 0) | ((1 << 22) if self.four_wire else 0)
        values = {
            "VOLT": v if ("VOLT" in measured or self.source == "VOLT") else NAN_VALUE,
            "CURR": i if ("CURR" in measured or self.source == "CURR") else NAN_VALUE,
            "RES": v / i if "RES" in self.functions and i != 0 else NAN_VALUE,
            "TIME": self.model.clock.now,
            "STAT": float(status),
        }
        return ",".join(f"{values[e]:+.6E}" for e in self.elements)

    def _read_2450(self) -> str:
        if not self.output:  # source off (relay open or at 0 V): no current, no resistance
            self.tripped = False
            return f"{9.9e37:.6E}"
        r = self._seen_resistance(self.rsense[self.function])
        if self.source == "CURR":
            v, i = self._source_measure(r, self.level["CURR"], self.vlim, 0.0, 0.0)
        else:
            v, i = self._source_measure(r, None, 0.0, self.level["VOLT"], self.ilim)
        reading = {"VOLT": v, "CURR": i, "RES": v / i if i != 0 else 9.9e37}[self.function]
        return f"{reading:.6E}"
