"""Model-free susceptibility measurement (clln.controller.response) against the
model-based computation, on the simulated backend."""

from __future__ import annotations

import numpy as np
import pytest

from clln.analysis.cost import (
    ResponseArrays,
    cost_hessian,
    output_operator,
    response_arrays,
)
from clln.analysis.susceptibility import (
    GroundedGreen,
    hessian_boundary,
    susceptibility_norms,
    susceptibility_vectors,
)
from clln.controller import ContinuousEdges, NodeRoles, SteppedEdges, delaunay
from clln.controller.errors import NetworkError, UserError
from clln.controller.response import measure_susceptibility, source_responses
from clln.simulator import SimulatedBackend
from clln.simulator.rheostat import rheostat_table


def network(seed: int = 2, n: int = 50, grounds: tuple[int, ...] = (2,)):
    rng = np.random.default_rng(seed)
    net = delaunay(n, rng).with_roles(NodeRoles((0, 1), grounds, (5, 6)))
    return net, rng


@pytest.mark.parametrize("convention", ["ground", "dirichlet"])
def test_measured_vectors_match_the_model_on_continuous_edges(convention: str) -> None:
    net, rng = network()
    g = rng.uniform(1e-3, 5e-3, net.n_edges)
    g[0] = 9.95e-3  # near gmax: the step must go down
    backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), g)
    measured = measure_susceptibility(backend, relative_step=0.2, convention=convention)
    green = GroundedGreen(net, g, hessian_boundary(net, convention))
    model = susceptibility_vectors(green)
    assert measured.held == tuple(hessian_boundary(net, convention))
    assert measured.identifiable.all()
    assert measured.delta[0] < 0 < measured.delta[1]
    assert np.max(np.abs(measured.vectors - model)) < 1e-9 * np.abs(model).max()
    np.testing.assert_allclose(measured.norms, susceptibility_norms(green).norms, rtol=1e-9)
    # every edge was put back and the outputs left safe
    np.testing.assert_array_equal(backend.read_edges().conductances, g)
    assert backend.is_safe
    assert measured.measurements == 1 + 2 * net.n_edges


def test_measured_vectors_match_the_model_on_stepped_edges() -> None:
    net, rng = network(seed=4, n=30)
    table = rheostat_table(129, 10_000.0, 0.0, 1000.0, edges=net.n_edges)
    taps = rng.integers(0, 129, net.n_edges)
    taps[0] = 128  # at the top end: the step must go down
    backend = SimulatedBackend(net, SteppedEdges(table), taps)
    g = backend.read_edges().conductances
    measured = measure_susceptibility(backend, taps=3)
    model = susceptibility_vectors(GroundedGreen(net, g))  # seed convention: ground held
    assert measured.identifiable.all()
    assert np.max(np.abs(measured.vectors - model)) < 1e-9 * np.abs(model).max()
    np.testing.assert_array_equal(backend.read_edges().taps, taps)


def test_measured_responses_give_the_model_cost_hessian() -> None:
    net, rng = network(seed=5)
    g = rng.uniform(1e-3, 5e-3, net.n_edges)
    backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), g)
    measured = measure_susceptibility(backend, convention="dirichlet")
    p_out = output_operator(net.n_nodes, (5, 6))
    measured_arrays = ResponseArrays(
        np.asarray(p_out @ measured.vectors[: net.n_nodes]).T, measured.source_response,
        net.incidence.tocsr(), p_out,
    )
    model_arrays = response_arrays(GroundedGreen(net, g), p_out)
    x = rng.uniform(0, 1, (12, 2))
    y = rng.uniform(0, 0.4, (12, 2))
    np.testing.assert_allclose(measured.source_response, model_arrays.source_response,
                               atol=1e-12)
    h_meas = cost_hessian(measured_arrays, x, y)
    h_model = cost_hessian(model_arrays, x, y)
    assert np.max(np.abs(h_meas - h_model)) < 1e-8 * np.abs(h_model).max()


def test_only_the_requested_edges_are_measured() -> None:
    net, rng = network(seed=6, n=25)
    g = rng.uniform(1e-3, 5e-3, net.n_edges)
    backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), g)
    measured = measure_susceptibility(backend, edges=np.array([3, 7]))
    assert measured.identifiable.sum() == 2 and measured.identifiable[[3, 7]].all()
    assert np.isnan(measured.norms[0]) and measured.measurements == 5


@pytest.mark.parametrize(("grounds", "convention", "needle"), [
    ((2, 3), "dirichlet", "at most one ground"),
    ((2, 3), "ground", "exactly one ground"),
    ((), "ground", "exactly one ground"),
])
def test_ground_count_is_checked(grounds, convention: str, needle: str) -> None:
    net, rng = network(grounds=grounds)
    backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), np.full(net.n_edges, 1e-3))
    with pytest.raises(NetworkError, match=needle) as info:
        measure_susceptibility(backend, convention=convention)
    assert isinstance(info.value, UserError)
    assert backend.n_measurements == 0


def test_source_responses_are_harmonic_measures() -> None:
    net, rng = network(grounds=())
    g = rng.uniform(1e-3, 5e-3, net.n_edges)
    backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), g)
    phi = source_responses(backend, volts=0.5)
    # with no ground the two sources' harmonic measures sum to one everywhere
    np.testing.assert_allclose(phi.sum(axis=1), 1.0, atol=1e-12)
    green = GroundedGreen(net, g, hessian_boundary(net, "dirichlet"))
    np.testing.assert_allclose(phi, green.harmonic(), atol=1e-12)
