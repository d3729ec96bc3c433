"""The rheostat model of a digital potentiometer in series with a fixed resistor.

At tap D of ``taps`` (0 .. taps - 1), the resistance between the wiper and one end is

    R(D) = r_series + r_wiper + (D + INL(D)) r_ab / (taps - 1)

ohm, with the element's integral nonlinearity INL in LSB (zero on an ideal part): the
datasheet model (docs/hardware.md, "Digital potentiometers (rheostat mode)"). Every tap
table clln builds from parts comes from here: the nominal tables a protocol or a bench
file implies, the true tables of a simulated bench instance, the in-place pot bench.
"""

from __future__ import annotations

import numpy as np


def _per_edge(value: float | np.ndarray) -> float | np.ndarray:
    """A per-edge array (m,) as a column (m, 1) against the taps; a scalar as it is."""
    return np.asarray(value)[:, None] if np.ndim(value) else value


def rheostat_element(d: np.ndarray, taps: int, r_ab: float | np.ndarray) -> np.ndarray:
    """d r_ab / (taps - 1), ohm: the resistive element's part of R at tap position(s) ``d``
    (D + INL(D), in LSB); ``r_ab`` broadcasts against ``d``."""
    return d * r_ab / (taps - 1)


def rheostat_resistance(d: np.ndarray, taps: int, r_ab: float | np.ndarray,
                        r_wiper: float | np.ndarray, r_series: float | np.ndarray) -> np.ndarray:
    """R at tap position(s) ``d`` (D + INL(D), in LSB), ohm; the parts broadcast against ``d``."""
    return r_series + r_wiper + rheostat_element(d, taps, r_ab)


def rheostat_table(taps: int, r_ab: float | np.ndarray, r_wiper: float | np.ndarray,
                   r_series: float | np.ndarray, *, edges: int | None = None,
                   inl_lsb: np.ndarray | None = None) -> np.ndarray:
    """1 / R(D), siemens, at every tap: (m, taps) for per-edge parts (m,) or an (m, taps)
    ``inl_lsb``; (taps,) for scalar parts, or (edges, taps) with ``edges`` given."""
    d = np.arange(taps) if inl_lsb is None else np.arange(taps) + inl_lsb
    table = 1.0 / rheostat_resistance(d, taps, _per_edge(r_ab), _per_edge(r_wiper), _per_edge(r_series))
    return np.tile(table, (edges, 1)) if edges is not None else table
