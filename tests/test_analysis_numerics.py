"""Susceptibility and cost-Hessian numerics against independent computations:
dense inverses of the bordered Laplacian, dense eigendecompositions, central finite
differences of the Kirchhoff solution."""

from __future__ import annotations

import numpy as np
import pytest

from clln.analysis.cost import (
    bench_green,
    cost_gradient,
    cost_hessian,
    cost_landscape,
    cost_terms,
    gauss_newton_hessian,
    response_arrays,
    stiff_modes,
    task_output_operator,
)
from clln.analysis.susceptibility import (
    GroundedGreen,
    bordered_laplacian,
    extended_incidence,
    hessian_boundary,
    hessian_modes,
    modes_for_fraction,
    relative_conductance,
    susceptibility_norms,
    susceptibility_vectors,
)
from clln.controller import NodeRoles, Task, delaunay
from clln.controller.task import Dataset, linear_map_dataset


def small_task(seed: int = 1, n: int = 36, kind: str = "regression"):
    """A Delaunay network with 2 sources, 1 ground, 2 outputs, and a 2x2 task."""
    rng = np.random.default_rng(seed)
    net = delaunay(n, rng)
    if kind == "allostery":
        # two output edges whose ends are not sources or ground
        picked, taken = [], {0, 1, 2}
        for a, b in net.edges.tolist():
            if a not in taken and b not in taken:
                picked.append((a, b))
                taken |= {a, b}
            if len(picked) == 2:
                break
        net = net.with_roles(NodeRoles((0, 1), (2,), tuple(x for e in picked for x in e)))
        train, test, _ = linear_map_dataset(rng, 2, 2, 8, 4, signed=True)
        task = Task("allostery", train, test, output_edges=tuple(picked))
    else:
        net = net.with_roles(NodeRoles((0, 1), (2,), (5, 6)))
        train, test, _ = linear_map_dataset(rng, 2, 2, 8, 4)
        task = Task("regression", train, test, output_nodes=(5, 6))
    g = rng.uniform(0.5e-3, 3e-3, net.n_edges)
    return net, task, g


def arrays_at(net, task, g):
    return response_arrays(bench_green(net, g), task_output_operator(task, net.n_nodes))


# -- susceptibility --------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["ground", "dirichlet"])
def test_susceptibility_vectors_are_the_inverse_bordered_laplacian(convention: str) -> None:
    net, _, g = small_task()
    held = hessian_boundary(net, convention)
    assert held.tolist() == ([2] if convention == "ground" else [0, 1, 2])
    dense = bordered_laplacian(net, g, held).toarray()
    bhat = extended_incidence(net, held).toarray()
    expected = np.linalg.solve(dense, bhat.T)
    got = susceptibility_vectors(GroundedGreen(net, g, held))
    assert np.max(np.abs(got - expected)) <= 1e-10 * np.max(np.abs(expected))


@pytest.mark.parametrize("convention", ["ground", "dirichlet"])
def test_exact_norms_match_the_eigen_sum_formula(convention: str) -> None:
    net, _, g = small_task(n=60)
    held = hessian_boundary(net, convention)
    exact = susceptibility_norms(GroundedGreen(net, g, held), method="exact", block=7)
    modes = hessian_modes(net, g, held)
    np.testing.assert_allclose(exact.norms, modes.susceptibility(), rtol=1e-9)
    np.testing.assert_allclose(exact.norms**2, exact.node_part**2 + exact.border_part**2,
                               rtol=1e-12)
    # eigenvectors really diagonalise H
    dense = bordered_laplacian(net, g, held).toarray()
    recon = modes.eigenvectors @ np.diag(modes.eigenvalues) @ modes.eigenvectors.T
    assert np.max(np.abs(recon - dense)) <= 1e-12 * np.max(np.abs(dense))


def test_partial_susceptibility_grows_to_the_full_norm() -> None:
    net, _, g = small_task(n=50)
    modes = hessian_modes(net, g)
    n_modes = modes.eigenvalues.size
    partial = modes.partial_susceptibility(range(1, n_modes + 1))
    assert np.all(np.diff(partial, axis=0) >= -1e-12 * partial[-1])
    np.testing.assert_allclose(partial[-1], modes.susceptibility(), rtol=1e-12)
    curve = modes.network_fraction()
    assert curve[-1] == pytest.approx(1.0)
    k = modes_for_fraction(curve, 0.9)
    assert curve[k - 1] >= 0.9 and (k == 1 or curve[k - 2] < 0.9)
    # the first entry of the curve from the per-edge partial sums
    assert curve[0] == pytest.approx(np.linalg.norm(partial[0]) / np.linalg.norm(partial[-1]))


def test_randomized_estimator_is_unbiased_with_honest_error_bars() -> None:
    rng = np.random.default_rng(5)
    net = delaunay(300, rng).with_roles(NodeRoles((0, 1), (2,)))
    g = 10 ** rng.uniform(-4, -2, net.n_edges)
    green = GroundedGreen(net, g)
    exact = susceptibility_norms(green, method="exact")
    est = susceptibility_norms(green, method="randomized", probes=256,
                               rng=np.random.default_rng(0))
    assert est.method == "randomized" and est.probes == 256
    rel = np.abs(est.norms / exact.norms - 1)
    assert np.median(rel) < 0.05
    z = (est.norms - exact.norms) / est.stderr
    assert 0.6 < np.std(z) < 1.6  # error bars are of the right size
    assert abs(np.mean(z)) < 0.3


def test_relative_conductance_by_hand() -> None:
    from clln.controller import Network

    # a path 0-1-2-3 plus a branch 1-4
    net = Network(5, np.array([[0, 1], [1, 2], [2, 3], [1, 4]]))
    g = np.array([1.0, 2.0, 4.0, 8.0])
    rel = relative_conductance(net, g)
    np.testing.assert_allclose(rel, [1.0 / 5.0, 2.0 / (13.0 / 3.0), 4.0 / 2.0, 8.0 / 1.5])


# -- cost derivatives ------------------------------------------------------------------


def finite_difference(f, g: np.ndarray, step: float) -> np.ndarray:
    """Central differences of f (array-valued) over every conductance; last axis = edge."""
    cols = []
    for j in range(g.size):
        e = np.zeros_like(g)
        e[j] = step
        cols.append((f(g + e) - f(g - e)) / (2 * step))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize("kind", ["regression", "allostery"])
def test_jacobian_matches_finite_differences(kind: str) -> None:
    net, task, g = small_task(kind=kind)
    src = task.source_voltages(task.train.x)
    jac = arrays_at(net, task, g).jacobian(src)
    fd = finite_difference(lambda gg: arrays_at(net, task, gg).outputs(src), g, 1e-7 * g.mean())
    assert np.max(np.abs(jac - fd)) < 1e-5 * np.max(np.abs(jac))


@pytest.mark.parametrize("cost", ["mse", "cosine"])
def test_gradient_and_exact_hessian_match_finite_differences(cost: str) -> None:
    net, task, g = small_task(seed=3)
    src = task.source_voltages(task.train.x)
    y = task.train.y if cost == "mse" else np.abs(task.train.y) + 0.1

    def value(gg):
        return np.array(cost_terms(cost, arrays_at(net, task, gg).outputs(src), y)[0])

    def grad(gg):
        return cost_gradient(arrays_at(net, task, gg), src, y, cost)

    step = 1e-7 * g.mean()
    g0 = grad(g)
    assert np.max(np.abs(g0 - finite_difference(value, g, step))) < 1e-5 * np.max(np.abs(g0))
    hess = cost_hessian(arrays_at(net, task, g), src, y, cost, green=bench_green(net, g))
    fd = finite_difference(grad, g, step)
    assert np.max(np.abs(hess - fd)) < 1e-5 * np.max(np.abs(hess))
    assert np.allclose(hess, hess.T, rtol=0, atol=1e-12 * np.abs(hess).max())


def test_gauss_newton_is_exact_at_a_solution_and_has_the_task_rank() -> None:
    net, task, g = small_task(seed=4)
    src = task.source_voltages(task.train.x)
    arrays = arrays_at(net, task, g)
    y_solved = arrays.outputs(src)  # targets the network meets exactly: zero error
    gn = gauss_newton_hessian(arrays, src, y_solved)
    full = cost_hessian(arrays, src, y_solved, green=bench_green(net, g))
    assert np.max(np.abs(full - gn)) < 1e-12 * np.abs(gn).max()
    # and against finite differences of the gradient there
    fd = finite_difference(lambda gg: cost_gradient(arrays_at(net, task, gg), src, y_solved),
                           g, 1e-7 * g.mean())
    assert np.max(np.abs(gn - fd)) < 1e-5 * np.abs(gn).max()
    modes = stiff_modes(gn)
    assert modes.n_stiff == 4  # 2 outputs x 2 sources: the map's four coefficients
    assert modes.gap > 1e6
    assert modes.weight.sum() == pytest.approx(4.0)


def test_cost_derivatives_always_use_the_bench_physics() -> None:
    net, task, g = small_task(seed=7)
    ground_only = response_arrays(GroundedGreen(net, g), task_output_operator(task, net.n_nodes))
    bench = arrays_at(net, task, g)
    np.testing.assert_allclose(ground_only.output_susceptibility, bench.output_susceptibility)
    np.testing.assert_allclose(ground_only.source_response, bench.source_response)


def test_cost_landscape_reports_the_task_cost() -> None:
    net, task, g = small_task(seed=6)
    land = cost_landscape(net, g, task)
    arrays = arrays_at(net, task, g)
    outputs = arrays.outputs(task.source_voltages(task.train.x))
    assert land.cost == pytest.approx(task.cost(outputs, task.train.y), rel=1e-12)
    assert land.exact and land.hessian.shape == (net.n_edges,) * 2
    gn = cost_landscape(net, g, task, Dataset(task.train.x, outputs), exact=False)
    assert gn.cost == pytest.approx(0.0, abs=1e-20)


def test_large_networks_use_the_randomized_estimator_and_skip_dense_modes() -> None:
    from clln.analysis.analyze import RunData, susceptibility_analysis

    rng = np.random.default_rng(8)
    net = delaunay(5200, rng).with_roles(NodeRoles((0, 1), (2,), (5, 6)))
    g = rng.uniform(1e-3, 3e-3, net.n_edges)
    data = RunData("r", "big", "completed", net, "regression", None, g, None)  # type: ignore[arg-type]
    res = susceptibility_analysis(data, None, probes=16)
    assert res.numbers["method"] == "randomized" and res.numbers["probes"] == 16
    assert res.numbers["partial"] is None and res.fraction_curve is None
    assert 0 < res.numbers["median_relative_stderr"] < 0.5
