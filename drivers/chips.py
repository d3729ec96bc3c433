"""Datasheet figures of digital potentiometers in rheostat mode (HARDWARE.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chip:
    """A potentiometer part: taps, allowed end-to-end resistances, typical wiper
    resistance, tolerance of R_AB, and the maximum wiper current (A)."""

    name: str
    taps: int
    r_ab_options: tuple[float, ...]
    r_wiper: float
    tolerance: float
    max_current: float


CHIPS = {
    c.name: c
    for c in (
        Chip("MCP4131", 129, (5e3, 10e3, 50e3, 100e3), 75.0, 0.20, 2.5e-3),
        Chip("MCP41HV51", 257, (5e3, 10e3, 50e3, 100e3), 75.0, 0.20, 6.5e-3),
        Chip("AD5293", 1024, (20e3, 50e3, 100e3), 60.0, 0.01, 3e-3),
        Chip("AD5206", 256, (10e3, 50e3, 100e3), 50.0, 0.30, 5e-3),
        Chip("X9C103", 100, (10e3,), 40.0, 0.20, 4.4e-3),
    )
}
