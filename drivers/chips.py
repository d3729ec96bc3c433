"""Datasheet figures of digital potentiometers in rheostat mode (docs/hardware.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chip:
    """A potentiometer part: taps, allowed end-to-end resistances, typical wiper
    resistance, tolerance of R_AB, the maximum wiper current (A), and its supply.

    ``supply`` is the usual (VSS, VDD) in volts, which a bench file may change within
    ``max_supply_span`` (VDD - VSS). The resistor terminals (A, W, B) must stay within
    VSS - ``terminal_margin`` ... VDD + ``terminal_margin`` (the datasheets' absolute
    maximum ratings; beyond it the terminals' protection diodes conduct).
    """

    name: str
    taps: int
    r_ab_options: tuple[float, ...]
    r_wiper: float
    tolerance: float
    max_current: float
    supply: tuple[float, float] = (0.0, 5.0)
    max_supply_span: float = 5.5
    terminal_margin: float = 0.3

    def terminal_window(self, vss: float | None = None, vdd: float | None = None) -> tuple[float, float]:
        """(low, high) volts every resistor terminal must stay within."""
        lo = self.supply[0] if vss is None else vss
        hi = self.supply[1] if vdd is None else vdd
        return lo - self.terminal_margin, hi + self.terminal_margin


CHIPS = {
    c.name: c
    for c in (
        # DS22060: VDD 1.8-5.5 V single supply; terminals -0.3 V ... VDD + 0.3 V.
        Chip("MCP4131", 129, (5e3, 10e3, 50e3, 100e3), 75.0, 0.20, 2.5e-3),
        # DS20005207: V+ - V- up to 36 V; terminals V- - 0.3 V ... V+ + 0.3 V.
        Chip("MCP41HV51", 257, (5e3, 10e3, 50e3, 100e3), 75.0, 0.20, 6.5e-3,
             supply=(0.0, 36.0), max_supply_span=36.0),
        # AD5293: dual +-10.5 ... +-16.5 V (or single 21-33 V); terminals VSS - 0.3 ... VDD + 0.3.
        Chip("AD5293", 1024, (20e3, 50e3, 100e3), 60.0, 0.01, 3e-3,
             supply=(-15.0, 15.0), max_supply_span=33.0),
        # AD5206: single 2.7-5.5 V or dual +-2.7 V; terminals VSS ... VDD.
        Chip("AD5206", 256, (10e3, 50e3, 100e3), 50.0, 0.30, 5e-3),
        # X9C103: VH/VL operate within -5 ... +5 V with VCC = 5 V (no margin beyond it).
        Chip("X9C103", 100, (10e3,), 40.0, 0.20, 4.4e-3,
             supply=(-5.0, 5.0), max_supply_span=10.0, terminal_margin=0.0),
    )
}
