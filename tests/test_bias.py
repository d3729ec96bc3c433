"""Learning bias: its sources in the simulator, what it does (seed 002), and the analyses."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, random_network
from test_schemes import dense_state, dense_twin_signal

from clln.analysis.bias import (
    Alternation,
    alternate,
    direction_tasks,
    limit_cycle,
    load_seed002,
    loglog_slope,
    null_space_drift,
    retention,
    task_jacobian,
)
from clln.compose import build_experiment
from clln.controller import (
    ContinuousEdges,
    ProtocolError,
    SteppedEdges,
    Task,
    Trainer,
    contrastive_signal,
)
from clln.controller.task import linear_map_dataset
from clln.protocol import Protocol
from clln.simulator import Imperfections, SimulatedBackend
from clln.simulator.rheostat import rheostat_table

EDGES = ContinuousEdges(1e-6, 1.0)
BIAS_PROTOCOLS = ROOT / "protocols" / "bias"


def bias_protocol(name: str, **changes: object) -> Protocol:
    """protocols/bias/<name>.toml with dotted-key changes."""
    data = tomllib.loads((BIAS_PROTOCOLS / f"{name}.toml").read_text())
    for key, value in changes.items():
        *path, last = key.split("__")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return Protocol.model_validate(data)


# -- sources of bias in the simulator ---------------------------------------------------


def test_learning_bias_is_one_pattern_scaled_plus_a_common_part() -> None:
    net, g, _ = random_network(1, n=30)

    def bias(**params: float) -> np.ndarray:
        backend = SimulatedBackend(net, EDGES, g, imperfections=Imperfections(**params), bench_seed=4)
        return backend._bench.bias

    base = bias(learning_bias=1e-4)
    assert np.allclose(bias(learning_bias=3e-4), 3.0 * base, rtol=1e-12)
    assert np.allclose(bias(learning_bias=1e-4, learning_bias_mean=-2e-5), base - 2e-5, rtol=1e-12)
    common = SimulatedBackend(net, EDGES, g, imperfections=Imperfections(learning_bias_mean=5e-5))
    x = np.full((3, 2), 0.5)
    free = common.measure(x)
    zero = common.measure(x, free.at_nodes(net.roles.clamps))
    assert np.allclose(contrastive_signal(free, zero, net.incidence), 5e-5, rtol=1e-9)


def test_swapped_twins_measure_free_on_twin_1_and_reverse_the_offset() -> None:
    net, g, rng = random_network(2, n=30)
    params = Imperfections(twin=True, tolerance=0.1, learning_bias=1e-4)
    backend = SimulatedBackend(net, EDGES, g, imperfections=params, bench_seed=2)
    g_a, g_b = backend.true_conductances(0), backend.true_conductances(1)
    x = rng.uniform(0, 1, (6, 2))
    free, clamped = backend.measure_twin(x, lambda f: f.at_nodes(net.roles.clamps), swap=True)
    held = list(net.roles.sources) + list(net.roles.grounds)
    expected_free = dense_state(net, g_b, held, np.hstack([x, np.zeros((6, 1))]))
    assert np.allclose(free.voltages, expected_free, rtol=1e-10, atol=1e-13)
    signal = contrastive_signal(free, clamped, net.incidence)
    expected = dense_twin_signal(net, g_b, g_a, x, np.zeros((6, 2)), 0.0) - backend._bench.bias
    assert np.allclose(signal, expected, rtol=1e-8, atol=1e-12)


def test_asymmetric_actuators_move_by_their_own_up_and_down_steps() -> None:
    net, g, _ = random_network(3, n=30)
    params = Imperfections(actuator_asymmetry=0.2)
    backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-1), g, imperfections=params, bench_seed=6)
    a = backend._bench.asymmetry[0]
    assert np.abs(a).max() <= 0.2 and np.unique(a).size == a.size
    d = 1e-5 * np.linspace(0.5, 1.5, net.n_edges)
    for _ in range(50):  # up, then down: the controller's books balance ...
        backend.adjust(d)
        backend.adjust(-d)
    assert np.allclose(backend.read_edges().conductances, g, rtol=0, atol=1e-15)
    # ... the edges do not: each up-down pair leaves 2 a_j d_j behind.
    assert np.allclose(backend.true_conductances(), g + 100 * a * d, rtol=1e-9)
    state = backend.state_dict()
    other = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-1), g, imperfections=params, bench_seed=6)
    other.load_state_dict(state)
    assert np.array_equal(other.true_conductances(), backend.true_conductances())


def test_asymmetric_actuators_need_continuous_edges() -> None:
    net, _, _ = random_network(4, n=20)
    table = rheostat_table(129, 10_000.0, 75.0, 1000.0, edges=net.n_edges)
    with pytest.raises(ProtocolError, match="continuous edges"):
        SimulatedBackend(net, SteppedEdges(table), np.full(net.n_edges, 64),
                         imperfections=Imperfections(actuator_asymmetry=0.1))


# -- what the bias does -----------------------------------------------------------------


@pytest.mark.slow
def test_plain_error_floor_grows_in_proportion_to_the_bias() -> None:
    floors = []
    for b in (3e-8, 1e-7):
        exp = build_experiment(bias_protocol("floor", simulator__parameters__learning_bias=b,
                                             training__steps=3000),
                               source="floor", base_dir=BIAS_PROTOCOLS)
        tests: list[float] = []
        Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run(
            [lambda r: tests.append(r.test_error) if r.test_error is not None else None])
        floors.append(np.sqrt(np.median(tests[len(tests) // 2:])))
    assert loglog_slope([3e-8, 1e-7], floors) == pytest.approx(1.0, abs=0.15)


def test_limit_cycle_span_grows_as_tau_squared_at_small_tau() -> None:
    exp = build_experiment(bias_protocol("cycles"), source="cycles", base_dir=BIAS_PROTOCOLS)
    tasks = direction_tasks(exp.task, [[1, 0.25], [0.25, 1]], np.random.default_rng(0))
    run = (exp.backend, tasks, exp.rule, exp.config, exp.batch_rng)
    alternate(*run, tau=2, cycles=1000)
    start = exp.backend.state_dict()
    taus, spans = [2, 4, 8, 16], []
    for tau in taus:
        exp.backend.load_state_dict(start)
        result = alternate(*run, tau=tau, cycles=400 // tau)
        spans.append(limit_cycle(result, last=200 // tau)[0])
    assert loglog_slope(taus, spans) == pytest.approx(2.0, abs=0.2)


@pytest.mark.slow
def test_bias_drift_erases_a_first_task_unless_the_remedy_stops_it() -> None:
    """Training a task the network already solves: with a bias the first task is lost
    while the second's error stays low; with the remedy nothing moves."""
    finals = {}
    for remedy in (False, True):
        changes = {"training__scheme": {"overclamp": {"eta": 10.0, "margin": 1e-3}}} if remedy else {}
        exp = build_experiment(bias_protocol("memory", **changes), source="memory",
                               base_dir=BIAS_PROTOCOLS)
        (second,) = direction_tasks(exp.task, [[0.25, 1]], np.random.default_rng(0))
        r = retention(exp.backend, exp.task, second, exp.rule, exp.config, exp.batch_rng,
                      steps_first=2500, steps_second=3000, every=1500, scheme=exp.scheme)
        finals[remedy] = r
    plain, kept = finals[False], finals[True]
    assert plain.first[-1] > 100 * plain.first[0]  # forgotten
    assert plain.second[-1] < plain.first[-1] / 10  # while the trained task stays fine
    assert np.all(kept.first < 1e-6)  # V^2: within the margin throughout
    assert np.array_equal(kept.states[1], kept.states[-1])  # no update once within the margin
    assert np.abs(kept.states[-1] - kept.states[0]).max() < 1e-3 * np.abs(plain.states[-1] - plain.states[0]).max()


# -- analysis helpers, against independent numbers ---------------------------------------


def test_limit_cycle_reads_the_span_of_the_last_periods() -> None:
    rng = np.random.default_rng(5)
    boundaries = rng.normal(size=(9, 4))  # 4 periods of 2 tasks
    errors = np.arange(16.0)
    result = Alternation(4, boundaries, errors, np.tile(np.repeat([0, 1], 2), 4), np.ones(16, bool))
    d2, mse = limit_cycle(result, last=2)
    steps = boundaries[5:] - boundaries[4:-1]
    assert d2 == pytest.approx(np.mean(np.sum(steps**2, axis=1)))
    assert mse == pytest.approx(np.mean(errors[8:]))


def test_direction_tasks_show_the_same_map_along_one_direction_each() -> None:
    net, _, rng = random_network(6, n=20)
    train, test, amap = linear_map_dataset(rng, 2, 2, 15, 5)
    task = Task("regression", train, test, output_nodes=net.roles.clamps)
    a, b = direction_tasks(task, [[1, 0.5], [0, 2]], rng)
    for t, d in ((a, [1, 0.5]), (b, [0, 1])):
        assert np.allclose(t.train.y, t.train.x @ amap.T)
        assert np.linalg.matrix_rank(t.train.x) == 1
        assert np.allclose(t.train.x[:, 0] * d[1] - t.train.x[:, 1] * d[0], 0)


def test_task_jacobian_matches_finite_differences() -> None:
    net, g, rng = random_network(7, n=25)
    train, test, _ = linear_map_dataset(rng, 2, 2, 3, 1)
    task = Task("regression", train, test, output_nodes=net.roles.clamps)
    jac = task_jacobian(net, g, task)

    def outputs(gg: np.ndarray) -> np.ndarray:
        return task.outputs(SimulatedBackend(net, EDGES, gg).measure(train.x)).ravel()

    for j in (0, 5, net.n_edges - 1):
        h = 1e-4 * g[j]
        up, down = g.copy(), g.copy()
        up[j] += h
        down[j] -= h
        fd = (outputs(up) - outputs(down)) / (2 * h)
        assert np.allclose(jac[:, j], fd, rtol=1e-5, atol=1e-6 * np.abs(jac).max())


def test_null_space_drift_splits_by_what_the_task_sees() -> None:
    net, g, rng = random_network(8, n=25)
    train, test, _ = linear_map_dataset(rng, 2, 2, 10, 1)
    task = Task("regression", train, test, output_nodes=net.roles.clamps)
    jac = task_jacobian(net, g, task)
    _, sing, vt = np.linalg.svd(jac)
    rank = int(np.sum(sing > 1e-6 * sing[0]))
    v_range, v_null = vt[0], vt[rank]
    step = 1e-6
    drift = null_space_drift(net, np.array([g, g + step * v_null, g + step * v_range]), task)
    assert drift.rank == rank == 4  # 2 outputs x 2 sources of a linear map
    assert drift.null_norm[1] == pytest.approx(step) and drift.range_norm[1] < 1e-12
    assert drift.range_norm[2] == pytest.approx(step) and drift.null_norm[2] < 1e-12
    # Independently: moving along the null space leaves the outputs (to first order).
    base = task.outputs(SimulatedBackend(net, EDGES, g).measure(train.x))
    moved_null = task.outputs(SimulatedBackend(net, EDGES, g + step * v_null).measure(train.x))
    moved_range = task.outputs(SimulatedBackend(net, EDGES, g + step * v_range).measure(train.x))
    assert np.abs(moved_null - base).max() < 1e-3 * np.abs(moved_range - base).max()


def test_seed002_curves_load_and_have_the_published_shapes() -> None:
    data = load_seed002(ROOT / "benchmarks" / "data" / "seed002")
    assert sorted(data["D2"]) == sorted(data["MSE"]) == ["exp1", "exp2", "exp3"]
    d2 = data["D2"]["exp1"]
    small = d2[d2[:, 0] < 0.05]
    assert loglog_slope(small[:, 0], small[:, 1]) == pytest.approx(2.0, abs=0.3)
    assert loglog_slope([1, 10, 100], [3, 300, 30000]) == pytest.approx(2.0)
    with pytest.raises(FileNotFoundError):
        load_seed002(Path(__file__).parent)
