"""The sparse solver against independent dense computations."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dense_solution, random_network

from clln.controller import ContinuousEdges, Measurement, Network, NetworkError, NodeRoles
from clln.simulator import LinearNetworkSolver, SimulatedBackend, available_solvers

SOLVERS = available_solvers()


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed", range(5))
def test_free_state_matches_dense_solve(solver: str, seed: int) -> None:
    net, g, rng = random_network(seed, n=60 + 20 * seed, n_sources=1 + seed % 3,
                                 n_grounds=1 + seed % 2)
    x = rng.uniform(-1, 1, (7, len(net.roles.sources)))
    v = LinearNetworkSolver(net, solver).solve_dense(g, x)
    fixed = np.r_[net.roles.sources, net.roles.grounds]
    ref = dense_solution(net, g, fixed, np.hstack([x, np.zeros((7, len(net.roles.grounds)))]))
    assert np.linalg.norm(v - ref) / np.linalg.norm(ref) < 1e-10


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed", range(4))
def test_clamped_state_matches_second_direct_solve(solver: str, seed: int) -> None:
    """Schur-complement clamped state vs a direct solve with the clamps as Dirichlet nodes."""
    net, g, rng = random_network(seed, n=100, n_clamps=1 + seed)
    roles = net.roles
    x = rng.uniform(0, 1, (5, len(roles.sources)))
    vc = rng.uniform(0, 1, (5, len(roles.clamps)))
    v = LinearNetworkSolver(net, solver).solve_dense(g, x, vc)
    # Independent: a second solver that treats the clamped nodes as sources.
    as_sources = net.with_roles(NodeRoles(roles.sources + roles.clamps, roles.grounds, ()))
    ref = LinearNetworkSolver(as_sources, solver).solve_dense(g, np.hstack([x, vc]))
    assert np.allclose(v[:, roles.clamps], vc, rtol=0, atol=1e-13)
    assert np.linalg.norm(v - ref) / np.linalg.norm(ref) < 1e-10
    fixed = np.r_[roles.sources, roles.grounds, roles.clamps]
    dense = dense_solution(net, g, fixed, np.hstack([x, np.zeros((5, len(roles.grounds))), vc]))
    assert np.linalg.norm(v - dense) / np.linalg.norm(dense) < 1e-10


def test_refactorization_follows_new_conductances() -> None:
    net, g, rng = random_network(7)
    solver = LinearNetworkSolver(net)
    x = rng.uniform(0, 1, (3, 2))
    fixed = np.r_[net.roles.sources, net.roles.grounds]
    for _ in range(3):
        g = g * rng.uniform(0.5, 2.0, g.size)
        v = solver.solve_dense(g, x)
        ref = dense_solution(net, g, fixed, np.hstack([x, np.zeros((3, 1))]))
        assert np.linalg.norm(v - ref) / np.linalg.norm(ref) < 1e-10


def test_kirchhoff_current_law_holds_at_free_nodes() -> None:
    net, g, rng = random_network(11)
    v = LinearNetworkSolver(net).solve_dense(g, rng.uniform(0, 1, (4, 2)))
    currents = (net.laplacian(g) @ v.T).T  # net current injected at each node
    free = np.setdiff1d(np.arange(net.n_nodes), np.r_[net.roles.sources, net.roles.grounds])
    assert np.abs(currents[:, free]).max() < 1e-12 * np.abs(currents).max()


def test_floating_part_is_a_clear_error() -> None:
    # Two triangles, only the first has a source and a ground.
    edges = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)]
    net = Network(6, edges, roles=NodeRoles(sources=(0,), grounds=(1,)))
    with pytest.raises(NetworkError, match="not connected to any source or ground"):
        LinearNetworkSolver(net)


def test_network_without_boundary_is_a_clear_error() -> None:
    with pytest.raises(NetworkError, match="no source or ground"):
        LinearNetworkSolver(Network(3, [(0, 1), (1, 2)]))


@pytest.mark.parametrize("bad", [0.0, -1e-3, np.nan, np.inf])
def test_non_positive_conductance_is_a_clear_error(bad: float) -> None:
    net, g, _ = random_network(3)
    g[4] = bad
    with pytest.raises(NetworkError, match="edges \\[4\\]"):
        LinearNetworkSolver(net).update(g)


def test_factored_and_dense_measurements_agree() -> None:
    net, g, rng = random_network(5)
    backend = SimulatedBackend(net, ContinuousEdges(1e-6, 1.0), g)
    x = rng.uniform(0, 1, (6, 2))
    factored = backend.measure(x, rng.uniform(0, 1, (6, 2)))
    dense = Measurement(factored.voltages.copy())
    w = rng.uniform(0, 2, 6)
    b = net.incidence
    assert np.allclose(factored.batch_power(b, w), dense.batch_power(b, w), rtol=1e-12)
    drops = (b @ factored.voltages.T).T
    assert np.allclose(dense.batch_power(b, w), (drops**2 * w[:, None]).sum(0), rtol=1e-12)
    assert np.allclose(factored.at_nodes([3, 7]), factored.voltages[:, [3, 7]])


def test_continuous_adjust_clips_and_reports() -> None:
    net, g, _ = random_network(2)
    backend = SimulatedBackend(net, ContinuousEdges(1e-4, 1e-2), np.full(net.n_edges, 5e-3))
    cmd = np.zeros(net.n_edges)
    cmd[0], cmd[1], cmd[2] = 1.0, -1.0, 1e-3
    applied = backend.adjust(cmd)
    state = backend.read_edges().conductances
    assert state[0] == 1e-2 and state[1] == 1e-4 and state[2] == pytest.approx(6e-3)
    assert applied.clipped[:3].tolist() == [True, True, False]
    assert applied.commands[0] == pytest.approx(5e-3)
