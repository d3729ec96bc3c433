"""Seeded statistical tests of each imperfection model, and of the bench they make."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
from conftest import dense_solution, random_network

from clln.controller import ContinuousEdges, SteppedEdges, contrastive_signal
from clln.simulator import Imperfections, SimulatedBackend, make_imperfections
from clln.simulator import imperfections as imp
from clln.simulator.rheostat import rheostat_table

RNG_SEED = 1234


def test_noise_rms_and_its_fall_with_averaging() -> None:
    rng = np.random.default_rng(RNG_SEED)
    v = np.zeros((10_000, 1))
    kw = dict(gain=np.zeros(1), offset=np.zeros(1), bits=0, full_range=10.0, rng=rng)
    stds = []
    averages = [1, 4, 16, 64]
    for n in averages:
        stds.append(imp.adc_read(v, noise_rms=244e-6, averaging=n, **kw).std())
    assert stds[0] == pytest.approx(244e-6, rel=0.05)
    for n, s in zip(averages, stds):
        assert s == pytest.approx(244e-6 / np.sqrt(n), rel=0.05)
    slope = np.polyfit(np.log(averages), np.log(stds), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.03)


def test_quantization_is_in_steps_of_one_lsb() -> None:
    rng = np.random.default_rng(RNG_SEED)
    lsb = 20.0 / 2**16
    v = rng.uniform(-1, 1, (2000, 3))
    read = imp.adc_read(v, gain=np.full(3, 75e-6), offset=np.full(3, 1e-4), noise_rms=244e-6,
                        bits=16, full_range=10.0, averaging=1, rng=rng)
    codes = read / lsb
    assert np.allclose(codes, np.round(codes), atol=1e-6)
    steps = np.diff(np.unique(np.round(codes)))
    assert steps.min() == 1
    assert np.abs(read - v).max() < 2 * lsb + 6 * 244e-6
    assert imp.quantize(np.array([20.0, -20.0]), 16, 10.0).tolist() == [(2**15 - 1) * lsb, -(2**15) * lsb]


def pot_bench_backend(m_seed: int = 0, **overrides: object) -> SimulatedBackend:
    net, _, _ = random_network(m_seed, n=40)
    table = rheostat_table(129, 10_000.0, 75.0, 1000.0, edges=net.n_edges)
    params = make_imperfections("pot-bench", dict(overrides))
    return SimulatedBackend(net, SteppedEdges(table), np.full(net.n_edges, 64), imperfections=params,
                            pot=(129, 10_000.0, 75.0, 1000.0), bench_seed=7, noise_seed=8)


def test_backend_noise_and_fixed_offsets() -> None:
    backend = pot_bench_backend(ai_bits=0, mux_settle_time=0.0, drift_kelvin=0.0)
    x = np.tile([[0.3, 0.8]], (10_000, 1))
    a = backend.measure(x).voltages
    b = backend.measure(x).voltages
    expected = 244e-6 / np.sqrt(16)
    assert a.std(axis=0) == pytest.approx(np.full(a.shape[1], expected), rel=0.05)
    # The offset (and gain) of each channel is the same in every call ...
    assert np.allclose(a.mean(axis=0), b.mean(axis=0), atol=5 * expected / np.sqrt(10_000))
    # ... and differs between channels: the readings of the grounded node are its offset.
    ground = backend.network.roles.grounds[0]
    assert a[:, ground].mean() == pytest.approx(backend._bench.ai_offset[ground], abs=3e-6)
    offsets = backend._bench.ai_offset
    assert np.abs(offsets).max() <= 20e-6 * 10.0 and np.unique(offsets).size == offsets.size


def test_tolerance_and_wiper_distributions_match_parameters() -> None:
    rng = np.random.default_rng(RNG_SEED)
    params = Imperfections(tolerance=0.2, r_wiper_spread=25.0)
    bench = imp.BenchInstance.draw(params, n_nodes=2, n_edges=20_000, n_ao=1,
                                   pot=(129, 10_000.0, 75.0, 1000.0), rng=rng)
    resistance = 1.0 / bench.twins[0].table
    r_ab = resistance[:, -1] - resistance[:, 0]
    r_wiper = resistance[:, 0] - 1000.0
    assert st.kstest(r_ab / 10_000.0 - 1.0, st.uniform(-0.2, 0.4).cdf).pvalue > 0.01
    assert st.kstest(r_wiper, st.uniform(50.0, 50.0).cdf).pvalue > 0.01
    assert r_ab.std() == pytest.approx(0.4 * 10_000 / np.sqrt(12), rel=0.03)
    # Continuous edges: relative conductance error uniform in +-tolerance.
    cont = imp.BenchInstance.draw(params, n_nodes=2, n_edges=20_000, n_ao=1, pot=None, rng=rng)
    assert st.kstest(cont.twins[0].gain, st.uniform(-0.2, 0.4).cdf).pvalue > 0.01


def test_inl_profiles_zero_at_ends_and_bounded() -> None:
    inl = imp.inl_profiles(np.random.default_rng(RNG_SEED), 500, 129, 1.0)
    assert np.all(inl[:, 0] == 0) and np.allclose(inl[:, -1], 0, atol=1e-12)
    peaks = np.abs(inl).max(axis=1)
    assert peaks.max() <= 1.0 + 1e-12 and peaks.min() >= 0.5 - 1e-12


def test_mux_settling_error_grows_with_node_impedance() -> None:
    v = np.array([[1.0, 0.0, 0.0, 0.0]])
    errors = []
    for r in (1e3, 1e4, 1e5):
        read = imp.mux_settle(v, np.full(4, r), settle_time=10e-6, capacitance=100e-12)
        errors.append(abs(read[0, 1] - v[0, 1]))
        assert read[0, 1] == pytest.approx(np.exp(-10e-6 / (r * 100e-12)))
    assert errors[0] < errors[1] < errors[2]


def test_source_output_impedance_matches_a_dense_solve() -> None:
    net, g, rng = random_network(3, n=30)
    r_out = 500.0  # large, to see it clearly
    params = Imperfections(source_impedance=r_out)
    backend = SimulatedBackend(net, ContinuousEdges(1e-6, 1.0), g, imperfections=params)
    x = rng.uniform(0, 1, (3, 2))
    v = backend.measure(x).voltages
    # Dense: each source node fed through r_out from an ideal source.
    n = net.n_nodes
    lap = net.laplacian(g).toarray()
    for i, s in enumerate(net.roles.sources):
        lap[s, s] += 1.0 / r_out
    ground = list(net.roles.grounds)
    free = np.setdiff1d(np.arange(n), ground)
    inject = np.zeros((3, n))
    inject[:, list(net.roles.sources)] = x / r_out
    ref = np.zeros((3, n))
    ref[:, free] = np.linalg.solve(lap[np.ix_(free, free)], inject[:, free].T).T
    assert np.allclose(v, ref, rtol=1e-10, atol=1e-13)
    assert np.abs(v[:, list(net.roles.sources)] - x).max() > 1e-3  # driven nodes move under load


def twin_prediction(net, g_free: np.ndarray, g_clamped: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Zero-nudge update of a twin bench by dense linear algebra: twin A free, twin B
    with its outputs held at twin A's outputs."""
    roles = net.roles
    base = list(roles.sources) + list(roles.grounds)
    zeros = np.zeros((x.shape[0], len(roles.grounds)))
    v_a = dense_solution(net, g_free, base, np.hstack([x, zeros]))
    outputs = v_a[:, list(roles.clamps)]
    v_b = dense_solution(net, g_clamped, base + list(roles.clamps), np.hstack([x, zeros, outputs]))
    dv_a, dv_b = (net.incidence @ v_a.T).T, (net.incidence @ v_b.T).T
    return (dv_a**2 - dv_b**2).mean(axis=0)


def test_twin_mismatch_gives_the_predicted_update_at_zero_nudge() -> None:
    net, g, rng = random_network(5, n=40)
    params = Imperfections(twin=True, tolerance=0.05)
    backend = SimulatedBackend(net, ContinuousEdges(1e-6, 1.0), g, imperfections=params, bench_seed=3)
    x = rng.uniform(0, 1, (20, 2))
    free, clamped = backend.measure_twin(x, lambda f: f.at_nodes(net.roles.clamps))  # eta = 0
    signal = contrastive_signal(free, clamped, net.incidence)
    predicted = twin_prediction(net, backend.true_conductances(0), backend.true_conductances(1), x)
    assert np.linalg.norm(signal) > 1e-3 * np.abs(free.voltages).max() ** 2
    assert np.allclose(signal, predicted, rtol=1e-9, atol=1e-12 * np.abs(predicted).max())
    # Identical twins would give no update at all.
    same = SimulatedBackend(net, ContinuousEdges(1e-6, 1.0), g, imperfections=Imperfections(twin=True))
    f2, c2 = same.measure_twin(x, lambda f: f.at_nodes(net.roles.clamps))
    assert np.abs(contrastive_signal(f2, c2, net.incidence)).max() < 1e-12


def test_learning_bias_enters_the_local_signal_as_b() -> None:
    net, g, rng = random_network(6, n=40)
    backend = SimulatedBackend(net, ContinuousEdges(1e-6, 1.0), g,
                               imperfections=Imperfections(learning_bias=1e-4), bench_seed=2)
    x = rng.uniform(0, 1, (10, 2))
    free = backend.measure(x)
    clamped = backend.measure(x, free.at_nodes(net.roles.clamps))  # zero nudge
    b = backend._bench.bias
    assert np.allclose(contrastive_signal(free, clamped, net.incidence), b, rtol=1e-9, atol=1e-15)
    assert b.std() == pytest.approx(1e-4, rel=0.25)


def test_thermal_drift_follows_the_temperature() -> None:
    backend = pot_bench_backend(drift_kelvin=2.0, drift_period=100.0, tempco=100e-6)
    g0 = backend.true_conductances(time=0.0)
    g_hot = backend.true_conductances(time=25.0)  # +2 K
    g_cold = backend.true_conductances(time=75.0)  # -2 K
    assert np.all(g_hot < g0) and np.all(g_cold > g0)
    rel = g0 / g_hot - 1.0
    assert 0 < rel.max() < 2.0 * 150e-6  # at most 2 K x 150 ppm/K of the element's share


def test_clipping_at_the_tap_ends_is_reported() -> None:
    backend = pot_bench_backend()
    m = backend.network.n_edges
    applied = backend.adjust(np.full(m, 100))
    assert np.all(backend.read_edges().taps == 128) and np.all(applied.clipped)
    assert np.all(applied.commands == 64)
    applied = backend.adjust(np.full(m, -1))
    assert not applied.clipped.any() and np.all(backend.read_edges().taps == 127)


def test_ideal_preset_is_the_exact_fast_path() -> None:
    assert make_imperfections("ideal") == Imperfections()
    net, g, rng = random_network(8)
    backend = SimulatedBackend(net, ContinuousEdges(1e-6, 1.0), g, imperfections=make_imperfections("ideal"))
    assert backend._bench is None and backend.measure(rng.uniform(0, 1, (2, 2))).basis is not None


def test_unknown_preset_and_parameter_are_clear_errors() -> None:
    from clln.controller import ProtocolError

    with pytest.raises(ProtocolError, match="allowed: ideal, pot-bench, twin-bench"):
        make_imperfections("lab-bench")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="extra"):
        make_imperfections("pot-bench", {"noise": 1.0})
