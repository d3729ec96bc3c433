"""Learning rules: the coupled rule follows the gradient; the stepped rule is bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import random_network

from clln.controller import (
    ContinuousEdges,
    CoupledRule,
    Dataset,
    NodeRoles,
    SteppedEdges,
    SteppedRule,
    Task,
    contrastive_signal,
)
from clln.controller.task import linear_map_dataset
from clln.simulator import SimulatedBackend
from clln.simulator.rheostat import rheostat_table

EDGES = ContinuousEdges(1e-7, 1.0)


def mse_of(net, task: Task, g: np.ndarray, data: Dataset) -> float:
    backend = SimulatedBackend(net, EDGES, g)
    return task.cost(task.outputs(backend.measure(task.source_voltages(data.x))), data.y)


def fd_gradient(net, task: Task, g: np.ndarray, data: Dataset) -> np.ndarray:
    """Central finite differences of the batch MSE with respect to each conductance."""
    grad = np.empty_like(g)
    for j in range(g.size):
        h = 1e-6 * g[j]
        up, down = g.copy(), g.copy()
        up[j] += h
        down[j] -= h
        grad[j] = (mse_of(net, task, up, data) - mse_of(net, task, down, data)) / (2 * h)
    return grad


def coupled_update(net, task: Task, g: np.ndarray, data: Dataset, eta: float) -> np.ndarray:
    backend = SimulatedBackend(net, EDGES, g)
    x = task.source_voltages(data.x)
    free = backend.measure(x)
    clamped = backend.measure(x, task.clamp_voltages(free, data.y, eta))
    return CoupledRule(alpha=1.0).commands(contrastive_signal(free, clamped, net.incidence), eta, EDGES)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_output_update_is_parallel_to_negative_gradient(seed: int) -> None:
    net, g, rng = random_network(seed, n=50, n_clamps=1)
    train, _, _ = linear_map_dataset(rng, 2, 1, 20, 1)
    task = Task("regression", train, train, output_nodes=net.roles.clamps)
    update = coupled_update(net, task, g, train, eta=1e-4)
    assert cosine(update, -fd_gradient(net, task, g, train)) > 0.999


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_several_outputs_update_is_positively_aligned(seed: int) -> None:
    net, g, rng = random_network(seed, n=50, n_clamps=3)
    train, _, _ = linear_map_dataset(rng, 2, 3, 20, 1)
    task = Task("regression", train, train, output_nodes=net.roles.clamps)
    update = coupled_update(net, task, g, train, eta=1e-4)
    assert cosine(update, -fd_gradient(net, task, g, train)) > 0.1


def test_allostery_update_is_positively_aligned_with_negative_gradient() -> None:
    """Both ends of the output edge are voltage-clamped (the drop nudged, its mean kept),
    which also pins the common mode: aligned with the gradient, not parallel to it."""
    net, g, rng = random_network(4, n=50, n_clamps=0)
    taken = set(net.roles.sources + net.roles.grounds)
    edge = next(tuple(int(v) for v in e) for e in net.edges if not set(e.tolist()) & taken)
    net = net.with_roles(NodeRoles(net.roles.sources, net.roles.grounds, edge))
    train, _, _ = linear_map_dataset(rng, 2, 1, 15, 1, signed=True)
    task = Task("allostery", train, train, output_edges=(edge,))
    update = coupled_update(net, task, g, train, eta=1e-4)
    assert cosine(update, -fd_gradient(net, task, g, train)) > 0.5


def test_clamped_outputs_sit_at_the_nudged_values() -> None:
    net, g, rng = random_network(9, n=50, n_clamps=2)
    train, _, _ = linear_map_dataset(rng, 2, 2, 10, 1)
    task = Task("regression", train, train, output_nodes=net.roles.clamps)
    backend = SimulatedBackend(net, EDGES, g)
    free = backend.measure(train.x)
    clamps = task.clamp_voltages(free, train.y, 0.5)
    assert np.allclose(clamps, task.outputs(free) + 0.5 * (train.y - task.outputs(free)))
    assert np.allclose(task.outputs(backend.measure(train.x, clamps)), clamps, atol=1e-13)


def pot_edges(m: int, taps: int = 129) -> SteppedEdges:
    return SteppedEdges(rheostat_table(taps, 10_000.0, 75.0, 1000.0, edges=m))


@pytest.mark.parametrize("step", [1, 3])
def test_stepped_rule_moves_each_edge_by_at_most_its_step(step: int) -> None:
    net, _, rng = random_network(6, n=40)
    edges = pot_edges(net.n_edges)
    taps = rng.integers(0, 129, net.n_edges)
    taps[:3] = [0, 128, 1]  # edges at and near the ends
    backend = SimulatedBackend(net, edges, taps)
    train, _, _ = linear_map_dataset(rng, 2, 2, 20, 1)
    task = Task("regression", train, train, output_nodes=net.roles.clamps)
    rule = SteppedRule(step=step)
    for _ in range(5):
        before = backend.read_edges().taps
        free = backend.measure(train.x)
        clamped = backend.measure(train.x, task.clamp_voltages(free, train.y, 0.5))
        signal = contrastive_signal(free, clamped, net.incidence)
        commands = rule.commands(signal, 0.5, edges)
        assert np.abs(commands).max() <= step
        applied = backend.adjust(commands)
        after = backend.read_edges().taps
        assert np.all(np.abs(after - before) <= step)
        assert np.array_equal(after - before, applied.commands)
        assert np.all((after >= 0) & (after <= 128))
        # Conductance moves the way the signal asks (tap down = conductance up here).
        moved = after != before
        dg = edges.conductance(after) - edges.conductance(before)
        assert np.all(np.sign(dg[moved]) == np.sign(signal[moved]))


def test_stepped_rule_dead_band() -> None:
    edges = pot_edges(4)
    signal = np.array([1e-3, -1e-3, 1e-6, -1e-6])
    cmd = SteppedRule(step=2, threshold=1e-5).commands(signal, 0.1, edges)
    assert cmd.tolist() == [-2, 2, 0, 0]  # conductance falls with the tap on a pot


def test_coupled_rule_on_stepped_edges_goes_to_the_nearest_tap() -> None:
    from clln.controller import EdgeState, ProtocolError

    edges = pot_edges(3)
    taps = np.array([10, 64, 120])
    state = EdgeState(edges.conductance(taps), taps)
    signal = np.array([0.0, 1e-3, -1e-3])
    commands = CoupledRule(0.1).commands(signal, 0.1, edges, state)
    target = state.conductances + signal  # alpha / eta = 1
    # the nearest tap by a plain search over the rheostat formula of pot_edges, tap by tap

    def conductance(k: int) -> float:
        return 1.0 / (1000.0 + 75.0 + k * 10_000.0 / 128)

    best = [min(range(129), key=lambda k, j=j: abs(conductance(k) - float(target[j])))
            for j in range(3)]
    assert commands.tolist() == [b - int(t) for b, t in zip(best, taps)]
    assert commands[0] == 0 and commands[1] < 0 < commands[2]  # tap down = conductance up
    with pytest.raises(ProtocolError):
        CoupledRule(0.1).commands(signal, 0.1, edges)


def test_regression_2x2_learns_three_orders_of_magnitude(protocols_dir: Path) -> None:
    from clln.compose import build_experiment
    from clln.controller import Trainer
    from clln.protocol import load_protocol

    path = protocols_dir / "regression-2x2.toml"
    proto, _ = load_protocol(path)
    exp = build_experiment(proto, source=str(path), base_dir=path.parent)
    assert exp.network.n_nodes >= 64 and exp.config.batch_size == 30
    result = Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run()
    assert result.final_test_error * 1000 <= result.initial_test_error
