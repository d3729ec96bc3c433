"""Nonlinear edge devices: current through an edge and its analytic derivatives.

An edge joins nodes a and b; the current I flows from a to b through the device
(amperes, positive when it leaves a). A transistor edge has a third terminal, its gate,
held at V_G by the gate capacitor; V_G is the edge's adjustable state. Every model
returns :class:`EdgeCurrents`: I and dI/dV_a, dI/dV_b, dI/dV_G, all arrays of the
broadcast shape of its arguments (e.g. (B, m) for a batch of B samples on m edges).

All models here are *passive and monotone*: dI/dV_a >= 0 >= dI/dV_b. Kirchhoff's law
on a network of them is then a monotone system with a unique solution, and its
Jacobian is a column-diagonally-dominant Z-matrix: LU without pivoting is stable.

Models
------
* :class:`SeedTransistor` (``transistor``): the rig's NMOS model from seed 002's
  analysis code (``Ohmic``, ``Sat``, ``Sub`` of ``calc_current3``), written as
  forward minus reverse (see ``docs/transistor.md``).
* :class:`Level1` (``level1``): Shichman-Hodges with channel-length modulation, as
  SPICE's level-1 MOSFET computes it (gamma = 0, drain and source swapped by the sign
  of V_ds).
* :class:`Diode` (``diode``): Shockley diode, an edge without a gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from clln.controller.errors import ProtocolError

LN10 = float(np.log(10.0))


@dataclass(frozen=True, eq=False)
class EdgeCurrents:
    """Current from a to b (A) and its partial derivatives (S)."""

    current: np.ndarray
    d_va: np.ndarray
    d_vb: np.ndarray
    d_vg: np.ndarray


class EdgeModel(Protocol):
    """A two-terminal (plus gate) edge device."""

    name: ClassVar[str]

    def currents(self, va: np.ndarray, vb: np.ndarray, vg: np.ndarray) -> EdgeCurrents:
        """Current a -> b and derivatives for node voltages va, vb and gate voltages vg (V)."""
        ...

    def with_spread(self, rng: np.random.Generator, m: int, vt_sigma: float,
                    gain_sigma: float) -> EdgeModel:
        """The same model with per-device threshold and gain drawn once (a chip
        fingerprint): V_T + N(0, vt_sigma) volts, gain x (1 + N(0, gain_sigma))."""
        ...

    def describe(self) -> dict[str, object]:
        """Parameters for the run record (JSON)."""
        ...


def _positive(name: str, value: np.ndarray | float, key: str) -> None:
    if not np.all(np.isfinite(value)) or not np.all(np.asarray(value) > 0):
        raise ProtocolError(f"{key}: {name} must be > 0, got {value!r}")


def _nonnegative(name: str, value: float, key: str) -> None:
    if not np.isfinite(value) or value < 0:
        raise ProtocolError(f"{key}: {name} must be >= 0, got {value!r}")


def _describe_array(value: np.ndarray | float) -> object:
    arr = np.asarray(value)
    return float(arr) if arr.ndim == 0 else {"mean": float(arr.mean()), "std": float(arr.std())}


@dataclass(frozen=True, eq=False)
class SeedTransistor:
    """The rig's NMOS edge (seed 002, ``big network/Experiment2.m``).

    With V* = V_G - V_T, the seed's regions are, for lo = min(V_a, V_b) and
    hi = max(V_a, V_b):

    * ohmic (V* > hi): S (V* - (V_a + V_b) / 2) |V_a - V_b|;
    * saturation (lo + join < V* <= hi): S / 2 (V* - lo)^2;
    * subthreshold: S / 2 join^2 10^((V* - lo - join) / decade).

    The ohmic current equals F(V* - lo) - F(V* - hi) with the channel function
    F(x) = S x^2 / 2, and saturation is F(V* - lo) alone. Here the same channel function,
    extended below ``join`` by the seed's subthreshold decade,

        F(x) = S x^2 / 2                              for x > join,
        F(x) = S join^2 / 2 * 10^((x - join) / decade)  for x <= join,

    gives I = F(V* - V_b) - F(V* - V_a) for every region. It is the seed's model where
    the seed's is continuous (identical in the ohmic region with V* - hi > join, and in
    saturation up to the reverse subthreshold term F(V* - hi) <= 0.11 S join^2 / 2),
    and it is continuous where the seed's jumps (at V_a = V_b in subthreshold, and where
    the ohmic region meets subthreshold), so Kirchhoff's law has a unique solution.

    Attributes
    ----------
    s : gain S, A/V^2 (scalar or (m,) per device).
    v_t : threshold V_T, volts (scalar or (m,)).
    join : V* - lo where saturation meets subthreshold, volts (seed: 0.096).
    decade : subthreshold slope, volts per decade (seed: 0.1).
    g_off : conductance in parallel with every edge, S (0: none).
    """

    s: np.ndarray | float = 8.5e-4
    v_t: np.ndarray | float = 0.62
    join: float = 0.096
    decade: float = 0.1
    g_off: float = 0.0
    name: ClassVar[str] = "transistor"

    def __post_init__(self) -> None:
        _positive("S", self.s, "edges.s")
        _positive("join", self.join, "edges.join")
        _positive("decade", self.decade, "edges.decade")
        _nonnegative("g_off", self.g_off, "edges.g_off")
        if not np.all(np.isfinite(self.v_t)):
            raise ProtocolError(f"edges.v_t: must be finite, got {self.v_t!r}")

    def channel(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """F(x) (A) and F'(x) (S) of the channel function, x = V* - V_terminal (V).

        The power of ten is evaluated only where x is subthreshold (in a trained network
        a few values in 10^5; measured 3x faster at 2e5 values), unless most values are."""
        s = np.asarray(self.s)
        below = x <= self.join
        knee = 0.5 * s * self.join**2
        n_below = np.count_nonzero(below)
        if 4 * n_below > x.size:
            above = x > self.join
            sub = knee * np.power(10.0, np.minimum(x - self.join, 0.0) / self.decade)
            f = np.where(above, 0.5 * s * x * x, sub)
            df = np.where(above, s * x, sub * (LN10 / self.decade))
            return f, df
        f = 0.5 * s * x
        f *= x
        df = s * x
        if n_below:  # the same values as the line above, on the subthreshold part
            where = np.nonzero(below)
            sub = np.minimum(x[where] - self.join, 0.0)
            sub /= self.decade
            np.power(10.0, sub, out=sub)
            sub *= knee if knee.ndim == 0 else np.broadcast_to(knee, x.shape)[where]
            f[where] = sub
            sub *= LN10 / self.decade
            df[where] = sub
        return f, df

    def currents(self, va: np.ndarray, vb: np.ndarray, vg: np.ndarray) -> EdgeCurrents:
        v_star = vg - self.v_t
        f_b, df_b = self.channel(v_star - vb)
        f_a, df_a = self.channel(v_star - va)
        if not self.g_off:  # adding 0 S changes no value
            return EdgeCurrents(f_b - f_a, df_a, -df_b, df_b - df_a)
        current = f_b - f_a + self.g_off * (va - vb)
        return EdgeCurrents(current, df_a + self.g_off, -df_b - self.g_off, df_b - df_a)

    def with_spread(self, rng: np.random.Generator, m: int, vt_sigma: float,
                    gain_sigma: float) -> SeedTransistor:
        v_t = self.v_t + vt_sigma * rng.standard_normal(m)
        s = self.s * (1.0 + gain_sigma * rng.standard_normal(m))
        return SeedTransistor(s=s, v_t=v_t, join=self.join, decade=self.decade, g_off=self.g_off)

    def describe(self) -> dict[str, object]:
        return {"model": self.name, "s": _describe_array(self.s), "v_t": _describe_array(self.v_t),
                "join": self.join, "decade": self.decade, "g_off": self.g_off}


@dataclass(frozen=True, eq=False)
class Level1:
    """SPICE level-1 (Shichman-Hodges) NMOS with body effect off (GAMMA = 0).

    With the drain the higher of the two channel terminals (V_ds >= 0; the terminals
    swap otherwise), V_gst = V_gs - V_TO and beta = KP W / L:

    * cutoff (V_gst <= 0): I_ds = 0;
    * saturation (V_gst <= V_ds): I_ds = beta (1 + lambda V_ds) V_gst^2 / 2;
    * linear: I_ds = beta (1 + lambda V_ds) V_ds (V_gst - V_ds / 2).

    Attributes
    ----------
    beta : KP W / L, A/V^2 (scalar or (m,)).
    v_to : zero-bias threshold, volts (scalar or (m,)).
    lam : channel-length modulation lambda, 1/V.
    g_off : conductance in parallel with every edge, S; keeps a network of cut-off
        devices solvable (like SPICE's GMIN).
    """

    beta: np.ndarray | float = 8.5e-4
    v_to: np.ndarray | float = 0.62
    lam: float = 0.02
    g_off: float = 1e-12
    name: ClassVar[str] = "level1"

    def __post_init__(self) -> None:
        _positive("beta", self.beta, "edges.s")
        _nonnegative("lambda", self.lam, "edges.lam")
        _nonnegative("g_off", self.g_off, "edges.g_off")
        if not np.all(np.isfinite(self.v_to)):
            raise ProtocolError(f"edges.v_t: must be finite, got {self.v_to!r}")

    def drain_current(self, vgs: np.ndarray, vds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """I_ds (A), g_m = dI/dV_gs and g_ds = dI/dV_ds (S), for V_ds >= 0."""
        beta = np.asarray(self.beta)
        vgst = vgs - self.v_to
        on = vgst > 0
        sat = vgst <= vds
        clm = 1.0 + self.lam * vds
        i_sat = 0.5 * beta * vgst * vgst
        i_lin = beta * vds * (vgst - 0.5 * vds)
        ids = np.where(sat, i_sat, i_lin)
        gm = np.where(sat, beta * vgst, beta * vds) * clm
        gds = np.where(sat, 0.0, beta * (vgst - vds)) * clm + self.lam * ids
        zero = np.zeros_like(ids)
        return (np.where(on, ids * clm, zero), np.where(on, gm, zero), np.where(on, gds, zero))

    def currents(self, va: np.ndarray, vb: np.ndarray, vg: np.ndarray) -> EdgeCurrents:
        forward = va >= vb
        drain_low = np.where(forward, vb, va)  # the source terminal
        vds = np.abs(va - vb)
        ids, gm, gds = self.drain_current(vg - drain_low, vds)
        sign = np.where(forward, 1.0, -1.0)
        # forward: I = ids(vg - vb, va - vb); reverse: I = -ids(vg - va, vb - va)
        d_va = np.where(forward, gds, gm + gds) + self.g_off
        d_vb = np.where(forward, -gm - gds, -gds) - self.g_off
        return EdgeCurrents(sign * ids + self.g_off * (va - vb), d_va, d_vb, sign * gm)

    def with_spread(self, rng: np.random.Generator, m: int, vt_sigma: float,
                    gain_sigma: float) -> Level1:
        v_to = self.v_to + vt_sigma * rng.standard_normal(m)
        beta = self.beta * (1.0 + gain_sigma * rng.standard_normal(m))
        return Level1(beta=beta, v_to=v_to, lam=self.lam, g_off=self.g_off)

    def describe(self) -> dict[str, object]:
        return {"model": self.name, "beta": _describe_array(self.beta),
                "v_to": _describe_array(self.v_to), "lambda": self.lam, "g_off": self.g_off}


@dataclass(frozen=True, eq=False)
class Diode:
    """Shockley diode from a (anode) to b (cathode): I = I_s (exp((V_a - V_b) / (n V_th)) - 1),
    the exponent capped at ``v_max`` volts (linear beyond, as circuit simulators limit
    it); no gate (dI/dV_G = 0).

    Attributes
    ----------
    i_s : saturation current, A.
    n : emission coefficient.
    v_th : thermal voltage, V.
    v_max : forward voltage above which the exponential continues linearly, V.
    g_off : parallel conductance, S.
    """

    i_s: float = 1e-14
    n: float = 1.0
    v_th: float = 0.025852
    v_max: float = 0.9
    g_off: float = 1e-12
    name: ClassVar[str] = "diode"

    def __post_init__(self) -> None:
        for key, value in (("i_s", self.i_s), ("n", self.n), ("v_th", self.v_th)):
            _positive(key, value, f"edges.{key}")
        _nonnegative("g_off", self.g_off, "edges.g_off")

    def currents(self, va: np.ndarray, vb: np.ndarray, vg: np.ndarray) -> EdgeCurrents:
        nvt = self.n * self.v_th
        v = va - vb
        capped = np.minimum(v, self.v_max)
        e = np.exp(capped / nvt)
        slope = self.i_s * e / nvt
        current = self.i_s * (e - 1.0) + slope * (v - capped) + self.g_off * v
        g = slope + self.g_off
        return EdgeCurrents(current, g, -g, np.zeros_like(current))

    def with_spread(self, rng: np.random.Generator, m: int, vt_sigma: float,
                    gain_sigma: float) -> Diode:
        return self

    def describe(self) -> dict[str, object]:
        return {"model": self.name, "i_s": self.i_s, "n": self.n, "v_th": self.v_th,
                "g_off": self.g_off}


MODELS: dict[str, type] = {"transistor": SeedTransistor, "level1": Level1, "diode": Diode}
