"""Imperfection models of the simulated bench, and the presets that group them.

Each model is small, seeded and documented; its defaults are datasheet figures
(docs/hardware.md; (assumed) where the datasheet gives none). A *bench instance* is one
draw of every per-part error (tolerances, offsets, gains, bias): it is fixed for
the life of a bench, like the parts soldered on a board, and is drawn from the
bench seed. Measurement noise is drawn afresh on every reading.

Models (all SI units):

* potentiometer edges in rheostat mode, R(D) = R_series + R_W + D R_AB / (N - 1)
  + INL(D) R_AB / (N - 1): end-to-end tolerance of R_AB (uniform, +-tolerance),
  wiper resistance (uniform, r_wiper +- r_wiper_spread), series-resistor tolerance
  (uniform), tap nonlinearity INL (a smooth per-edge profile, zero at both ends,
  peak |INL| up to inl_lsb LSB);
* continuous edges: conductance gain error g_true = g (1 + e_j), e_j uniform in
  +-tolerance;
* slow thermal drift: temperature T(t) = drift_kelvin sin(2 pi t / drift_period),
  each edge's resistive element scaled by (1 + tempco_j T(t)), tempco_j within
  +-50 % of ``tempco``;
* DAQ analog inputs, per channel: gain error (uniform +-ai_gain_error), offset
  (uniform +-ai_offset_error x range), white noise ai_noise_rms per sample,
  quantization to ai_bits over +-ai_range; each reading averages ``averaging``
  samples, so the noise falls as 1/sqrt(averaging);
* mains pickup: ``mains_pickup`` V peak at ``mains_frequency`` on every AI sample,
  each sample at its time (``ai_sample_rate`` per channel, channels ``mux_settle_time``
  apart), so a window of whole mains periods averages it out;
* multiplexer settling: channels are scanned in node order; a channel keeps a
  fraction exp(-mux_settle_time / (R_i C_in)) of the previous channel's voltage,
  with R_i the node's Thevenin resistance, approximated by 1 / (sum of the
  conductances at the node) (the source output impedance for driven nodes);
* DAQ analog outputs (sources and clamps), per channel: gain and offset errors
  and quantization like the inputs, over +-ao_range;
* source output impedance: every driven node is fed through source_impedance
  ohms from its AO channel (a hidden driver node in the physics);
* twin-network mismatch (``twin = true``): a second copy of the network, with its
  own draw of every edge error, is commanded to the same state; the free state is
  measured on one twin and the clamped state on the other;
* transistor edges (``vt_spread``, ``s_spread``, ``gate_leak_resistance``): see
  :mod:`clln.simulator.transistor_backend`;
* deterministic per-edge learning bias b_j (V^2, docs/science.md "Learning bias"): normal with rms
  ``learning_bias`` plus a common part ``learning_bias_mean`` (any sign), the per-edge
  offset of the bench's edge-signal circuits (comparator or ADC offsets); it is added
  to every (dV_free)^2 - (dV_clamped)^2 the controller forms (with the opposite sign
  when a twin bench swaps its twins' roles, see ``SimulatedBackend.measure_twin``).
  The pattern is fixed by the bench seed: changing ``learning_bias`` rescales the same
  pattern;
* asymmetric actuators (continuous edges): an up-command of dg moves edge j's true
  conductance by dg (1 + a_j), a down-command by dg (1 - a_j), a_j uniform in
  +-``actuator_asymmetry`` (per twin). The controller still believes the commanded
  values; commands that fluctuate in sign rectify into a drift a_j <|dg|>, i.e. an
  effective bias b_j ~ (eta / alpha) a_j <|dg|>.

Sources of learning bias, then: ``learning_bias`` (signal-circuit offsets, enters the
signal directly), ``twin`` with part tolerances (twin mismatch: at zero nudge the
update is sum (dV_j^A)^2 - (dV_j^B)^2 != 0) and ``actuator_asymmetry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from clln.controller.errors import ProtocolError
from clln.controller.ranges import Range
from clln.simulator.rheostat import rheostat_element, rheostat_table

_fraction = Annotated[float, Range(0.0, 0.9, "", "a relative error; 1 or more makes a part vanish")]


class Imperfections(BaseModel):
    """Every imperfection parameter; zero disables a model. Units: SI."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # edges
    tolerance: _fraction = 0.0
    r_wiper_spread: Annotated[float, Range(0.0, 1e9, "ohm", "up to 1 GOhm")] = 0.0
    inl_lsb: Annotated[float, Range(0.0, 1e6, "LSB", "at most a million steps")] = 0.0
    r_series_tolerance: _fraction = 0.0
    tempco: Annotated[float, Range(0.0, 0.1, "1/K", "10 %/K is beyond any resistor")] = 0.0
    drift_kelvin: Annotated[float, Range(0.0, 1e3, "K", "a lab drifts by kelvins, not more than 1000")] = 0.0
    drift_period: Annotated[float, Range(1e-6, 1e9, "s", "a microsecond to 30 years")] = 3600.0
    # DAQ inputs
    ai_range: Annotated[float, Range(1e-6, 1e3, "V", "no DAQ reads beyond 1 kV")] = 10.0
    ai_bits: Annotated[int, Field(ge=0, le=32, strict=True)] = 0
    ai_gain_error: _fraction = 0.0
    ai_offset_error: _fraction = 0.0
    ai_noise_rms: Annotated[float, Range(0.0, 1e3, "V", "noise beyond 1 kV rms swamps any reading")] = 0.0
    averaging: Annotated[int, Range(1, 10**6, "", "at most a million samples")] = 1
    mux_settle_time: Annotated[float, Range(0.0, 1e3, "s", "up to 1000 s")] = 0.0
    ai_capacitance: Annotated[float, Range(0.0, 1.0, "F", "up to 1 F")] = 0.0
    ai_sample_rate: Annotated[float, Range(1e-3, 1e8, "S/s", "per channel, up to 100 MS/s")] = 10_000.0
    mains_pickup: Annotated[float, Range(0.0, 1e3, "V", "peak mains pickup at every AI input")] = 0.0
    mains_frequency: Annotated[float, Range(1.0, 1e3, "Hz", "a mains frequency")] = 50.0
    # DAQ outputs
    ao_range: Annotated[float, Range(1e-6, 1e3, "V", "no DAQ drives beyond 1 kV")] = 10.0
    ao_bits: Annotated[int, Field(ge=0, le=32, strict=True)] = 0
    ao_gain_error: _fraction = 0.0
    ao_offset_error: _fraction = 0.0
    source_impedance: Annotated[float, Range(0.0, 1e9, "ohm", "up to 1 GOhm")] = 0.0
    # twin benches and learning bias
    twin: Annotated[bool, Field(strict=True)] = False
    learning_bias: Annotated[float, Range(0.0, 1e6, "V^2", "squared volts within +-1 kV")] = 0.0
    learning_bias_mean: Annotated[float, Range(-1e6, 1e6, "V^2", "squared volts within +-1 kV")] = 0.0
    actuator_asymmetry: Annotated[float, Field(ge=0, lt=1, strict=True)] = 0.0
    # transistor edges: per-device spread (V rms of V_T, relative rms of S) and the gate
    # capacitors' leak resistance (ohm, 0: no leak)
    vt_spread: Annotated[float, Range(0.0, 10.0, "V", "threshold spread within 10 V")] = 0.0
    s_spread: _fraction = 0.0
    gate_leak_resistance: Annotated[float, Range(0.0, 1e18, "ohm", "up to 1 EOhm")] = 0.0
    # time per measured sample (s), for drift and timestamps
    settle_time: Annotated[float, Range(1e-12, 1e3, "s", "up to 1000 s per sample")] = 1e-3

    @property
    def exact_readout(self) -> bool:
        """True when measured voltages are the exact physics (the factored fast path)."""
        return not (self.ai_bits or self.ai_gain_error or self.ai_offset_error
                    or self.ai_noise_rms or self.mains_pickup
                    or (self.mux_settle_time and self.ai_capacitance))

    @property
    def exact_drive(self) -> bool:
        return not (self.ao_bits or self.ao_gain_error or self.ao_offset_error)


_POT_BENCH: dict[str, Any] = {
    "tolerance": 0.20, "r_wiper_spread": 25.0, "inl_lsb": 1.0, "r_series_tolerance": 0.01,
    "tempco": 100e-6, "drift_kelvin": 0.5, "drift_period": 3600.0,
    "ai_range": 10.0, "ai_bits": 16, "ai_gain_error": 75e-6, "ai_offset_error": 20e-6,
    "ai_noise_rms": 244e-6, "averaging": 16, "mux_settle_time": 10e-6,
    "ai_capacitance": 100e-12, "ao_bits": 16, "ao_gain_error": 75e-6,
    "ao_offset_error": 20e-6, "source_impedance": 1.0,
}
# Transistor benches: device spread as a chip fingerprint (10 mV in V_T, 0.5 % in S),
# gate capacitors leaking through 10 GOhm (tau = 22,000 s on 2.2 uF), a 16-bit DAQ.
_TRANSISTOR_BENCH: dict[str, Any] = {
    "vt_spread": 0.010, "s_spread": 0.005, "gate_leak_resistance": 1e10,
    "ai_range": 10.0, "ai_bits": 16, "ai_gain_error": 75e-6, "ai_offset_error": 20e-6,
    "ai_noise_rms": 244e-6, "averaging": 16, "ao_bits": 16, "ao_gain_error": 75e-6,
    "ao_offset_error": 20e-6,
}
PRESETS: dict[str, dict[str, Any]] = {
    "ideal": {},
    "pot-bench": _POT_BENCH,
    "twin-bench": {**_POT_BENCH, "twin": True},
    "transistor-16": _TRANSISTOR_BENCH,
    "transistor-pair": _TRANSISTOR_BENCH,
}
#: presets that describe transistor benches (gate-voltage edges)
TRANSISTOR_PRESETS = ("transistor-16", "transistor-pair")


def make_imperfections(preset: str, overrides: dict[str, Any] | None = None) -> Imperfections:
    """The parameters of ``preset`` with ``overrides`` applied (validated)."""
    if preset not in PRESETS:
        raise ProtocolError(f"unknown simulator preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return Imperfections.model_validate({**PRESETS[preset], **(overrides or {})})


# -- single models -----------------------------------------------------------------


def uniform_spread(rng: np.random.Generator, center: float, half_width: float, size: int) -> np.ndarray:
    """Uniform draws in [center - half_width, center + half_width]."""
    return center + half_width * rng.uniform(-1.0, 1.0, size)


def inl_profiles(rng: np.random.Generator, m: int, taps: int, peak_lsb: float) -> np.ndarray:
    """(m, taps) integral nonlinearity in LSB: smooth, zero at both ends, peak |INL|
    uniform in [peak/2, peak] per edge."""
    if peak_lsb == 0 or taps < 3:
        return np.zeros((m, taps))
    d = np.arange(taps) / (taps - 1)
    harmonics = np.sin(np.pi * np.outer(np.arange(1, 4), d))  # (3, taps)
    weights = rng.normal(size=(m, 3)) / np.arange(1, 4)
    profile = weights @ harmonics
    peak = np.abs(profile).max(axis=1, keepdims=True)
    return profile / np.where(peak > 0, peak, 1.0) * rng.uniform(0.5, 1.0, (m, 1)) * peak_lsb


def quantize(v: np.ndarray, bits: int, full_range: float) -> np.ndarray:
    """Round to the nearest code of a ``bits``-bit converter over +-full_range (V), clipped."""
    if bits == 0:
        return v
    lsb = 2.0 * full_range / 2**bits
    codes = np.clip(np.round(v / lsb), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return codes * lsb


def adc_read(
    v: np.ndarray, *, gain: np.ndarray, offset: np.ndarray, noise_rms: float, bits: int,
    full_range: float, averaging: int, rng: np.random.Generator, pickup: np.ndarray | None = None,
) -> np.ndarray:
    """Readings (B, c) of true voltages v (B, c): each of ``averaging`` samples is
    v (1 + gain) + offset + noise (+ ``pickup`` (averaging, B, c), V, when given),
    quantized; the reading is their mean."""
    ideal = v * (1.0 + gain) + offset
    if pickup is None:
        if noise_rms == 0 and bits == 0:
            return ideal
        if noise_rms == 0:
            return quantize(ideal, bits, full_range)
    total = np.zeros_like(ideal)
    for k in range(averaging):
        sample = ideal if pickup is None else ideal + pickup[k]
        if noise_rms:
            sample = sample + noise_rms * rng.standard_normal(ideal.shape)
        total += quantize(sample, bits, full_range)
    return total / averaging


def mains_pickup(stamps: np.ndarray, channels: int, *, amplitude: float, frequency: float,
                 sample_rate: float, samples: int, convert_interval: float) -> np.ndarray:
    """(samples, B, channels) V of mains pickup A sin(2 pi f t) on every AI sample: the
    window of reading b ends at ``stamps[b]`` (one sample every 1 / sample_rate s), and
    within a scan channel c is converted c ``convert_interval`` s after the first."""
    k = np.arange(samples)[:, None, None]
    t = (stamps[None, :, None] - (samples - k) / sample_rate
         + np.arange(channels)[None, None, :] * convert_interval)
    return amplitude * np.sin(2.0 * np.pi * frequency * t)


def mux_settle(v: np.ndarray, node_resistance: np.ndarray, settle_time: float,
               capacitance: float) -> np.ndarray:
    """Channels scanned in order: channel i keeps exp(-t / (R_i C)) of channel i-1's
    voltage (the first channel, of the last one of the previous scan)."""
    if settle_time == 0 or capacitance == 0:
        return v
    with np.errstate(over="ignore", divide="ignore"):
        kept = np.exp(-settle_time / (node_resistance * capacitance))
    previous = np.roll(v, 1, axis=-1)
    return v + kept * (previous - v)


def temperature(t: np.ndarray | float, amplitude: float, period: float) -> np.ndarray | float:
    """Temperature excursion (K) of the slow thermal drift at time t (s)."""
    return amplitude * np.sin(2.0 * np.pi * np.asarray(t) / period)


# -- one bench instance -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EdgeErrors:
    """One network copy's drawn edge errors.

    Attributes
    ----------
    gain : (m,) relative conductance error of continuous edges.
    table : (m, taps) true conductance per tap of stepped edges at the reference
        temperature, or None for continuous edges.
    element : (m, taps) resistive-element part of the resistance (ohm), for drift.
    fixed : (m, 1) series + wiper resistance (ohm).
    tempco : (m,) 1/K.
    """

    gain: np.ndarray
    table: np.ndarray | None
    element: np.ndarray | None
    fixed: np.ndarray | None
    tempco: np.ndarray


@dataclass(frozen=True, eq=False)
class BenchInstance:
    """Every per-part error of one simulated bench (fixed for its life)."""

    params: Imperfections
    twins: tuple[EdgeErrors, ...]
    ai_gain: np.ndarray
    ai_offset: np.ndarray
    ao_gain: np.ndarray
    ao_offset: np.ndarray
    bias: np.ndarray
    asymmetry: np.ndarray | None = None

    @classmethod
    def draw(
        cls, params: Imperfections, *, n_nodes: int, n_edges: int, n_ao: int,
        pot: tuple[int, float, float, float] | None, rng: np.random.Generator,
    ) -> BenchInstance:
        """Draw a bench.

        Parameters
        ----------
        pot : (taps, r_ab, r_wiper, r_series) nominal potentiometer values for stepped
            edges, None for continuous edges.
        """
        m = n_edges
        twins = []
        for _ in range(2 if params.twin else 1):
            gain = uniform_spread(rng, 0.0, params.tolerance, m) if pot is None else np.zeros(m)
            tempco = params.tempco * rng.uniform(0.5, 1.5, m)
            if pot is None:
                twins.append(EdgeErrors(gain, None, None, None, tempco))
                continue
            taps, r_ab, r_wiper, r_series = pot
            r_ab_j = r_ab * (1.0 + uniform_spread(rng, 0.0, params.tolerance, m))
            r_w_j = np.maximum(uniform_spread(rng, r_wiper, params.r_wiper_spread, m), 0.0)
            r_s_j = r_series * (1.0 + uniform_spread(rng, 0.0, params.r_series_tolerance, m))
            inl = inl_profiles(rng, m, taps, params.inl_lsb)
            table = rheostat_table(taps, r_ab_j, r_w_j, r_s_j, inl_lsb=inl)
            element = rheostat_element(np.arange(taps) + inl, taps, r_ab_j[:, None])
            twins.append(EdgeErrors(gain, table, element, (r_s_j + r_w_j)[:, None], tempco))
        return cls(
            params=params,
            twins=tuple(twins),
            ai_gain=uniform_spread(rng, 0.0, params.ai_gain_error, n_nodes),
            ai_offset=uniform_spread(rng, 0.0, params.ai_offset_error * params.ai_range, n_nodes),
            ao_gain=uniform_spread(rng, 0.0, params.ao_gain_error, n_ao),
            ao_offset=uniform_spread(rng, 0.0, params.ao_offset_error * params.ao_range, n_ao),
            bias=params.learning_bias * rng.standard_normal(m) + params.learning_bias_mean,
            asymmetry=(uniform_spread(rng, 0.0, params.actuator_asymmetry, len(twins) * m)
                       .reshape(len(twins), m) if params.actuator_asymmetry else None),
        )

    @property
    def has_bias(self) -> bool:
        """Whether the signal circuits add a learning bias."""
        return bool(self.params.learning_bias or self.params.learning_bias_mean)

    @property
    def drifts(self) -> bool:
        return bool(self.params.tempco and self.params.drift_kelvin)

    def true_conductances(
        self, twin: int, *, conductances: np.ndarray | None = None, taps: np.ndarray | None = None,
        time: float = 0.0,
    ) -> np.ndarray:
        """(m,) conductances (S) the physics of twin ``twin`` sees for the commanded
        state (continuous conductances or integer taps) at ``time`` (s)."""
        e = self.twins[twin]
        dt = float(temperature(time, self.params.drift_kelvin, self.params.drift_period))
        scale = 1.0 + e.tempco * dt if self.drifts else None
        if taps is None:
            assert conductances is not None
            g = conductances * (1.0 + e.gain)
            return g / scale if scale is not None else g
        assert e.table is not None and e.element is not None and e.fixed is not None
        rows = np.arange(taps.size)
        if scale is None:
            return e.table[rows, taps]
        return 1.0 / (e.fixed[:, 0] + e.element[rows, taps] * scale)

    def drive(self, volts: np.ndarray, channels: slice) -> np.ndarray:
        """Voltages (B, c) the AO channels ``channels`` actually put out for ``volts``."""
        p = self.params
        out = volts * (1.0 + self.ao_gain[channels]) + self.ao_offset[channels]
        return quantize(out, p.ao_bits, p.ao_range)

    def read(self, v: np.ndarray, node_resistance: np.ndarray, rng: np.random.Generator,
             stamps: np.ndarray | None = None) -> np.ndarray:
        """Readings (B, n) of the true node voltages v (B, n) through the AI channels;
        ``stamps`` (B,) s are the ends of the readings' averaging windows (for mains pickup)."""
        p = self.params
        settled = mux_settle(v, node_resistance, p.mux_settle_time, p.ai_capacitance)
        pickup = None
        if p.mains_pickup and stamps is not None:
            pickup = mains_pickup(np.asarray(stamps, dtype=float), v.shape[-1], amplitude=p.mains_pickup,
                                  frequency=p.mains_frequency, sample_rate=p.ai_sample_rate,
                                  samples=p.averaging, convert_interval=p.mux_settle_time)
        return adc_read(settled, gain=self.ai_gain, offset=self.ai_offset, noise_rms=p.ai_noise_rms,
                        bits=p.ai_bits, full_range=p.ai_range, averaging=p.averaging, rng=rng,
                        pickup=pickup)

    def describe(self) -> dict[str, Any]:
        return self.params.model_dump()
