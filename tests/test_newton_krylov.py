"""The Newton-Krylov pieces of the nonlinear solver against independent computations:
batched GMRES (CGS2 and Givens rotations) against numpy's dense solve and scipy's GMRES."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from clln.simulator.newton_linalg import BlockGmres


def z_matrices(rng: np.random.Generator, k: int, n: int) -> list[np.ndarray]:
    """k dense nonsymmetric column-diagonally-dominant Z-matrices (n x n), like a
    network's Jacobian: random sparse negative off-diagonals, columns summing to > 0."""
    out = []
    for _ in range(k):
        off = -rng.uniform(0.1, 1.0, (n, n)) * (rng.random((n, n)) < 0.1)
        np.fill_diagonal(off, 0.0)
        out.append(off + np.diag(-off.sum(axis=0) + rng.uniform(0.05, 0.5, n)))
    return out


def block(mats: list[np.ndarray]) -> sp.csc_matrix:
    return sp.block_diag([sp.csc_matrix(m) for m in mats], format="csc")


def test_gmres_with_an_inexact_preconditioner_reaches_the_dense_solution() -> None:
    """Each sample's own Jacobian, one preconditioner for all (the LU of their mean):
    the answer matches numpy's dense solve, and the residual norms the rotations report
    are the true ones."""
    rng = np.random.default_rng(3)
    k, n = 4, 60
    mats = z_matrices(rng, k, n)
    rhs = rng.normal(size=(k, n))
    shared = spla.splu(sp.csc_matrix(sum(mats) / k))
    calls = []

    def precondition(rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        calls.append(samples.tolist())
        return shared.solve(np.asfortranarray(rows.T)).T

    step, used, reported = BlockGmres().solve(block(mats), rhs, precondition, rtol=1e-11, max_iter=n)
    exact = np.stack([np.linalg.solve(m, r) for m, r in zip(mats, rhs)])
    np.testing.assert_allclose(step, exact, rtol=0, atol=1e-9 * np.abs(exact).max())
    true = np.linalg.norm(rhs - np.stack([m @ s for m, s in zip(mats, step)]), axis=1)
    assert np.all(reported <= 1e-11 * np.linalg.norm(rhs, axis=1))
    np.testing.assert_allclose(reported, true, rtol=0, atol=1e-12 * np.linalg.norm(rhs, axis=1).max())
    assert 1 < used.min() and used.max() < n and len(calls) == used.max()
    for j, samples in enumerate(calls):  # a sample stops costing solves once it is done
        assert samples == [b for b in range(k) if used[b] > j]


def test_gmres_iterate_is_scipys_after_the_same_number_of_iterations() -> None:
    """Unpreconditioned and stopped after j iterations, every sample's iterate is the
    minimizer of the residual over the same Krylov space as scipy's GMRES (restart j,
    one cycle), and the reported norm is its residual."""
    rng = np.random.default_rng(4)
    k, n = 3, 80
    mats = [m + np.diag(rng.uniform(0, 3, n)) for m in z_matrices(rng, k, n)]
    rhs = rng.normal(size=(k, n))
    for j in (1, 3, 6):
        step, used, reported = BlockGmres().solve(block(mats), rhs, lambda x, _b: x.copy(), rtol=0.0,
                                                  max_iter=j)
        assert np.all(used == j)
        for b in range(k):
            ref, _ = spla.gmres(sp.csc_matrix(mats[b]), rhs[b], restart=j, maxiter=1, rtol=0.0, atol=0.0)
            np.testing.assert_allclose(step[b], ref, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(reported[b], np.linalg.norm(rhs[b] - mats[b] @ ref), rtol=1e-7)


def test_gmres_zero_right_hand_side_and_exact_preconditioner() -> None:
    """A sample with nothing to solve gets a zero step (no division by zero); a sample
    whose preconditioner is its own inverse is solved in one iteration."""
    rng = np.random.default_rng(5)
    n = 40
    mats = z_matrices(rng, 2, n)
    rhs = np.stack([np.zeros(n), rng.normal(size=n)])
    lus = [spla.splu(sp.csc_matrix(m)) for m in mats]

    def own(rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        return np.stack([lus[b].solve(r) for b, r in zip(samples, rows)])

    workspace = BlockGmres()
    step, used, reported = workspace.solve(block(mats), rhs, own, rtol=1e-10, max_iter=10)
    assert np.all(np.isfinite(step)) and np.all(step[0] == 0.0) and reported[0] == 0.0
    np.testing.assert_allclose(step[1], np.linalg.solve(mats[1], rhs[1]), rtol=1e-10, atol=1e-12)
    assert used.tolist() == [1, 1]
    again, _, _ = workspace.solve(block(mats), rhs, own, rtol=1e-10, max_iter=10)  # kept workspace
    np.testing.assert_array_equal(again, step)


def drifting_network():  # noqa: ANN201
    """A 1,200-node Delaunay network of seed transistors (two sources, one ground), its
    start gates, one sample's sources, and the generator that drifts the gates."""
    from clln.controller import NodeRoles, delaunay

    rng = np.random.default_rng(8)
    net = delaunay(1200, rng)
    perm = rng.permutation(net.n_nodes)
    net = net.with_roles(NodeRoles((int(perm[0]), int(perm[1])), (int(perm[2]),), ()))
    return rng, net, rng.uniform(1.5, 2.5, net.n_edges), rng.uniform(0.2, 1.0, (1, 2))


def test_shared_lu_is_renewed_when_its_staleness_costs_a_factorization() -> None:
    """One sample whose gates drift step after step: the shared LU (nearly exact for a
    batch of one) is refactorized by the rent-or-buy rule, not at every solve and not
    never, and every answer is per-sample-LU Newton's (scipy's SuperLU per iteration)."""
    from clln.simulator.devices import SeedTransistor
    from clln.simulator.nonlinear import NonlinearNetworkSolver

    rng, net, gates, sources = drifting_network()
    krylov = NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov", refactor_iterations=30)
    exact = NonlinearNetworkSolver(net, SeedTransistor(), linear="lu")
    got = krylov.solve(gates, sources)
    solves = 24
    for _ in range(solves):
        gates = gates + rng.normal(0, 0.01, net.n_edges)
        got = krylov.solve(gates, sources, start=got.voltages)
        ref = exact.solve(gates, sources, start=got.voltages)
        np.testing.assert_allclose(got.voltages, ref.voltages, rtol=0, atol=1e-9)
    assert 1 < krylov.refactorizations < solves


def test_refactorization_schedule_does_not_depend_on_the_clock(monkeypatch) -> None:  # noqa: ANN001
    """A seeded run must end with the same bits every time: the rent-or-buy rule counts
    operations, so a CPU clock that runs at random (a loaded machine) changes neither
    when the shared LU is renewed nor any answer."""
    import time as _time

    from clln.simulator import nonlinear
    from clln.simulator.devices import SeedTransistor

    def drift(clock_rng: np.random.Generator | None) -> tuple[int, bytes]:
        if clock_rng is not None:
            monkeypatch.setattr(nonlinear.time, "process_time",
                                lambda: _time.perf_counter() * clock_rng.uniform(0.2, 5.0))
        rng, net, gates, sources = drifting_network()
        solver = nonlinear.NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov",
                                                  refactor_iterations=30)
        got = solver.solve(gates, sources)
        for _ in range(16):
            gates = gates + rng.normal(0, 0.01, net.n_edges)
            got = solver.solve(gates, sources, start=got.voltages)
        monkeypatch.undo()
        return solver.refactorizations, got.voltages.tobytes()

    plain = drift(None)
    assert plain[0] > 1  # the rule did renew the LU on the way
    for seed in (1, 2):
        assert drift(np.random.default_rng(seed)) == plain


def test_single_precision_preconditioner_still_gives_double_precision_answers() -> None:
    """GMRES keeps its preconditioned directions (flexible GMRES), so a float32 LU as the
    preconditioner, itself good to ~1e-6, still takes every sample to a 1e-12 residual
    and numpy's dense double-precision answer."""
    from clln.simulator.newton_linalg import SuperLUBlocks

    rng = np.random.default_rng(6)
    k, n = 3, 70
    mats = z_matrices(rng, k, n)
    rhs = rng.normal(size=(k, n))
    library = SuperLUBlocks()
    mean = sp.csc_matrix(sum(mats) / k)
    single = library.factorize(mean, 1, single=True)
    alone = library.solve_rows(single, rhs)
    exact_mean = np.linalg.solve(mean.toarray(), rhs.T).T
    assert alone.dtype == np.float64
    assert 1e-12 < np.abs(alone - exact_mean).max() / np.abs(exact_mean).max() < 1e-4  # float32 accuracy
    step, _, reported = BlockGmres().solve(block(mats), rhs, lambda x, _b: library.solve_rows(single, x),
                                           rtol=1e-12, max_iter=n)
    exact = np.stack([np.linalg.solve(m, r) for m, r in zip(mats, rhs)])
    np.testing.assert_allclose(step, exact, rtol=0, atol=1e-10 * np.abs(exact).max())
    assert np.all(reported <= 1e-12 * np.linalg.norm(rhs, axis=1))


def test_adaptive_gmres_tolerance_saves_iterations_and_changes_no_answer() -> None:
    """GMRES' tolerance loosened to the error each Newton step leaves anyway: from warm
    starts 1e-3 V off, the answers are those of the fixed tolerance and of per-sample-LU
    Newton (scipy's SuperLU) within 1e-10 V, in fewer GMRES iterations (fresh solvers,
    so both use the same shared LU)."""
    from clln.controller import NodeRoles, delaunay
    from clln.simulator.devices import SeedTransistor
    from clln.simulator.nonlinear import NonlinearNetworkSolver

    rng = np.random.default_rng(9)
    net = delaunay(1500, rng)
    perm = rng.permutation(net.n_nodes)
    net = net.with_roles(NodeRoles((int(perm[0]), int(perm[1])), (int(perm[2]),), (int(perm[3]),)))
    gates = rng.uniform(1.5, 2.5, net.n_edges)
    sources = rng.uniform(0.2, 1.0, (6, 2))
    exact = NonlinearNetworkSolver(net, SeedTransistor(), linear="lu")
    answer = exact.solve(gates, sources).voltages
    used = {False: 0, True: 0}
    for _ in range(4):
        start = answer + rng.normal(0, 1e-3, answer.shape)
        for flag in used:
            solver = NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov", adaptive_rtol=flag)
            got = solver.solve(gates, sources, start=start).voltages
            np.testing.assert_allclose(got, answer, rtol=0, atol=1e-10)
            used[flag] += solver.krylov_iterations
    assert used[True] < used[False]


def test_warm_start_extrapolation_is_exact_for_quadratic_trajectories() -> None:
    """The warm start of a sample from its states at the last gate versions: exact for
    node voltages quadratic in the version (three states), for linear ones with two, and
    none when a version is missing."""
    from clln.controller import NodeRoles, delaunay
    from clln.controller.backend import GateEdges
    from clln.simulator.devices import SeedTransistor
    from clln.simulator.transistor_backend import TransistorBackend

    rng = np.random.default_rng(10)
    net = delaunay(40, rng).with_roles(NodeRoles((0, 1), (2,), (3,)))
    backend = TransistorBackend(net, SeedTransistor(), GateEdges(0.0, 5.0),
                                rng.uniform(1.5, 2.5, net.n_edges), extrapolate=True)
    a, b, c = (rng.normal(size=net.n_nodes) for _ in range(3))

    def at(version: int, curved: bool = True) -> np.ndarray:
        return a + b * version + (c * version**2 if curved else 0.0)

    def ahead(history: list[tuple[int, np.ndarray]]) -> np.ndarray | None:
        out = np.full(net.n_nodes, np.nan)
        return out if backend._extrapolated(history, out, np.empty(net.n_nodes)) else None

    backend._version = 7
    three = [(6, at(6)), (5, at(5)), (4, at(4))]
    np.testing.assert_allclose(ahead(three), at(7), rtol=1e-12, atol=1e-9)
    two = [(6, at(6, False)), (5, at(5, False))]
    np.testing.assert_allclose(ahead(two), at(7, False), rtol=1e-12, atol=1e-12)
    gap = [(6, at(6)), (5, at(5)), (3, at(3))]  # the third is two windows older: linear only
    np.testing.assert_allclose(ahead(gap), 2 * at(6) - at(5), rtol=0, atol=0)
    assert ahead([(6, at(6)), (4, at(4))]) is None
