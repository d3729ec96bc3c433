"""The compiled one-sample Newton-Krylov path (``clln.simulator._nl_single``) against
independent computations: its triangular solves against SuperLU's own, its GMRES against
numpy's dense solve, and whole solves against per-sample-LU Newton and the batch path."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

pytest.importorskip("numba")

from clln.simulator import _nl_single  # noqa: E402
from tests.test_newton_krylov import drifting_network  # noqa: E402


def test_triangular_solves_match_superlu_with_row_and_column_permutations() -> None:
    """A nonsymmetric sparse matrix factorized with COLAMD and partial pivoting (both
    permutations nontrivial): x = A^-1 b from the factors taken out of SuperLU equals
    SuperLU's own solve, and the returned maximum is max |x|."""
    rng = np.random.default_rng(11)
    n = 300
    a = sp.random(n, n, density=0.02, random_state=rng, format="csc") + sp.diags(rng.uniform(0.5, 2.0, n))
    a = sp.csc_matrix(a + sp.random(n, n, density=0.01, random_state=rng) * 5.0)
    lu = spla.splu(a, permc_spec="COLAMD", diag_pivot_thresh=1.0)
    assert not np.array_equal(lu.perm_r, np.arange(n)) and not np.array_equal(lu.perm_c, np.arange(n))
    factors = _nl_single.triangular_factors(lu)
    b = rng.normal(size=n)
    x = np.empty(n)
    top = _nl_single.lu_solve(factors, b, x, -2.0)
    np.testing.assert_allclose(x, -2.0 * lu.solve(b), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a @ x, -2.0 * b, rtol=0, atol=1e-9)
    assert top == np.abs(x).max()


def edge_jacobian(rng: np.random.Generator, n: int, m: int, held: np.ndarray):  # noqa: ANN201
    """A random network's Jacobian in edge form (d_va > 0, d_vb < 0 per edge; rows -1 for
    the fixed node every tenth edge ends at, and for ``held`` rows), and the same matrix
    assembled densely entry by entry."""
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n
    b[::10] = -1  # to ground
    d_va, d_vb = rng.uniform(0.1, 1.0, (1, m)), -rng.uniform(0.1, 1.0, (1, m))
    row_a = np.where(np.isin(a, held), -1, a).astype(np.int32)
    row_b = np.where(np.isin(b, held), -1, b).astype(np.int32)
    dense = np.zeros((n, n))
    for j in range(m):
        for row, sign in ((row_a[j], 1.0), (row_b[j], -1.0)):
            if row < 0:
                continue
            if row_a[j] >= 0:
                dense[row, row_a[j]] += sign * d_va[0, j]
            if row_b[j] >= 0:
                dense[row, row_b[j]] += sign * d_vb[0, j]
    dense[held, held] = 1.0
    return (d_va, d_vb, row_a, row_b, held.astype(np.int32)), dense


def test_gmres_with_an_inexact_preconditioner_reaches_the_dense_solution() -> None:
    """A random network's Jacobian (one clamped row), its products from the edges'
    derivatives, the LU of a perturbed copy as preconditioner: the answer is numpy's
    dense solve to the tolerance, the reported residual is the true one, GMRES stops at
    the first iteration that meets its tolerance and a tighter tolerance takes more; an
    exact preconditioner takes one."""
    rng = np.random.default_rng(12)
    n = 120
    edges, mat = edge_jacobian(rng, n, 400, np.array([7]))
    rhs = rng.normal(size=n)
    exact = np.linalg.solve(mat, -rhs)
    basis, search, product, step, first = (np.empty((41, n)), np.empty((40, n)), np.empty((1, n)),
                                           np.empty(n), np.empty(n))
    used = {}
    for name, pre in (("perturbed", mat * rng.uniform(0.6, 1.4, mat.shape)), ("exact", mat)):
        factors = _nl_single.triangular_factors(spla.splu(sp.csc_matrix(pre)))
        _nl_single.lu_solve(factors, rhs, first, -1.0)
        for rtol in (1e-4, 1e-11):
            got, reported, size = _nl_single.gmres(*edges, factors, rhs, -1.0, first, rtol, 40, basis, search,
                                                   product, step)
            true = np.linalg.norm(-rhs - mat @ step)
            assert reported <= rtol * np.linalg.norm(rhs) and true == pytest.approx(reported, rel=1e-6, abs=1e-14)
            assert size == np.abs(step).max()
            used[name, rtol] = got
            if got > 1:  # and not one iteration later than needed
                _n, before, _s = _nl_single.gmres(*edges, factors, rhs, -1.0, first, 0.0, got - 1, basis,
                                                  search, product, np.empty(n))
                assert before > rtol * np.linalg.norm(rhs)
        np.testing.assert_allclose(step, exact, rtol=0, atol=1e-9 * np.abs(exact).max())
    assert used["perturbed", 1e-11] > used["perturbed", 1e-4] > 1
    assert used["exact", 1e-4] == 1


def test_one_sample_solves_match_per_sample_lu_and_the_batch_path(monkeypatch) -> None:  # noqa: ANN001
    """A 1,200-node transistor network whose gates drift solve after solve, free and
    clamped: the compiled one-sample path (the batch path is not called) gives the node
    voltages of per-sample-LU Newton, and of the batch path run on the same sequence,
    with the same Newton iterations within one."""
    from clln.controller import NodeRoles
    from clln.simulator.devices import SeedTransistor
    from clln.simulator.nonlinear import NonlinearNetworkSolver

    rng, net, gates, sources = drifting_network()
    roles = net.roles
    net = net.with_roles(NodeRoles(roles.sources, roles.grounds, (int(np.argmax(net.degrees())),)))
    single = NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov")
    batch = NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov")
    exact = NonlinearNetworkSolver(net, SeedTransistor(), linear="lu")
    assert single.single_compiled()
    monkeypatch.setattr(batch, "single_compiled", lambda: False)
    calls = []
    real = NonlinearNetworkSolver._newton_krylov

    def counted(self, *args):  # noqa: ANN001, ANN202
        calls.append(self is single)
        return real(self, *args)

    monkeypatch.setattr(NonlinearNetworkSolver, "_newton_krylov", counted)
    got = single.solve(gates, sources)
    ref = batch.solve(gates, sources)
    for _ in range(12):
        gates = gates + rng.normal(0, 0.01, net.n_edges)
        got = single.solve(gates, sources, start=got.voltages)
        ref = batch.solve(gates, sources, start=ref.voltages)
        lu = exact.solve(gates, sources, start=got.voltages)
        np.testing.assert_allclose(got.voltages, lu.voltages, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got.voltages, ref.voltages, rtol=0, atol=1e-9)
        assert abs(int(got.iterations[0]) - int(ref.iterations[0])) <= 1
        clamps = got.voltages[:, list(net.roles.clamps)] + 0.02
        got_c = single.solve(gates, sources, clamps, start=got.voltages)
        lu_c = exact.solve(gates, sources, clamps, start=got_c.voltages)
        np.testing.assert_allclose(got_c.voltages, lu_c.voltages, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(got_c.voltages[:, list(net.roles.clamps)], clamps)
    assert True not in calls and False in calls
    assert single.lu_seconds > 0 and single.refactorizations >= 2  # free and clamped LUs


def test_warm_start_is_the_extrapolation_and_boundary_of_the_numpy_path() -> None:
    """The one-pass start of a one-sample solve: the state itself, the linear or the
    quadratic extrapolation through the last states (numpy's expressions, to the bit),
    then the sources' and clamps' values at their nodes and 0 V at the grounds."""
    rng = np.random.default_rng(21)
    n = 400
    v1, v0, v2 = rng.normal(size=(3, n))
    sources, grounds, clamps = np.array([3, 50]), np.array([7]), np.array([99, 200])
    source_values, clamp_values = rng.normal(size=2), rng.normal(size=2)
    expected = {0: v1.copy(), 1: v1 * 2.0 - v0, 2: v1 * 3.0 - v0 * 3.0 + v2}
    for order, start in expected.items():
        for held, values in ((clamps, clamp_values), (np.zeros(0, np.int64), np.zeros(0))):
            want = start.copy()
            want[sources], want[grounds], want[held] = source_values, 0.0, values
            out = np.full(n, np.nan)
            _nl_single.warm_start(out, v1, v0, v2, order, sources, source_values, grounds, held, values)
            np.testing.assert_array_equal(out, want)


def test_the_backends_one_sample_path_changes_no_number(monkeypatch) -> None:  # noqa: ANN001
    """A 1,200-node transistor backend measured free and clamped and moved by learning
    windows, one sample at a time: through the one-sample path (warm start in one
    compiled pass, :meth:`solve_one`) and through the general path, every node voltage,
    Newton iteration count and stored warm start is the same to the bit; and the path is
    taken once the sample's history extrapolates."""
    from clln.controller import GateEdges
    from clln.simulator.devices import SeedTransistor
    from clln.simulator.nonlinear import NonlinearNetworkSolver
    from clln.simulator.transistor_backend import TransistorBackend

    _rng, net, gates, sources = drifting_network()
    from clln.controller import NodeRoles

    roles = net.roles
    net = net.with_roles(NodeRoles(roles.sources, roles.grounds, (int(np.argmax(net.degrees())),)))
    used = []
    real = NonlinearNetworkSolver.solve_one

    def counted(self, *args):  # noqa: ANN001, ANN202
        used.append(True)
        return real(self, *args)

    monkeypatch.setattr(NonlinearNetworkSolver, "solve_one", counted)

    def run(general: bool) -> list[np.ndarray]:
        backend = TransistorBackend(net, SeedTransistor(), GateEdges(0.0, 5.0), gates, linear="krylov")
        assert backend.solvers[0].single_compiled()
        if general:
            monkeypatch.setattr(backend, "_solve_one", lambda *args: None)
        moves = np.random.default_rng(5)
        seen = []
        for _ in range(8):
            free = backend.measure(sources).voltages
            clamped = backend.measure(sources, free[:, list(net.roles.clamps)] + 0.02).voltages
            backend.adjust(moves.normal(0, 0.01, net.n_edges))
            seen += [free, clamped, np.concatenate(backend.iterations)]
        seen += [v for store in (backend._warm, backend._warm_clamped) for history in store.values()
                 for _version, v in history]
        return seen

    general = run(general=True)
    assert not used
    one = run(general=False)
    assert len(used) >= 10  # from the third step on, both solves of each step
    assert len(one) == len(general)
    for got, want in zip(one, general):
        np.testing.assert_array_equal(got, want)


def test_a_one_sample_solve_that_does_not_converge_falls_back_like_the_batch_path(monkeypatch) -> None:  # noqa: ANN001
    """With one compiled Newton iteration allowed, the one-sample solve stops short; the
    per-sample LU path finishes it: :meth:`solve_one` gives :meth:`solve`'s voltages and
    iterations, and the answer is per-sample-LU Newton's."""
    from clln.simulator.devices import SeedTransistor
    from clln.simulator.nonlinear import NonlinearNetworkSolver

    _rng, net, gates, sources = drifting_network()
    a = NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov")
    b = NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov")
    start = a.solve(gates, sources).voltages
    b.solve(gates, sources)
    gates = gates + 0.05
    real = _nl_single.newton
    at = list(inspect.signature(real.py_func).parameters).index("settings")

    def one_iteration(*args):  # noqa: ANN002, ANN202
        args = list(args)
        args[at] = (*args[at][:6], 1)  # settings: Newton iterations at most
        return real(*args)

    monkeypatch.setattr(_nl_single, "newton", one_iteration)
    got = a.solve_one(gates, start.copy(), sources, None)
    want = b.solve(gates, sources, start=start)
    np.testing.assert_array_equal(got.voltages, want.voltages)
    np.testing.assert_array_equal(got.iterations, want.iterations)
    assert got.iterations[0] > 1  # the per-sample LU path ran after the one compiled iteration
    exact = NonlinearNetworkSolver(net, SeedTransistor(), linear="lu").solve(gates, sources, start=start)
    np.testing.assert_allclose(got.voltages, exact.voltages, rtol=0, atol=1e-9)


def test_the_backends_iteration_log_is_bounded() -> None:
    """The Newton iterations a transistor backend logs per measurement keep only the last
    65,536 calls, so a long run's memory does not grow with its steps."""
    from clln.controller import GateEdges
    from clln.simulator.devices import SeedTransistor
    from clln.simulator.transistor_backend import TransistorBackend

    _rng, net, gates, sources = drifting_network()
    backend = TransistorBackend(net, SeedTransistor(), GateEdges(0.0, 5.0), gates)
    first = backend.measure(sources)
    assert len(backend.iterations) == 1 and first.voltages.shape == (1, net.n_nodes)
    backend.iterations.extend(np.zeros(1, dtype=np.int64) for _ in range(70_000))
    backend.measure(sources)
    assert len(backend.iterations) == 65536
