"""Every sparse factorization against dense linear algebra, the automatic choice and its
fallbacks, the fixed-pattern assembly, and the factored batch power."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import random_network

from clln.controller import ContinuousEdges, Measurement, Network, NetworkError, NodeRoles
from clln.controller.rules import contrastive_signal
from clln.simulator import LinearNetworkSolver, SimulatedBackend, available_solvers, physics

SOLVERS = available_solvers()


def dense_lff(net: Network, g: np.ndarray, solver: LinearNetworkSolver) -> np.ndarray:
    lap = net.laplacian(g).toarray()
    return lap[np.ix_(solver.free, solver.free)]


def test_superlu_is_always_available_and_last() -> None:
    assert SOLVERS[-1] == "superlu"
    assert SOLVERS == [s for s in physics.SOLVERS if s in SOLVERS]


def test_auto_takes_the_best_available() -> None:
    net, _, _ = random_network(0)
    assert LinearNetworkSolver(net).solver_name == SOLVERS[0]


def test_auto_falls_back_when_libraries_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    net, g, rng = random_network(1)
    x = rng.uniform(0, 1, (3, 2))
    reference = LinearNetworkSolver(net, "superlu").solve_dense(g, x)
    monkeypatch.setattr(physics, "_cholmod", None)
    assert "cholmod" not in physics.available_solvers()
    with pytest.raises(NetworkError, match="'cholmod' is not installed.*libsuitesparse-dev"):
        LinearNetworkSolver(net, "cholmod")
    monkeypatch.setattr(physics, "_qdldl", None)
    assert physics.available_solvers() == ["superlu"]
    solver = LinearNetworkSolver(net)
    assert solver.solver_name == "superlu"
    assert np.array_equal(solver.solve_dense(g, x), reference)


def test_unknown_solver_is_a_clear_error() -> None:
    net, _, _ = random_network(0)
    with pytest.raises(NetworkError, match="unknown solver 'mumps'; allowed: auto, cholmod"):
        LinearNetworkSolver(net, "mumps")  # type: ignore[arg-type]


@pytest.mark.parametrize("solver", SOLVERS)
def test_fixed_pattern_holds_the_laplacian(solver: str) -> None:
    net, g, rng = random_network(2, n=70)
    s = LinearNetworkSolver(net, solver)
    dense = dense_lff(net, g, s)
    assert np.array_equal(s.upper_laplacian(g).toarray(), np.triu(dense))
    triangle = s.factorization.triangle
    expected = {"upper": np.triu(dense), "lower": np.tril(dense), "full": dense}[triangle]
    matrix = s.laplacian_ff(g)
    assert np.allclose(matrix.toarray(), expected, rtol=1e-15, atol=0)
    g2 = g * rng.uniform(0.5, 2, g.size)  # new values, same pattern arrays
    again = s.laplacian_ff(g2)
    assert np.shares_memory(again.indices, matrix.indices)
    assert np.shares_memory(again.indptr, matrix.indptr)
    assert np.allclose(again.toarray(), {"upper": np.triu, "lower": np.tril,
                                         "full": lambda a: a}[triangle](dense_lff(net, g2, s)))


@pytest.mark.parametrize("solver", SOLVERS)
def test_parallel_edges_add_up(solver: str) -> None:
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (0, 2), (1, 3)]
    net = Network(4, edges, roles=NodeRoles(sources=(0,), grounds=(3,), clamps=(2,)))
    g = np.array([1.0, 2.0, 3.0, 4.0, 0.5, 0.25, 1.5])
    x, vc = np.array([[1.0], [0.3]]), np.array([[0.2], [0.7]])
    v = LinearNetworkSolver(net, solver).solve_dense(g, x, vc)
    lap = net.laplacian(g).toarray()  # 0-2 appears twice: 0.75 S in total
    assert lap[0, 2] == -0.75
    # node 1 is the only free node: v1 = (g01 v0 + g12 v2 + g13 v3) / (g01 + g12 + g13)
    v1 = (1.0 * x[:, 0] + 2.0 * vc[:, 0]) / (1.0 + 2.0 + 1.5)
    assert np.allclose(v[:, 1], v1, rtol=1e-14)


@pytest.mark.parametrize("solver", SOLVERS)
def test_supernodal_and_simplicial_paths_agree_with_dense(solver: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """CHOLMOD switches to its supernodal factorization on large networks; force it here."""
    net, g, rng = random_network(4, n=150)
    x = rng.uniform(0, 1, (4, 2))
    vc = rng.uniform(0, 1, (4, 2))
    ref_solver = LinearNetworkSolver(net, solver)
    lap = net.laplacian(g).toarray()
    fixed = np.r_[net.roles.sources, net.roles.grounds, net.roles.clamps]
    free = np.setdiff1d(np.arange(net.n_nodes), fixed)
    values = np.hstack([x, np.zeros((4, 1)), vc])
    dense = np.zeros((4, net.n_nodes))
    dense[:, fixed] = values
    dense[:, free] = np.linalg.solve(lap[np.ix_(free, free)], -(lap[np.ix_(free, fixed)] @ values.T)).T
    monkeypatch.setattr(physics, "SUPERNODAL_FROM", 10)
    for s in (ref_solver, LinearNetworkSolver(net, solver)):
        v = s.solve_dense(g, x, vc)
        assert np.linalg.norm(v - dense) / np.linalg.norm(dense) < 1e-10
    if solver == "cholmod":
        assert ref_solver.factorization.mode == "simplicial"  # type: ignore[union-attr]
        assert LinearNetworkSolver(net, solver).factorization.mode == "supernodal"  # type: ignore[union-attr]


@pytest.mark.parametrize("solver", SOLVERS)
def test_same_conductances_give_bit_identical_states(solver: str) -> None:
    net, g, rng = random_network(6)
    s = LinearNetworkSolver(net, solver)
    first = s.update(g).basis.copy()
    s.update(g * 1.5)
    assert np.array_equal(s.update(g).basis, first)
    assert np.array_equal(LinearNetworkSolver(net, solver).update(g).basis, first)


def test_solvers_agree_with_each_other() -> None:
    net, g, rng = random_network(8, n=200, n_clamps=3)
    x = rng.uniform(0, 1, (5, 2))
    vc = rng.uniform(0, 1, (5, 3))
    states = [LinearNetworkSolver(net, s).solve_dense(g, x, vc) for s in SOLVERS]
    for v in states[1:]:
        assert np.linalg.norm(v - states[0]) / np.linalg.norm(states[0]) < 1e-11


@pytest.mark.parametrize("solver", SOLVERS)
def test_degenerate_boundaries(solver: str) -> None:
    # Every node fixed: nothing to factorize.
    net = Network(2, [(0, 1)], roles=NodeRoles(sources=(0,), grounds=(1,)))
    v = LinearNetworkSolver(net, solver).solve_dense(np.array([1e-3]), np.array([[0.7]]))
    assert np.array_equal(v, [[0.7, 0.0]])
    # Only a ground, no sources and no clamps: everything sits at 0 V.
    net = Network(3, [(0, 1), (1, 2)], roles=NodeRoles(grounds=(0,)))
    v = LinearNetworkSolver(net, solver).solve_dense(np.array([1e-3, 2e-3]), np.zeros((2, 0)))
    assert np.array_equal(v, np.zeros((2, 3)))


def test_state_basis_is_read_only_and_row_major() -> None:
    net, g, _ = random_network(9)
    basis = LinearNetworkSolver(net).update(g).basis
    assert basis.flags.c_contiguous and not basis.flags.writeable


def test_assembly_memory_is_proportional_to_edges() -> None:
    for n in (100, 400):
        net, g, _ = random_network(10, n=n)
        pattern = LinearNetworkSolver(net, "superlu")._pattern
        assert pattern.assembly.nnz <= 4 * net.n_edges
        assert pattern.nnz <= net.n_nodes + 2 * net.n_edges


# -- the factored batch power (Measurement internals) --------------------------------


def _dense_power(voltages: np.ndarray, incidence: sp.spmatrix, w: np.ndarray) -> np.ndarray:
    drops = (incidence @ voltages.T).T  # (B, m), independent of the factored path
    return (drops**2 * w[:, None]).sum(axis=0)


def test_batch_power_fast_and_generic_incidence_agree_with_dense() -> None:
    net, g, rng = random_network(12, n=120)
    backend = SimulatedBackend(net, ContinuousEdges(1e-6, 1.0), g)
    x = rng.uniform(0, 1, (9, 2))
    meas = backend.measure(x, rng.uniform(0, 1, (9, 2)))
    w = rng.uniform(0, 2, 9)
    expected = _dense_power(meas.voltages, net.incidence, w)
    fast = meas.batch_power(net.incidence, w)  # plain incidence: two row gathers
    generic = meas.batch_power(sp.csc_matrix(net.incidence), w)  # any sparse matrix
    scaled = meas.batch_power(2.0 * net.incidence, w)  # not an incidence: must not use the fast path
    assert np.allclose(fast, expected, rtol=1e-12, atol=0)
    assert np.allclose(generic, expected, rtol=1e-12, atol=0)
    assert np.allclose(scaled, 4.0 * expected, rtol=1e-12, atol=0)


def test_batch_power_follows_a_new_basis_after_adjust() -> None:
    """The drops of a basis are reused by the free and clamped measurements of one step,
    never across a change of conductances."""
    net, g, rng = random_network(13)
    backend = SimulatedBackend(net, ContinuousEdges(1e-6, 1.0), g)
    x = rng.uniform(0, 1, (5, 2))
    vc = rng.uniform(0, 1, (5, 2))
    for _ in range(3):
        free, clamped = backend.measure(x), backend.measure(x, vc)
        signal = contrastive_signal(free, clamped, net.incidence)
        expected = (_dense_power(free.voltages, net.incidence, np.ones(5))
                    - _dense_power(clamped.voltages, net.incidence, np.ones(5))) / 5
        assert np.allclose(signal, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
        backend.adjust(rng.uniform(-1e-4, 1e-4, net.n_edges))


def test_writeable_basis_is_never_reused_stale() -> None:
    net, g, rng = random_network(14)
    basis = rng.standard_normal((net.n_nodes, 3))
    coefficients = rng.standard_normal((4, 3))
    w = np.ones(4)
    first = Measurement(coefficients, basis).batch_power(net.incidence, w)
    basis *= 2.0  # a caller may change its own writeable array in place
    second = Measurement(coefficients, basis).batch_power(net.incidence, w)
    assert np.allclose(second, 4.0 * first, rtol=1e-12)
    view = basis[:]  # a read-only view of a writeable array is not frozen either
    view.flags.writeable = False
    third = Measurement(coefficients, view).batch_power(net.incidence, w)
    basis *= 0.5
    fourth = Measurement(coefficients, view).batch_power(net.incidence, w)
    assert np.allclose(third, 4.0 * fourth, rtol=1e-12)


def test_batch_power_spans_several_edge_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from clln.controller import _kernels as measurement_module

    net, g, rng = random_network(15, n=300)
    basis = rng.standard_normal((net.n_nodes, 4))
    basis.flags.writeable = False
    coefficients = rng.standard_normal((6, 4))
    w = rng.uniform(0, 1, 6)
    expected = _dense_power(coefficients @ basis.T, net.incidence, w)
    monkeypatch.setattr(measurement_module, "_ROWS_PER_CHUNK", 37)
    assert np.allclose(Measurement(coefficients, basis).batch_power(net.incidence, w), expected,
                       rtol=1e-12)


def test_results_do_not_depend_on_the_bundled_blas_thread_count() -> None:
    """clln.runtime caps numpy's BLAS at one thread for speed; the conductances a run
    reaches must be the same bits with one thread or two (edge chunks above BLAS's
    threading threshold: m > 16384)."""
    from threadpoolctl import threadpool_limits

    from clln.controller import CoupledRule, Task, TrainConfig, Trainer, delaunay
    from clln.controller.task import linear_map_dataset

    finals = []
    for threads in (1, 2):
        rng = np.random.default_rng(0)
        net = delaunay(8000, rng)
        net = net.with_roles(NodeRoles(sources=(0, 1), grounds=(2,), clamps=(3, 4)))
        train, test, _ = linear_map_dataset(rng, 2, 2, 30, 5)
        task = Task("regression", train, test, output_nodes=(3, 4))
        backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2),
                                   rng.uniform(1e-3, 2e-3, net.n_edges))
        assert net.n_edges > 16384
        trainer = Trainer(backend, task, CoupledRule(0.05), TrainConfig(3, 30, 0.1), rng)
        with threadpool_limits(limits={"libscipy_openblas": threads}):
            for step in range(3):
                trainer.step(step)
        finals.append(backend.read_edges().conductances)
    assert np.array_equal(finals[0], finals[1])
