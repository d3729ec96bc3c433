"""Bias-suppression schemes: what each one promises, checked against independent numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import random_network

from clln.compose import build_experiment, run_training
from clln.controller import (
    ContinuousEdges,
    CoupledRule,
    Dataset,
    ProtocolError,
    SteppedEdges,
    SteppedRule,
    Task,
    TrainConfig,
    Trainer,
    contrastive_signal,
)
from clln.controller.checkpoint import pack_state, unpack_state
from clln.controller.schemes import AutoZero, Chop, Overclamp, Residuals, Scheme, nearest_tap
from clln.controller.store import RunStore
from clln.controller.task import linear_map_dataset
from clln.protocol import parse_protocol
from clln.simulator import Imperfections, SimulatedBackend
from clln.simulator.rheostat import rheostat_table

EDGES = ContinuousEdges(1e-6, 1.0)


def regression(net, rng, n: int = 12) -> Task:
    train, test, _ = linear_map_dataset(rng, len(net.roles.sources), len(net.roles.clamps), n, 8)
    return Task("regression", train, test, output_nodes=net.roles.clamps)


def dense_state(net, g: np.ndarray, fixed: list[int], values: np.ndarray) -> np.ndarray:
    """(B, n) node voltages with the ``fixed`` nodes at ``values`` (B, k): a dense solve."""
    lap = net.laplacian(g).toarray()
    free = np.setdiff1d(np.arange(net.n_nodes), fixed)
    v = np.zeros((values.shape[0], net.n_nodes))
    v[:, fixed] = values
    v[:, free] = np.linalg.solve(lap[np.ix_(free, free)], -(lap[np.ix_(free, fixed)] @ values.T)).T
    return v


def dense_twin_signal(net, g_free, g_clamped, x, y, eta) -> np.ndarray:
    """(m,) batch mean of (dV_free)^2 - (dV_clamped)^2 with the free state on conductances
    g_free and the clamped one on g_clamped, clamped at O_free + eta (y - O_free)."""
    roles = net.roles
    base = list(roles.sources) + list(roles.grounds)
    zeros = np.zeros((x.shape[0], len(roles.grounds)))
    v_free = dense_state(net, g_free, base, np.hstack([x, zeros]))
    out = v_free[:, list(roles.clamps)]
    clamps = out + eta * (y - out)
    v_clamped = dense_state(net, g_clamped, base + list(roles.clamps), np.hstack([x, zeros, clamps]))
    dv_f, dv_c = (net.incidence @ v_free.T).T, (net.incidence @ v_clamped.T).T
    return (dv_f**2 - dv_c**2).mean(axis=0)


# -- overclamp ------------------------------------------------------------------


def test_margin_gating_stops_exactly_the_samples_within_the_margin() -> None:
    net, g, rng = random_network(1, n=30)
    task = regression(net, rng)
    backend = SimulatedBackend(net, EDGES, g)
    free = backend.measure(task.source_voltages(task.train.x))
    out = task.outputs(free)
    worst = np.abs(task.train.y - out).max(axis=1)
    margin = float(np.median(worst))
    nudge = Overclamp(eta=5.0, margin=margin, symmetric=False).clamps(task, free, task.train)
    assert np.array_equal(nudge.weights, (worst > margin).astype(float))
    assert 0 < nudge.weights.sum() < len(worst)
    assert np.allclose(nudge.clamps, out + 5.0 * (task.train.y - out))


def test_classification_margin_is_a_hinge() -> None:
    labels = np.array([0, 1, 2, 0])
    outputs = np.array([[0.5, 0.1, 0.0],    # right by 0.4
                        [0.3, 0.32, 0.0],   # right by 0.02: inside the margin
                        [0.6, 0.1, 0.2],    # wrong
                        [0.2, 0.15, 0.0]])  # right by 0.05: just outside
    y = np.eye(3)[labels] * 0.3
    data = Dataset(np.zeros((4, 1)), y, labels)
    task = Task("classification", data, data, output_nodes=(0, 1, 2))
    gate = Overclamp(margin=0.04).teaching(task, outputs, data)
    assert gate.tolist() == [False, True, True, False]


def test_a_network_within_the_margin_is_not_updated_even_with_a_bias() -> None:
    net, g, rng = random_network(2, n=30)
    backend = SimulatedBackend(net, EDGES, g, imperfections=Imperfections(learning_bias=1e-3))
    x = rng.uniform(0, 1, (10, 2))
    y = backend.measure(x).at_nodes(net.roles.clamps) + rng.uniform(-1e-3, 1e-3, (10, 2))
    data = Dataset(x, y)
    task = Task("regression", data, data, output_nodes=net.roles.clamps)
    scheme = Scheme(overclamp=Overclamp(eta=10.0, margin=2e-3))
    trainer = Trainer(backend, task, CoupledRule(0.1), TrainConfig(5, 10, 0.1), rng, scheme=scheme)
    for i in range(1, 6):
        record = trainer.step(i)
        assert record.teaching == 0 and record.update_norm == 0.0
    assert np.array_equal(backend.read_edges().conductances, g)


@pytest.mark.parametrize("normalise", [True, False])
def test_update_is_averaged_over_the_samples_that_teach(normalise: bool) -> None:
    net, g, rng = random_network(3, n=30)
    task = regression(net, rng)
    backend = SimulatedBackend(net, EDGES, g)
    x = task.source_voltages(task.train.x)
    out = backend.measure(x).at_nodes(net.roles.clamps)
    margin = float(np.median(np.abs(task.train.y - out).max(axis=1)))
    teach = np.abs(task.train.y - out).max(axis=1) > margin
    scheme = Scheme(overclamp=Overclamp(eta=3.0, margin=margin, normalise=normalise, symmetric=False))
    trainer = Trainer(backend, task, CoupledRule(1e-4), TrainConfig(1, 100, 0.1), rng, scheme=scheme)
    applied = trainer.step(1)
    # Independent: the dense coupled-learning signal of the teaching samples only.
    expected = dense_twin_signal(net, g, g, x[teach], task.train.y[teach], 3.0)
    if not normalise:
        expected = expected * teach.sum() / teach.size
    moved = backend.read_edges().conductances - g
    assert applied.teaching == teach.sum()
    assert np.all(backend.read_edges().conductances > EDGES.gmin)  # nothing clipped
    assert np.allclose(moved, (1e-4 / 3.0) * expected, rtol=1e-8, atol=1e-18)


def test_symmetric_clamping_keeps_the_linear_term_and_drops_offsets() -> None:
    """In a linear network the clamped drops are linear in the nudge, so half the
    difference of the mirrored states is exactly linear in it; a signal-circuit offset
    present in both clamped measurements cancels."""
    net, g, rng = random_network(4, n=30)
    task = regression(net, rng)
    x = task.source_voltages(task.train.x)

    def signal(eta: float, symmetric: bool, bias: float) -> np.ndarray:
        backend = SimulatedBackend(net, EDGES, g, imperfections=Imperfections(learning_bias=bias),
                                   bench_seed=1)
        free = backend.measure(x)
        nudge = Overclamp(eta=eta, margin=0.0, symmetric=symmetric).clamps(task, free, task.train)
        plus = backend.measure(x, nudge.clamps)
        if not symmetric:
            return contrastive_signal(free, plus, net.incidence)
        return 0.5 * contrastive_signal(backend.measure(x, nudge.anti), plus, net.incidence)

    s1, s2 = signal(10.0, True, 0.0), signal(20.0, True, 0.0)
    assert np.allclose(s2, 2.0 * s1, rtol=1e-9, atol=1e-12 * np.abs(s1).max())
    one1, one2 = signal(10.0, False, 0.0), signal(20.0, False, 0.0)
    assert np.abs(one2 - 2.0 * one1).max() > 0.1 * np.abs(one1).max()  # the even term is there
    assert np.allclose(signal(10.0, True, 1e-3), s1, rtol=1e-9, atol=1e-12 * np.abs(s1).max())
    # The linear term is the one-sided signal's: s(eta) - s(-eta) over two.
    mirrored = dense_twin_signal(net, g, g, x, task.train.y, -10.0)
    assert np.allclose(s1, 0.5 * (one1 - mirrored), rtol=1e-8, atol=1e-12 * np.abs(s1).max())


def test_a_symmetric_step_applies_the_linear_term_without_the_bias() -> None:
    net, g, rng = random_network(13, n=30)
    task = regression(net, rng)
    backend = SimulatedBackend(net, EDGES, g, imperfections=Imperfections(learning_bias=1e-3),
                               bench_seed=2)
    scheme = Scheme(overclamp=Overclamp(eta=5.0, margin=0.0))
    trainer = Trainer(backend, task, CoupledRule(1e-4), TrainConfig(1, 100, 0.1), rng, scheme=scheme)
    trainer.step(1)
    x, y = task.source_voltages(task.train.x), task.train.y
    linear = 0.5 * (dense_twin_signal(net, g, g, x, y, 5.0) - dense_twin_signal(net, g, g, x, y, -5.0))
    moved = backend.read_edges().conductances - g
    assert np.allclose(moved, (1e-4 / 5.0) * linear, rtol=1e-8, atol=1e-18)


def test_rails_keep_both_clamps_inside_with_the_same_nudge() -> None:
    net, g, rng = random_network(5, n=30)
    task = regression(net, rng)
    backend = SimulatedBackend(net, EDGES, g)
    free = backend.measure(task.source_voltages(task.train.x))
    nudge = Overclamp(eta=1e3, margin=0.0, rails=(0.0, 1.0)).clamps(task, free, task.train)
    held = free.at_nodes(net.roles.clamps)
    assert nudge.clamps.min() >= 0.0 and nudge.clamps.max() <= 1.0
    assert nudge.anti.min() >= 0.0 and nudge.anti.max() <= 1.0
    assert np.allclose(nudge.clamps - held, held - nudge.anti)


def test_rail_clipping_keeps_the_learning_rate_of_the_unclipped_nudge() -> None:
    """A sample whose nudge would leave the rails is scaled down as a whole and its signal
    multiplied back: in a linear network the step equals the unclipped symmetric one (a
    dense computation without rails)."""
    net, g, rng = random_network(13, n=30)
    task = regression(net, rng)
    backend = SimulatedBackend(net, EDGES, g)
    x, y = task.source_voltages(task.train.x), task.train.y
    eta, rails = 5.0, (-0.5, 1.2)
    over = Overclamp(eta=eta, margin=0.0, rails=rails)
    nudge = over.clamps(task, backend.measure(x), task.train)
    assert nudge.gains is not None and np.any(nudge.gains > 1.5) and np.all(nudge.gains < eta)
    assert rails[0] <= nudge.anti.min() and nudge.clamps.max() <= rails[1]
    held = backend.measure(x).at_nodes(net.roles.clamps)
    direction = eta * (y - held)
    scaled = (nudge.clamps - held) * nudge.gains[:, None]  # the nudge direction is kept
    assert np.allclose(scaled, direction, rtol=1e-9, atol=1e-15)
    trainer = Trainer(backend, task, CoupledRule(1e-4), TrainConfig(1, 100, 0.1), rng,
                      scheme=Scheme(overclamp=over))
    trainer.step(1)
    linear = 0.5 * (dense_twin_signal(net, g, g, x, y, eta) - dense_twin_signal(net, g, g, x, y, -eta))
    moved = backend.read_edges().conductances - g
    assert np.allclose(moved, (1e-4 / eta) * linear, rtol=1e-8, atol=1e-18)


def test_the_rail_gain_is_capped_at_eta() -> None:
    net, g, rng = random_network(5, n=30)
    task = regression(net, rng)
    free = SimulatedBackend(net, EDGES, g).measure(task.source_voltages(task.train.x))
    nudge = Overclamp(eta=1e3, margin=0.0, rails=(0.0, 1.0)).clamps(task, free, task.train)
    assert nudge.gains.max() == 1e3 and nudge.gains.min() >= 1.0


@pytest.mark.parametrize(("noise", "averaging"), [(2e-3, 4), (0.0, 1)])
def test_the_auto_margin_is_five_times_the_measured_output_noise(noise: float, averaging: int) -> None:
    """Margin "auto": before its first update the trainer reads the first batch's free
    state noise_readings times; the pooled rms is the noise per reading (here
    noise / sqrt(averaging)); on a noise-free simulator the margin is 0."""
    net, g, rng = random_network(7, n=30)
    task = regression(net, rng, n=120)
    backend = SimulatedBackend(net, EDGES, g, imperfections=Imperfections(
        ai_noise_rms=noise, averaging=averaging), bench_seed=3)
    over = Overclamp(eta=10.0)
    assert over.margin == "auto" and over.needs_noise
    trainer = Trainer(backend, task, CoupledRule(1e-4), TrainConfig(3, 120, 0.1), rng,
                      scheme=Scheme(overclamp=over))
    trainer.step(1)
    expected = noise / np.sqrt(averaging)
    assert not over.needs_noise
    assert over.noise == pytest.approx(expected, rel=0.1, abs=1e-15)
    assert over.gate == pytest.approx(5.0 * over.noise)
    measured = over.noise
    trainer.step(2)  # measured once only
    assert over.noise == measured
    restored = Overclamp(eta=10.0)
    Scheme(overclamp=restored).load_state_dict(Scheme(overclamp=over).state_dict())
    assert restored.noise == measured and not restored.needs_noise


def test_observe_noise_is_the_pooled_standard_deviation() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, (50, 3))
    readings = truth + 1e-3 * rng.standard_normal((5, 50, 3))
    over = Overclamp()
    assert over.observe_noise(readings) == pytest.approx(1e-3, rel=0.05)
    with pytest.raises(ValueError, match="readings"):
        over.observe_noise(readings[:1])


# -- auto-zero --------------------------------------------------------------------


def test_auto_zero_estimate_converges_to_the_injected_bias() -> None:
    net, g, rng = random_network(6, n=30)
    task = regression(net, rng)
    params = Imperfections(learning_bias=1e-4, learning_bias_mean=2e-5, ai_noise_rms=1e-4)
    backend = SimulatedBackend(net, EDGES, g, imperfections=params, bench_seed=3, noise_seed=4)
    zero = AutoZero(every=1, window=1000)
    trainer = Trainer(backend, task, CoupledRule(1e-12), TrainConfig(1, 100, 0.1), rng,
                      scheme=Scheme(auto_zero=zero))
    truth = backend._bench.bias
    errors = []
    for i in range(1, 201):
        trainer.step(i)
        if i in (10, 200):
            errors.append(np.linalg.norm(zero.estimate[0] - truth) / np.linalg.norm(truth))
    assert errors[1] < 0.1
    assert errors[1] < errors[0] / 2  # averages the noise down as zero measurements accumulate
    assert np.allclose(zero.correct(0, truth), truth - zero.estimate[0])


def test_auto_zero_follows_a_changing_bias_with_its_window() -> None:
    zero = AutoZero(every=1, window=4)
    for _ in range(10):
        zero.observe(0, np.ones(3))
    for _ in range(20):
        zero.observe(0, np.full(3, 3.0))
    assert np.allclose(zero.estimate[0], 3.0, atol=3.0 * 0.75**20)
    assert zero.due(1) and not AutoZero(every=5).due(3) and AutoZero(every=5).due(6)


# -- chop -------------------------------------------------------------------------


def test_chop_cancels_a_fixed_twin_mismatch_over_two_steps() -> None:
    """Two chop steps through the trainer, against a dense computation of each twin
    arrangement; the offset cancels exactly and the twin mismatch to first order."""
    net, g, rng = random_network(7, n=40)
    params = Imperfections(twin=True, tolerance=0.02, learning_bias=1e-4)
    backend = SimulatedBackend(net, EDGES, g, imperfections=params, bench_seed=5)
    g_a, g_b = backend.true_conductances(0).copy(), backend.true_conductances(1).copy()
    b = backend._bench.bias
    x = rng.uniform(0.1, 1.0, (10, 2))
    y = dense_state(net, g_a, list(net.roles.sources) + list(net.roles.grounds),
                    np.hstack([x, np.zeros((10, 1))]))[:, list(net.roles.clamps)]
    data = Dataset(x, y)  # twin A is exactly right: any update is bias
    task = Task("regression", data, data, output_nodes=net.roles.clamps)
    alpha, eta = 1e-9, 0.5  # tiny steps: the conductances barely move between the two
    chop = Chop()
    trainer = Trainer(backend, task, CoupledRule(alpha), TrainConfig(2, 10, eta), rng,
                      scheme=Scheme(chop=chop))
    moved = []
    for i in (1, 2):
        before = backend.read_edges().conductances
        trainer.step(i)
        moved.append((backend.read_edges().conductances - before) * eta / alpha)
    assert chop.phase == 0
    normal = dense_twin_signal(net, g_a, g_b, x, y, eta) + b
    swapped = dense_twin_signal(net, g_b, g_a, x, y, eta) - b
    scale = np.abs(normal).max()
    assert np.allclose(moved[0], normal, rtol=1e-6, atol=1e-6 * scale)
    assert np.allclose(moved[1], swapped, rtol=1e-6, atol=1e-6 * scale)
    pair = 0.5 * (moved[0] + moved[1])
    no_offset = 0.5 * (dense_twin_signal(net, g_a, g_b, x, y, eta)
                       + dense_twin_signal(net, g_b, g_a, x, y, eta))
    assert np.allclose(pair, no_offset, rtol=1e-6, atol=1e-6 * scale)
    # At zero nudge (pure bias) what chop leaves of the mismatch is second order in it.
    z_normal = dense_twin_signal(net, g_a, g_b, x, y, 0.0)
    z_swapped = dense_twin_signal(net, g_b, g_a, x, y, 0.0)
    assert np.linalg.norm(z_normal + z_swapped) < 0.02 * np.linalg.norm(z_normal)


def test_chop_needs_a_twin_bench() -> None:
    net, g, rng = random_network(8, n=30)
    task = regression(net, rng)
    with pytest.raises(ProtocolError, match="needs a twin bench"):
        Trainer(SimulatedBackend(net, EDGES, g), task, CoupledRule(0.1), TrainConfig(1, 10, 0.1),
                rng, scheme=Scheme(chop=Chop()))


# -- residual accumulation ----------------------------------------------------------


def pot_edges(m: int) -> SteppedEdges:
    return SteppedEdges(rheostat_table(129, 10_000.0, 75.0, 1000.0, edges=m))


def test_residual_accumulation_loses_no_update_to_rounding() -> None:
    rng = np.random.default_rng(9)
    m = 50
    edges = pot_edges(m)
    taps = np.full(m, 64)
    start = edges.conductance(taps)
    step = np.abs(np.diff(edges.table[0]))[64]  # one tap near the middle, S
    res = Residuals()
    commanded = np.zeros(m)
    for _ in range(400):  # each update well below one tap; mixed signs per edge
        dg = step * rng.uniform(-0.2, 0.3, m)
        commanded += dg
        taps = taps + res.taps(dg, edges, taps)
    realised = edges.conductance(taps) - start
    assert np.allclose(commanded, realised + res.remainder, rtol=0, atol=1e-15)
    assert np.abs(res.remainder).max() <= 0.5 * np.abs(np.diff(edges.table[0])).max()
    assert np.abs(realised).min() > 5 * step  # small updates did move the taps
    # Plain rounding of the same updates would never have moved a tap.
    assert np.all(np.round(step * 0.3 / step * np.ones(m)) == 0)


def test_residuals_drop_what_is_cut_at_the_end_of_the_range() -> None:
    edges = pot_edges(3)
    res = Residuals()
    taps = np.array([0, 0, 64])
    big = np.array([1.0, -1.0, 0.0])  # S: far past either end for the first edge
    new = taps + res.taps(big, edges, taps)
    assert new[0] == np.argmax(edges.table[0]) and new[2] == 64
    assert res.remainder[0] == 0.0


def test_nearest_tap_agrees_with_a_brute_force_search() -> None:
    rng = np.random.default_rng(10)
    edges = SteppedEdges(np.vstack([pot_edges(20).table, pot_edges(20).table[:, ::-1]]))
    target = rng.uniform(edges.table.min(), edges.table.max(), 40)
    brute = np.argmin(np.abs(edges.table - target[:, None]), axis=1)
    assert np.array_equal(nearest_tap(edges, target), brute)


def test_coupled_rule_on_stepped_edges_needs_residuals() -> None:
    net, _, rng = random_network(11, n=30)
    task = regression(net, rng)
    edges = pot_edges(net.n_edges)
    backend = SimulatedBackend(net, edges, np.full(net.n_edges, 64))
    with pytest.raises(ProtocolError, match="needs scheme 'residuals'"):
        Trainer(backend, task, CoupledRule(0.01), TrainConfig(1, 10, 0.1), rng, scheme=Scheme())
    trainer = Trainer(backend, task, CoupledRule(0.01), TrainConfig(1, 10, 0.1), rng,
                      scheme=Scheme(residuals=Residuals()))
    trainer.step(1)
    assert trainer.scheme.residuals.remainder is not None
    Trainer(backend, task, SteppedRule(), TrainConfig(1, 10, 0.1), rng, scheme=Scheme())


# -- composition, state, record ------------------------------------------------------


def test_an_empty_scheme_is_plain_coupled_learning_bit_for_bit() -> None:
    net, g, rng = random_network(12, n=30)
    task = regression(net, rng, n=20)
    runs = []
    for scheme in (None, Scheme()):
        backend = SimulatedBackend(net, EDGES, g)
        trainer = Trainer(backend, task, CoupledRule(0.05), TrainConfig(20, 8, 0.1),
                          np.random.default_rng(0), scheme=scheme)
        for i in range(1, 21):
            trainer.step(i)
        runs.append(backend.read_edges().conductances)
    assert np.array_equal(runs[0], runs[1])


def test_scheme_state_round_trips_through_a_checkpoint() -> None:
    scheme = Scheme(overclamp=Overclamp(), auto_zero=AutoZero(), chop=Chop(), residuals=Residuals())
    scheme.auto_zero.observe(0, np.arange(3.0))
    scheme.auto_zero.observe(1, -np.arange(3.0))
    scheme.chop.advance()
    scheme.residuals.remainder = np.array([1e-7, -2e-7, 0.0])
    state = unpack_state(pack_state(scheme.state_dict()))
    other = Scheme(overclamp=Overclamp(), auto_zero=AutoZero(), chop=Chop(), residuals=Residuals())
    other.load_state_dict(state)
    assert other.chop.phase == 1 and other.auto_zero.count == {0: 1, 1: 1}
    assert np.array_equal(other.auto_zero.estimate[1], -np.arange(3.0))
    assert np.array_equal(other.residuals.remainder, scheme.residuals.remainder)
    with pytest.raises(ValueError, match="components"):
        Scheme(chop=Chop()).load_state_dict(state)


PROTOCOL = """
format = 1
name = "scheme"
seed = 3
[network]
kind = "lattice"
rows = 4
cols = 4
[task]
kind = "regression"
inputs = 2
outputs = 2
train = 10
test = 10
[training]
alpha = 0.05
eta = 0.1
batch = 10
steps = 20
test_every = 10
[training.scheme.overclamp]
eta = 8.0
margin = 0.002
rails = [0.0, 1.0]
[training.scheme.auto-zero]
every = 5
"""


def test_the_scheme_is_chosen_in_the_protocol_and_recorded_in_the_run(tmp_path: Path) -> None:
    proto = parse_protocol(PROTOCOL, "s.toml")
    exp = build_experiment(proto, source="s.toml", base_dir=tmp_path)
    assert exp.scheme is not None and exp.scheme.names == ["overclamp", "auto-zero"]
    store = RunStore(tmp_path / "runs")
    outcome = run_training(exp, store, protocol_text=PROTOCOL, protocol_path="s.toml")
    info = store.run(outcome.run_id)["info"]
    assert info["scheme"] == {
        "overclamp": {"eta": 8.0, "margin": 0.002, "rails": [0.0, 1.0], "normalise": True,
                      "symmetric": True},
        "auto-zero": {"every": 5, "window": 10},
    }
    assert exp.scheme.auto_zero.count[0] == 4  # steps 1, 6, 11, 16


def test_the_measured_margin_is_recorded_and_shown(tmp_path: Path) -> None:
    from test_cli import clln, ok

    text = (PROTOCOL.replace("margin = 0.002\n", 'margin = "auto"\n')
            + "[simulator.parameters]\nai_noise_rms = 1e-3\n")
    proto = parse_protocol(text, "s.toml")
    exp = build_experiment(proto, source="s.toml", base_dir=tmp_path)
    store = RunStore(tmp_path / "runs")
    outcome = run_training(exp, store, protocol_text=text, protocol_path="s.toml")
    over = store.run(outcome.run_id)["info"]["scheme"]["overclamp"]
    assert over["margin"] == "auto" and over["noise_margin"] == 5.0
    assert over["measured_noise"] == pytest.approx(1e-3, rel=0.25)
    assert over["margin_used"] == pytest.approx(5.0 * over["measured_noise"])
    shown = ok(clln("show", outcome.run_id, "--out", tmp_path / "runs")).stdout
    assert f"5 x output noise {over['measured_noise'] * 1e6:.3g} uV" in shown


@pytest.mark.parametrize(("extra", "message"), [
    ("[training.scheme.overclamp]\nmargn = 1.0\n",
     "s.toml: training.scheme.overclamp.margn: unknown key; allowed: eta, margin, noise_margin, noise_readings, normalise, rails, symmetric"),
    ("[training.scheme.autozero]\n",
     "s.toml: training.scheme.autozero: unknown key; allowed: auto-zero, chop, overclamp, residuals"),
    ("[training.scheme.overclamp]\neta = -1.0\n", "s.toml: training.scheme.overclamp.eta: "),
    ("[training.scheme.overclamp]\nmargin = \"x\"\n",
     "s.toml: training.scheme.overclamp.margin: should be a valid number, or one of 'auto' (got 'x')"),
    ("[training.scheme.overclamp]\nmargin = -1e-3\n",
     "s.toml: training.scheme.overclamp.margin: should be greater than or equal to 0, or one of 'auto'"),
    ("[training.scheme.overclamp]\nnoise_readings = 1\n",
     "s.toml: training.scheme.overclamp.noise_readings: Input should be greater than or equal to 2"),
    ("[training.scheme.chop]\n", "s.toml: training.scheme: scheme 'chop' needs a twin bench"),
])
def test_scheme_mistakes_are_one_line_errors(extra: str, message: str, tmp_path: Path) -> None:
    text = PROTOCOL.split("[training.scheme.overclamp]")[0] + extra
    with pytest.raises(ProtocolError) as err:
        build_experiment(parse_protocol(text, "s.toml"), source="s.toml", base_dir=tmp_path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
