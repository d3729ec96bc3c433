"""The compiled kernels of the Newton solve (clln.simulator._nl_kernels) against the numpy
device model and scipy's sparse products: residual, edge derivatives and Jacobian values
on random inputs that cover the transistor's ohmic, saturation and subthreshold regions
in both directions, with per-device spread, a parallel conductance, fixed resistors and
clamped nodes; and the solver with and without them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from clln.controller import NodeRoles, delaunay
from clln.controller.network import Network
from clln.simulator.devices import Level1, SeedTransistor
from clln.simulator.network_equations import Derivatives
from clln.simulator.nonlinear import NonlinearNetworkSolver, with_resistors


def _network(seed: int, n: int) -> tuple[Network, np.random.Generator]:
    rng = np.random.default_rng(seed)
    net = delaunay(n, rng)
    perm = rng.permutation(n)
    roles = NodeRoles(tuple(int(i) for i in perm[:2]), (int(perm[2]),), tuple(int(i) for i in perm[3:6]))
    return net.with_roles(roles), rng


def _numpy_reference(solver: NonlinearNetworkSolver, v: np.ndarray, gates: np.ndarray, clamped: bool):  # noqa: ANN202
    """Residual, derivatives and Jacobian values computed independently of the kernels:
    the numpy model's currents, the incidence matrix product B^T I, and the Jacobian
    assembled as B_F^T diag(dI/dV) (per sample, as dense matrices)."""
    state = solver.edge_state(v, gates)
    inc = solver.network.incidence.toarray()  # (m, n), +1 at a, -1 at b
    free = solver.free_nodes
    residual = (state.current @ inc)[:, free]
    n = solver.network.n_nodes
    a, b = solver.network.edges[:, 0], solver.network.edges[:, 1]
    jacobians = []
    for k in range(v.shape[0]):
        dI = np.zeros((solver.network.n_edges, n))  # dI_j / dv_node
        np.add.at(dI, (np.arange(a.size), a), state.d_va[k])
        np.add.at(dI, (np.arange(b.size), b), state.d_vb[k])
        jac = (inc.T @ dI)[np.ix_(free, free)]
        if clamped:
            rows = solver.position[solver.clamps]
            jac[rows, :] = 0.0
            jac[:, rows] = 0.0
            jac[rows, rows] = 1.0
        jacobians.append(jac)
    if clamped:
        residual[:, solver.position[solver.clamps]] = 0.0
    return residual, state, np.array(jacobians)


def _dense(solver: NonlinearNetworkSolver, values: np.ndarray) -> np.ndarray:
    pat = solver._pattern
    out = np.zeros((values.shape[0], solver.n_free, solver.n_free))
    for k, row in enumerate(values):
        out[k, pat.row, pat.col] = row
    return out


def _regions(model: SeedTransistor, va: np.ndarray, vb: np.ndarray, vg: np.ndarray) -> dict[str, int]:
    """How many (sample, edge) values fall in each region of the seed's model, by direction."""
    v_star = vg - model.v_t
    lo, hi = np.minimum(va, vb), np.maximum(va, vb)
    ohmic = v_star - hi > model.join
    sub = v_star - lo <= model.join
    forward = va > vb
    return {f"{name}_{d}": int(np.count_nonzero(mask & (forward if d == "fwd" else ~forward)))
            for name, mask in (("ohmic", ohmic), ("sat", ~ohmic & ~sub), ("sub", sub))
            for d in ("fwd", "rev")}


def _random_point(rng: np.random.Generator, net: Network, count: int) -> tuple[np.ndarray, np.ndarray]:
    v = rng.uniform(0.0, 1.5, (count, net.n_nodes))
    gates = rng.uniform(0.4, 2.8, net.n_edges)  # V* from below 0 to above every node
    return v, gates


@pytest.mark.parametrize("case", ["nominal", "spread", "g_off", "resistors"])
def test_compiled_kernels_match_the_numpy_model_to_round_off(case: str) -> None:
    net, rng = _network(7, 150)
    model = SeedTransistor(g_off=1e-6 if case == "g_off" else 0.0)
    fixed = mask = None
    if case == "spread":
        model = model.with_spread(rng, net.n_edges, 0.02, 0.05)
    if case == "resistors":  # two fixed resistors beside the transistors (device mask)
        net, fixed, mask = with_resistors(net, [(0, 5, 1 / 500.0), (9, 3, 1 / 1000.0)])
    solver = NonlinearNetworkSolver(net, model, linear="lu", fixed_conductance=fixed, device_mask=mask)
    assert not solver.compiled  # a small network: numpy unless asked
    v, gates = _random_point(rng, net, 6)
    if mask is not None:
        gates[~mask] = 0.0
    a, b = net.edges[:, 0], net.edges[:, 1]
    regions = _regions(model, v[:, a], v[:, b], gates[None, :])
    assert min(regions.values()) >= 50, regions  # every region, both directions
    for clamped in (False, True):
        ref_r, ref_state, ref_jac = _numpy_reference(solver, v, gates, clamped)
        solver.compiled = True
        r, state = solver._free_residual_state(v, gates, clamped)
        values = solver._values(state, clamped)
        solver.compiled = False
        scale_i = np.abs(ref_state.current).max()
        np.testing.assert_allclose(r, ref_r, rtol=0, atol=1e-13 * scale_i)
        for got, want in ((state.d_va, ref_state.d_va), (state.d_vb, ref_state.d_vb)):
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-25)
        np.testing.assert_allclose(_dense(solver, values), ref_jac, rtol=0, atol=1e-13 * np.abs(ref_jac).max())


@pytest.mark.parametrize("case", ["nominal", "resistors"])
def test_edge_jacobian_products_match_the_dense_jacobians(case: str) -> None:
    """GMRES' operator on the compiled path (products straight from the edges'
    derivatives, no values assembled) against the dense Jacobians of the numpy model
    times random vectors, free and clamped (a clamped node's row and column are the
    identity's), for all samples and for a subset of them."""
    net, rng = _network(12, 200)
    fixed = mask = None
    if case == "resistors":
        net, fixed, mask = with_resistors(net, [(0, 5, 1 / 500.0), (9, 3, 1 / 1000.0)])
    solver = NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov", fixed_conductance=fixed,
                                    device_mask=mask)
    v, gates = _random_point(rng, net, 5)
    if mask is not None:
        gates[~mask] = 0.0
    for clamped in (False, True):
        _, _, ref_jac = _numpy_reference(solver, v, gates, clamped)
        _, state = solver._free_residual_state(v, gates, clamped)
        for rows in (np.arange(5), np.array([1, 4])):
            operator = solver._block_matrix(solver._jacobians(Derivatives(state.d_va[rows], state.d_vb[rows]),
                                                              clamped))
            x = rng.standard_normal((rows.size, solver.n_free))
            want = np.einsum("kij,kj->ki", ref_jac[rows], x)
            got = (operator @ x.ravel()).reshape(rows.size, -1)
            assert operator.shape == (x.size, x.size)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_compiled_kernels_are_bit_identical_to_numpy_above_threshold() -> None:
    """Where no channel end is subthreshold (no power of ten), the kernels add the same
    terms in the same order as the numpy model and scipy's products: the same bits."""
    net, rng = _network(8, 300)
    solver = NonlinearNetworkSolver(net, SeedTransistor().with_spread(rng, net.n_edges, 0.01, 0.005),
                                    linear="lu")
    v = rng.uniform(0.0, 1.0, (5, net.n_nodes))
    gates = rng.uniform(1.8, 3.0, net.n_edges)  # V* - V_node > join everywhere
    for clamped in (False, True):
        ref_r, ref_state = solver._free_residual_state(v, gates, clamped)
        ref_values = solver._values(ref_state, clamped)
        solver.compiled = True
        r, state = solver._free_residual_state(v, gates, clamped)
        values = solver._values(state, clamped)
        solver.compiled = False
        assert np.array_equal(r, ref_r)
        assert np.array_equal(state.d_va, ref_state.d_va) and np.array_equal(state.d_vb, ref_state.d_vb)
        assert np.array_equal(values, ref_values)


def test_compiled_kernels_propagate_nan_as_numpy_does() -> None:
    net, rng = _network(11, 60)
    solver = NonlinearNetworkSolver(net, SeedTransistor(), linear="lu")
    v, gates = _random_point(rng, net, 2)
    v[1, solver.free_nodes[0]] = np.nan
    ref_r, _ = solver._free_residual_state(v, gates, False)
    solver.compiled = True
    r, _ = solver._free_residual_state(v, gates, False)
    assert np.array_equal(np.isnan(r), np.isnan(ref_r)) and np.isnan(r[1]).any() and not np.isnan(r[0]).any()


def test_shared_lu_solver_uses_the_kernels_and_agrees_with_numpy() -> None:
    """A network on the shared-LU path solves with the compiled kernels; the same solve
    in numpy gives the same node voltages within the solver's tolerance, free and clamped."""
    net, rng = _network(9, 1300)
    solver = NonlinearNetworkSolver(net, SeedTransistor())
    assert solver.uses_shared_factorization and solver.compiled
    plain = NonlinearNetworkSolver(net, SeedTransistor())
    plain.compiled = False
    gates = rng.uniform(1.0, 2.5, net.n_edges)
    sources = rng.uniform(0, 1, (4, 2))
    got, ref = solver.solve(gates, sources), plain.solve(gates, sources)
    np.testing.assert_allclose(got.voltages, ref.voltages, rtol=0, atol=1e-9)
    clamps = ref.voltages[:, list(net.roles.clamps)] + 0.01
    got_c = solver.solve(gates, sources, clamps, start=got.voltages)
    ref_c = plain.solve(gates, sources, clamps, start=ref.voltages)
    np.testing.assert_allclose(got_c.voltages, ref_c.voltages, rtol=0, atol=1e-9)
    solver.linear = "lu"  # per-sample LUs (the shared path's fallback) with the kernels
    assert solver.compiled and not solver.uses_shared_factorization
    got_lu = solver.solve(gates, sources, clamps)
    np.testing.assert_allclose(got_lu.voltages, ref_c.voltages, rtol=0, atol=1e-9)


def test_models_without_kernels_stay_in_numpy() -> None:
    net, rng = _network(10, 80)
    solver = NonlinearNetworkSolver(net, Level1(), linear="krylov")
    assert solver.compiled and solver._kernels() is None
    v, gates = _random_point(rng, net, 2)
    r, state = solver._free_residual_state(v, gates, False)
    assert state.current.shape == (2, net.n_edges)  # the numpy model's full edge state


def test_small_networks_never_load_the_compiler() -> None:
    """transistor-16-sized networks (per-sample LUs) solve without importing numba, so
    the command line and small runs pay no compile or import time."""
    code = (
        "import sys, numpy as np\n"
        "from clln.controller import NodeRoles, square_lattice\n"
        "from clln.simulator.devices import SeedTransistor\n"
        "from clln.simulator.nonlinear import NonlinearNetworkSolver\n"
        "net = square_lattice(4, 4, periodic=True).with_roles(NodeRoles((0, 5), (10,), (15,)))\n"
        "s = NonlinearNetworkSolver(net, SeedTransistor())\n"
        "s.solve(np.full(net.n_edges, 2.0), np.array([[0.2, 0.8]]))\n"
        "assert not s.compiled and 'numba' not in sys.modules, sorted(m for m in sys.modules if 'numba' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)



def test_compiled_batch_power_matches_the_dense_sum_and_small_benches_keep_measurement() -> None:
    """The coupled rule's per-edge batch sum on a large network's measurement (compiled
    kernel) against sum_b w_b (v_a - v_b)^2 from the dense incidence matrix, with weights
    and per-edge offsets; a small network's bench returns the plain Measurement."""
    from clln.controller import GateEdges, Measurement
    from clln.simulator.transistor_backend import CompiledMeasurement, TransistorBackend

    net, rng = _network(11, 1300)
    backend = TransistorBackend(net, SeedTransistor(), GateEdges(0.0, 5.0), rng.uniform(1.5, 2.5, net.n_edges))
    got = backend.measure(rng.uniform(0, 1, (3, 2)))
    assert isinstance(got, CompiledMeasurement)
    w = np.array([0.5, 2.0, 1.0])
    drops = got.voltages @ net.incidence.toarray().T  # (B, m)
    np.testing.assert_allclose(got.batch_power(net.incidence, w), w @ drops**2, rtol=1e-13, atol=0)
    offsets = rng.uniform(0, 1e-3, net.n_edges)
    shifted = CompiledMeasurement(got.voltages, edge_offsets=offsets)
    np.testing.assert_allclose(shifted.batch_power(net.incidence, w), w @ drops**2 + 3.5 * offsets,
                               rtol=1e-13, atol=0)
    # another incidence (not one +1 and one -1 per row): the sparse product, as before
    scaled = (2.0 * net.incidence).tocsr()
    np.testing.assert_allclose(got.batch_power(scaled, w), 4.0 * (w @ drops**2), rtol=1e-13, atol=0)
    small, _ = _network(12, 30)
    plain = TransistorBackend(small, SeedTransistor(), GateEdges(0.0, 5.0), np.full(small.n_edges, 2.0))
    assert type(plain.measure(np.array([[0.2, 0.8]]))) is Measurement


def test_compiled_bookkeeping_kernels_match_numpy_bit_for_bit() -> None:
    """The Newton-Krylov line search's move along the step, the converged samples' last
    step, the rows' max |x| and the warm-start extrapolation on the compiled path give
    the bits of the numpy expressions they replace (fancy-indexed updates, |x|.max)."""
    from clln.simulator import _nl_kernels
    from clln.simulator.nonlinear import _max_abs

    rng = np.random.default_rng(5)
    v = rng.standard_normal((4, 50))
    free = np.sort(rng.choice(50, 30, replace=False))
    step = rng.standard_normal((4, 30))
    scale = np.array([1.0, 0.5, 0.25, 1.0])
    want = v.copy()
    want[:, free] = want[:, free] + scale[:, None] * step
    position = np.full(50, -1)
    position[free] = rng.permutation(30)  # each free node's unknown, in another order
    step_by_unknown = np.empty_like(step)
    step_by_unknown[:, position[free]] = step
    got, base = v.copy(), np.empty((4, 50))
    _nl_kernels.move_free(got, position, base, step_by_unknown, scale, True)
    assert np.array_equal(got, want) and np.array_equal(base, v)
    _nl_kernels.move_free(got, position, base, step_by_unknown, 0.5 * scale, False)  # a halving: from base
    want[:, free] = v[:, free] + (0.5 * scale)[:, None] * step
    assert np.array_equal(got, want)
    rows = np.array([3, 1])
    want, got = v.copy(), v.copy()
    want[np.ix_(rows, free)] += step[:2]
    _nl_kernels.add_free(got, rows, position, step_by_unknown[:2])
    assert np.array_equal(got, want)
    x = rng.standard_normal((3, 40))
    x[1] = -np.abs(x[1])
    x[2, 7] = np.nan
    kernels = (_nl_kernels, None)
    np.testing.assert_array_equal(_max_abs(x, kernels), np.abs(x).max(axis=1))  # NaN where numpy has it
    v1, v0, v2 = rng.standard_normal((3, 64))
    out = np.empty(64)
    _nl_kernels.extrapolate(v1, v0, v2, True, out)
    assert np.array_equal(out, 3.0 * v1 - 3.0 * v0 + v2)
    _nl_kernels.extrapolate(v1, v0, v1, False, out)
    assert np.array_equal(out, 2.0 * v1 - v0)


@pytest.mark.parametrize("leak", [0.0, 5e3])
def test_compiled_learning_window_gives_the_numpy_windows_bits(leak: float) -> None:
    """A network on the compiled path applies a learning window (targets, clipping to the
    gate bounds, the RC charge with and without a leak, twin devices) with the same bits
    as the numpy path of the same bench on the per-sample-LU path."""
    from clln.controller import GateEdges
    from clln.simulator.imperfections import Imperfections
    from clln.simulator.transistor_backend import TransistorBackend

    net, rng = _network(13, 120)
    initial = rng.uniform(0.5, 4.5, net.n_edges)
    params = Imperfections(gate_leak_resistance=leak, twin=True)
    benches = [TransistorBackend(net, SeedTransistor(), GateEdges(0.0, 5.0), initial, imperfections=params,
                                 linear=linear) for linear in ("krylov", "lu")]
    assert benches[0].solvers[0].compiled and not benches[1].solvers[0].compiled
    for k in range(3):
        commands = rng.normal(0.0, 0.8, net.n_edges)  # some beyond the bounds: clipped
        commands[: 5 * k] = 0.0
        applied = [bench.adjust(commands) for bench in benches]
        assert np.array_equal(applied[0].commands, applied[1].commands)
        assert np.array_equal(applied[0].clipped, applied[1].clipped) and applied[0].clipped.any()
        assert np.array_equal(benches[0]._gates, benches[1]._gates)
        assert np.array_equal(benches[0].read_edges().conductances, benches[1].read_edges().conductances)
    still = [bench.adjust(np.zeros(net.n_edges)) for bench in benches]  # nothing moves
    assert not still[0].commands.any() and benches[0]._version == benches[1]._version


@pytest.mark.parametrize("count", [1, 2, 5])
def test_compiled_contrastive_signal_matches_the_sparse_products(count: int) -> None:
    """The coupled rule's signal of two compiled measurements in one call: the bits of
    their two batch powers' difference, and the sparse incidence products of the plain
    measurements to round-off, with sample weights."""
    from clln.controller import Measurement
    from clln.controller.rules import contrastive_signal
    from clln.simulator.transistor_backend import CompiledMeasurement

    net, rng = _network(14, 300)
    vf, vc = rng.uniform(0, 1, (2, count, net.n_nodes))
    w = rng.uniform(0.5, 2.0, count)
    free, clamped = CompiledMeasurement(vf), CompiledMeasurement(vc)
    inc = net.incidence
    got = contrastive_signal(free, clamped, inc, w)
    assert np.array_equal(got, (free.batch_power(inc, w) - clamped.batch_power(inc, w)) / w.sum())
    dense = inc.toarray()
    want = (np.einsum("k,kj->j", w, (vf @ dense.T) ** 2) - np.einsum("k,kj->j", w, (vc @ dense.T) ** 2)) / w.sum()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    plain = contrastive_signal(Measurement(vf), Measurement(vc), inc, w)
    np.testing.assert_allclose(got, plain, rtol=1e-12, atol=1e-15)
