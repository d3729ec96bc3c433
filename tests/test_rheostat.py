"""The rheostat model against the datasheet's description of the part.

The X9C103 (Intersil/Renesas datasheet FN8222) is a string of 99 equal resistive
elements between VH and VL with 100 tap points and a 40 ohm wiper: at tap D the
wiper-to-VL resistance is D elements of R_TOTAL / 99 plus the wiper. In series with a
fixed resistor, the edge is that plus the resistor."""

from __future__ import annotations

import numpy as np

from clln.simulator.rheostat import rheostat_resistance, rheostat_table

R_TOTAL, R_WIPER, TAPS, R_SERIES = 10_000.0, 40.0, 100, 1_000.0


def test_taps_are_equal_elements_above_the_wiper_and_series_resistor() -> None:
    element = R_TOTAL / 99  # the datasheet's element count, not the model's taps - 1
    expected = [R_SERIES + R_WIPER + d * element for d in range(TAPS)]
    assert np.allclose(rheostat_resistance(np.arange(TAPS), TAPS, R_TOTAL, R_WIPER, R_SERIES),
                       expected, rtol=1e-14, atol=0)
    table = rheostat_table(TAPS, R_TOTAL, R_WIPER, R_SERIES, edges=3)
    assert table.shape == (3, TAPS)
    assert np.allclose(1.0 / table[2], expected, rtol=1e-14, atol=0)
    assert 1.0 / table[0, -1] == R_SERIES + R_WIPER + R_TOTAL  # the top tap: the whole string


def test_per_edge_parts_and_nonlinearity() -> None:
    r_total = np.array([9_000.0, 11_000.0])
    r_wiper = np.array([30.0, 50.0])
    inl = np.zeros((2, TAPS))
    inl[1, 50] = 0.5  # half an element more at one tap of the second edge
    table = rheostat_table(TAPS, r_total, r_wiper, R_SERIES, inl_lsb=inl)
    assert table.shape == (2, TAPS)
    assert np.isclose(1.0 / table[0, 10], R_SERIES + 30.0 + 10 * 9_000.0 / 99, rtol=1e-14)
    assert np.isclose(1.0 / table[1, 50], R_SERIES + 50.0 + 50.5 * 11_000.0 / 99, rtol=1e-14)
