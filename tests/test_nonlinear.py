"""Nonlinear edges: device models against the seed's equations, the Newton solver against
ngspice (level-1 MOSFETs and behavioural sources of the rig's model), Jacobians against
finite differences, and one learning window against an ngspice transient."""

from __future__ import annotations

import numpy as np
import pytest

from clln.controller import NetworkError, NodeRoles, delaunay, square_lattice
from clln.controller.network import Network
from clln.simulator.devices import Diode, Level1, SeedTransistor
from clln.simulator.nonlinear import ConvergenceError, NonlinearNetworkSolver, available_lu
from clln.simulator.spice import run_netlist, solve_with_ngspice
from clln.simulator.transistor_backend import LearningWindow
from tests.conftest import require_tool

# -- the seed's equations, transcribed from big network/Experiment2.m ----------------
S_SEED, VT_SEED, SUB_TRANS, SUB_DECADE = 8.5e-4, 0.62, 0.096, 0.1


def seed_calc_current3(a: float, b: float, gate: float) -> float:
    """calc_current3 of the seed (scalar): Ohmic, Sat or Sub by region, sign of a - b."""
    gstar = gate - VT_SEED
    lo, hi = min(a, b), max(a, b)
    if gstar > hi:
        out = S_SEED * (gate - VT_SEED - (a + b) / 2) * abs(a - b)
    elif gstar > lo + SUB_TRANS:
        out = 0.5 * S_SEED * (gate - VT_SEED - lo) ** 2
    else:
        gcrit = lo + SUB_TRANS + VT_SEED
        icrit = 0.5 * S_SEED * (gcrit - VT_SEED - lo) ** 2
        out = icrit * 10 ** ((gate - gcrit) / SUB_DECADE)
    return -out if b > a else out


def test_transistor_is_the_seed_model_where_the_seed_model_is_continuous() -> None:
    rng = np.random.default_rng(0)
    model = SeedTransistor()
    checked = {"ohmic": 0, "sat": 0}
    for _ in range(4000):
        a, b = rng.uniform(0, 1.5, 2)
        gate = rng.uniform(0.3, 3.5)
        vstar, lo, hi = gate - VT_SEED, min(a, b), max(a, b)
        ours = float(model.currents(np.array(a), np.array(b), np.array(gate)).current)
        seed = seed_calc_current3(a, b, gate)
        if vstar - hi > SUB_TRANS:  # ohmic, both channel ends above the join: identical
            assert ours == pytest.approx(seed, rel=1e-12, abs=1e-18)
            checked["ohmic"] += 1
        elif lo + SUB_TRANS < vstar <= hi:  # saturation: up to the reverse subthreshold term
            reverse = 0.5 * S_SEED * SUB_TRANS**2 * 10 ** ((vstar - hi - SUB_TRANS) / SUB_DECADE)
            assert abs(ours - seed) <= reverse * (1 + 1e-9) + 1e-12 * abs(seed)
            checked["sat"] += 1
    assert min(checked.values()) > 300


def test_transistor_current_is_continuous_and_antisymmetric() -> None:
    model = SeedTransistor()
    v = np.linspace(0.0, 1.0, 2001)
    for gate in (0.4, 0.8, 1.2, 2.5):
        i_ab = model.currents(v, np.full_like(v, 0.5), np.full_like(v, gate)).current
        i_ba = model.currents(np.full_like(v, 0.5), v, np.full_like(v, gate)).current
        np.testing.assert_allclose(i_ab, -i_ba, rtol=0, atol=1e-18)
        assert np.all(np.diff(i_ab) > 0)  # monotone: passive, no jump at V_a = V_b
        assert np.max(np.abs(np.diff(i_ab))) < 1e-5


def _derivative_points(model, rng: np.random.Generator, count: int):  # noqa: ANN001, ANN202
    va = rng.uniform(0, 1, count)
    vb = rng.uniform(0, 1, count)
    vg = rng.uniform(0.3, 3.0, count)
    return va, vb, vg


@pytest.mark.parametrize("model", [SeedTransistor(), Level1(), Diode()], ids=lambda m: m.name)
def test_device_derivatives_match_finite_differences(model) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    va, vb, vg = _derivative_points(model, rng, 3000)
    h = 1e-6
    out = model.currents(va, vb, vg)
    fd = [(model.currents(va + h, vb, vg).current - model.currents(va - h, vb, vg).current) / (2 * h),
          (model.currents(va, vb + h, vg).current - model.currents(va, vb - h, vg).current) / (2 * h),
          (model.currents(va, vb, vg + h).current - model.currents(va, vb, vg - h).current) / (2 * h)]
    # keep points at least 10 h from a region boundary (where one-sided slopes differ)
    smooth = np.abs(va - vb) > 10 * h
    if isinstance(model, SeedTransistor):
        for x in (vg - model.v_t - va, vg - model.v_t - vb):
            smooth &= np.abs(x - model.join) > 10 * h
    if isinstance(model, Level1):
        vgst = vg - np.minimum(va, vb) - model.v_to
        smooth &= (np.abs(vgst) > 10 * h) & (np.abs(vgst - np.abs(va - vb)) > 10 * h)
    assert smooth.sum() > 2500
    for analytic, numeric in zip((out.d_va, out.d_vb, out.d_vg), fd):
        scale = np.abs(out.d_va) + np.abs(out.d_vb) + 1e-12
        err = np.abs(analytic - numeric)[smooth] / scale[smooth]
        assert err.max() <= 1e-7


def random_transistor_network(seed: int, n: int, clamps: int = 2) -> tuple[Network, np.random.Generator]:
    rng = np.random.default_rng(seed)
    net = delaunay(n, rng)
    perm = rng.permutation(n)
    roles = NodeRoles(tuple(int(i) for i in perm[:3]), (int(perm[3]),),
                      tuple(int(i) for i in perm[4:4 + clamps]))
    return net.with_roles(roles), rng


def test_network_jacobian_matches_finite_differences() -> None:
    net, rng = random_transistor_network(3, 60)
    for model in (SeedTransistor(), Level1()):
        solver = NonlinearNetworkSolver(net, model)
        gates = rng.uniform(1.0, 3.0, net.n_edges)
        v = rng.uniform(0, 1, (1, net.n_nodes))
        jac = solver.jacobian(v, gates)[0].toarray()
        h = 1e-6
        numeric = np.zeros_like(jac)
        for k, node in enumerate(solver.free_nodes):
            up, down = v.copy(), v.copy()
            up[0, node] += h
            down[0, node] -= h
            diff = (solver.residual(up, gates) - solver.residual(down, gates))[0] / (2 * h)
            numeric[:, k] = diff[solver.free_nodes]
        err = np.abs(jac - numeric).max() / np.abs(jac).max()
        print(f"{model.name}: network Jacobian vs finite differences {err:.2e}")
        assert err <= 1e-7, (model.name, err)
        # not symmetric for transistors
        assert np.abs(jac - jac.T).max() > 1e-3 * np.abs(jac).max()


SIZES = (16, 40, 120, 260, 500)


@pytest.mark.parametrize("model", [SeedTransistor(), Level1()], ids=lambda m: m.name)
def test_operating_points_match_ngspice(model) -> None:  # noqa: ANN001
    """DC operating points of 5 random networks (16-500 nodes), free and clamped, against
    ngspice; max relative node-voltage error <= 1e-6."""
    require_tool("ngspice")
    worst = 0.0
    for k, n in enumerate(SIZES):
        net, rng = random_transistor_network(10 + k, n)
        # level1: gates high enough that no device is cut off (V_GS - V_TO > 0 at 1 V)
        lo = 0.3 if isinstance(model, SeedTransistor) else 1.7
        gates = rng.uniform(lo, 3.0, net.n_edges)
        if isinstance(model, SeedTransistor):  # per-device spread, as a bench draws it
            model_k = model.with_spread(rng, net.n_edges, 0.01, 0.005)
        else:
            model_k = model.with_spread(rng, net.n_edges, 0.01, 0.005)
        sources = rng.uniform(0, 1, (2, 3))
        clamp_shift = rng.uniform(-0.05, 0.05, (2, 2))
        solved = []  # per-sample LUs, and GMRES with one shared LU as preconditioner
        for linear in ("lu", "krylov"):
            solver = NonlinearNetworkSolver(net, model_k, linear=linear)
            free = solver.solve(gates, sources)
            clamps = free.voltages[:, list(net.roles.clamps)] + clamp_shift
            solved.append((free, clamps, solver.solve(gates, sources, clamps, start=free.voltages)))
        for b in range(2):
            ref_free = solve_with_ngspice(net, model_k, gates, sources[b])
            for free, clamps, clamped in solved:
                ref_clamped = solve_with_ngspice(net, model_k, gates, sources[b], clamps[b])
                for ours, ref in ((free.voltages[b], ref_free), (clamped.voltages[b], ref_clamped)):
                    err = np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-3))
                    worst = max(worst, err)
    print(f"{model.name}: max relative node-voltage error vs ngspice {worst:.2e}")
    assert worst <= 1e-6


def test_learning_window_matches_ngspice_transient() -> None:
    """The gate capacitor (2.2 uF) charged through 1 kOhm by the learning circuit, with a
    leaking capacitor, for one window: closed form vs ngspice's transient."""
    require_tool("ngspice")
    window = LearningWindow(capacitance=2.2e-6, resistance=1e3, window=200e-6, leak_resistance=5e4)
    v0, delta = 1.7, 0.05
    u = float(window.drive(np.array(v0), np.array(delta)))
    netlist = "\n".join([
        "* learning window", ".options reltol=1e-9 abstol=1e-15 vntol=1e-12",
        f"VU u 0 DC {u!r}", "R1 u g 1000", "C1 g 0 2.2u IC=" + repr(v0), "RL g 0 50000",
        ".control", "set filetype=ascii", "tran 0.1u 200u 0 0.1u uic", "write {raw} v(g)", ".endc",
        ".end"]) + "\n"
    points = run_netlist(netlist)
    times = np.array([p["time"] for p in points])
    vg = np.array([p["v(g)"] for p in points])
    ours = float(window.apply(np.array(v0), np.array(delta)))
    spice = float(np.interp(200e-6, times, vg))
    moved = spice - v0
    print(f"learning window vs ngspice transient: relative error {abs((ours - v0) - moved) / abs(moved):.2e}")
    assert abs((ours - v0) - moved) <= 1e-4 * abs(moved)
    # and the closed form along the whole window
    mid = LearningWindow(2.2e-6, 1e3, 100e-6, 5e4)
    spice_mid = float(np.interp(100e-6, times, vg))
    tau = 2.2e-6 * 1e3 * 5e4 / (1e3 + 5e4)
    v_inf = u * 5e4 / (1e3 + 5e4)
    assert abs(v_inf + (v0 - v_inf) * np.exp(-100e-6 / tau) - spice_mid) <= 1e-4 * abs(spice_mid - v0)
    assert mid.window == 100e-6


def test_leak_free_window_moves_the_gate_by_the_command() -> None:
    window = LearningWindow()
    gates = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(window.apply(gates, np.array([0.01, -0.02, 0.0])) - gates,
                               [0.01, -0.02, 0.0], atol=1e-14)


def test_warm_started_newton_converges_in_few_iterations() -> None:
    net = square_lattice(6, 6, periodic=True).with_roles(NodeRoles((0, 7), (20,), (14, 29)))
    rng = np.random.default_rng(5)
    solver = NonlinearNetworkSolver(net, SeedTransistor(), chord_ratio=0.0)  # plain Newton
    chord = NonlinearNetworkSolver(net, SeedTransistor())  # factors kept while steps shrink fast
    gates = rng.uniform(1.5, 2.5, net.n_edges)
    sources = rng.uniform(0, 1, (20, 2))
    previous = solver.solve(gates, sources)
    counts = []
    for _ in range(20):
        gates = gates + rng.normal(0, 0.01, net.n_edges)
        free = solver.solve(gates, sources, start=previous.voltages)
        clamps = free.voltages[:, [14, 29]] + 0.02
        clamped = solver.solve(gates, sources, clamps, start=free.voltages)
        counts += [*free.iterations, *clamped.iterations]
        np.testing.assert_allclose(chord.solve(gates, sources, start=previous.voltages).voltages,
                                   free.voltages, atol=1e-9)
        previous = free
    assert np.mean(np.array(counts) <= 5) >= 0.95


def test_shared_factorization_newton_krylov_matches_per_sample_lu() -> None:
    """GMRES preconditioned by one LU shared by the batch converges to the per-sample-LU
    answer along a sequence of training-like steps, keeps its factorization from step to
    step, and still converges in <= 5 Newton iterations from warm starts."""
    net, rng = random_transistor_network(21, 1500)
    roles = net.roles
    lu = NonlinearNetworkSolver(net, SeedTransistor(), linear="lu")
    krylov = NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov")
    assert NonlinearNetworkSolver(net, SeedTransistor()).uses_shared_factorization  # auto at this size
    gates = rng.uniform(1.5, 2.5, net.n_edges)
    sources = rng.uniform(0, 1, (6, 3))
    ref = lu.solve(gates, sources)
    got = krylov.solve(gates, sources)
    np.testing.assert_allclose(got.voltages, ref.voltages, atol=1e-9)
    counts, solves = [], 0
    for _ in range(6):
        gates = gates + rng.normal(0, 0.01, net.n_edges)
        ref_free = lu.solve(gates, sources, start=ref.voltages)
        free = krylov.solve(gates, sources, start=got.voltages)
        clamps = ref_free.voltages[:, list(roles.clamps)] + 0.02
        ref_clamped = lu.solve(gates, sources, clamps, start=ref_free.voltages)
        clamped = krylov.solve(gates, sources, clamps, start=free.voltages)
        for ours, exact in ((free, ref_free), (clamped, ref_clamped)):
            np.testing.assert_allclose(ours.voltages, exact.voltages, atol=1e-9)
            counts += list(ours.iterations)
        solves += 2
        ref, got = ref_free, free
    assert krylov.refactorizations < solves  # the shared LU is kept across steps
    assert krylov.krylov_iterations > 0
    assert np.mean(np.array(counts) <= 5) >= 0.95


def test_extrapolated_warm_start_saves_newton_iterations_and_changes_no_answer() -> None:
    """On a network solved with the shared LU, TransistorBackend starts each sample from
    the extrapolation of its last two states: the same node voltages (within the solver's
    tolerance) in fewer Newton iterations than from the last state alone."""
    from clln.controller import CoupledRule, Task, TrainConfig, Trainer
    from clln.controller.backend import GateEdges
    from clln.controller.task import linear_map_dataset
    from clln.simulator.transistor_backend import TransistorBackend

    net, rng = random_transistor_network(23, 1500)
    roles = net.roles
    train, test, _ = linear_map_dataset(rng, len(roles.sources), len(roles.clamps), 6, 6)
    task = Task("regression", train, test, output_nodes=roles.clamps)
    gates = rng.uniform(1.5, 2.5, net.n_edges)
    runs = {}
    for extrapolate in (False, True):
        backend = TransistorBackend(net, SeedTransistor(), GateEdges(0.0, 5.0), gates,
                                    extrapolate=extrapolate)
        trainer = Trainer(backend, task, CoupledRule(2.0), TrainConfig(steps=8, batch_size=6, eta=0.3),
                          np.random.default_rng(1))
        for index in range(8):
            trainer.step(index)
        last = backend.measure(task.source_voltages(train.x)).voltages
        runs[extrapolate] = (last, np.concatenate(list(backend.iterations)[6:]))  # steps 3 on
    assert NonlinearNetworkSolver(net, SeedTransistor()).uses_shared_factorization
    np.testing.assert_allclose(runs[True][0], runs[False][0], atol=1e-8)
    assert runs[True][1].mean() < runs[False][1].mean()


def test_krylov_falls_back_to_per_sample_lu() -> None:
    """With GMRES cut to one iteration the shared-LU Newton cannot converge; the samples
    are finished by per-sample LUs and the answer is unchanged."""
    net, rng = random_transistor_network(22, 300)
    gates = rng.uniform(0.8, 3.0, net.n_edges)
    sources = rng.uniform(0, 1, (4, 3))
    ref = NonlinearNetworkSolver(net, SeedTransistor(), linear="lu").solve(gates, sources)
    start = ref.voltages + rng.normal(0, 1e-3, ref.voltages.shape)  # warm: LU needs ~3 iterations
    weak = NonlinearNetworkSolver(net, SeedTransistor(), linear="krylov", krylov_max_iter=1, max_iter=5)
    got = weak.solve(gates, sources, start=start)
    np.testing.assert_allclose(got.voltages, ref.voltages, atol=1e-9)
    assert got.iterations.min() > 5  # the shared-LU iterations, then the per-sample LU ones


@pytest.mark.parametrize("chord_ratio", [0.0, 0.3])
def test_samples_grouped_per_lu_give_the_same_bits(chord_ratio: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """However the batch's Jacobians are grouped into block-diagonal LUs (one sample per
    SuperLU call, a few, all; ``auto`` by rows), every sample's voltages, iterations and
    residual are the same bits: the grouping only decides how many library calls a
    Newton iteration takes."""
    import clln.simulator.nonlinear as nonlinear

    net, rng = random_transistor_network(11, 60)
    gates = rng.uniform(1.0, 3.0, net.n_edges)
    sources = rng.uniform(0, 1, (9, 3))
    n_free = NonlinearNetworkSolver(net, SeedTransistor()).n_free
    monkeypatch.setattr(nonlinear, "LU_ROWS", 4 * n_free)  # "auto": groups of 4, 4 and 1
    results = {}
    for blocks in (1, 2, 4, None, "auto"):
        solver = NonlinearNetworkSolver(net, SeedTransistor(), blocks_per_lu=blocks, chord_ratio=chord_ratio,
                                        linear="lu")
        free = solver.solve(gates, sources)
        clamped = solver.solve(gates * 1.01, sources, free.voltages[:, :2] + 0.05, start=free.voltages)
        results[blocks] = (free, clamped, solver.lu_calls)
    reference = results[1]
    for blocks, (free, clamped, calls) in results.items():
        for got, want in ((free, reference[0]), (clamped, reference[1])):
            assert np.array_equal(got.voltages, want.voltages), blocks
            assert np.array_equal(got.iterations, want.iterations), blocks
            assert np.array_equal(got.residual, want.residual), blocks
        if blocks != 1:
            assert calls < reference[2], blocks  # fewer library calls for the same bits


@pytest.mark.parametrize("blocks", [0, -2, "all", 2.5, True])
def test_samples_per_lu_outside_the_allowed_values_is_an_error(blocks: object) -> None:
    net, _ = random_transistor_network(11, 20)
    with pytest.raises(NetworkError, match="blocks_per_lu .* allowed: an integer >= 1, auto, None"):
        NonlinearNetworkSolver(net, SeedTransistor(), blocks_per_lu=blocks)  # type: ignore[arg-type]


@pytest.mark.skipif("umfpack" not in available_lu(), reason="cvxopt (UMFPACK) not installed")
def test_umfpack_and_superlu_agree() -> None:
    net, rng = random_transistor_network(7, 150)
    gates = rng.uniform(0.8, 3.0, net.n_edges)
    sources = rng.uniform(0, 1, (4, 3))
    a = NonlinearNetworkSolver(net, SeedTransistor(), lu="superlu").solve(gates, sources)
    b = NonlinearNetworkSolver(net, SeedTransistor(), lu="umfpack").solve(gates, sources)
    np.testing.assert_allclose(a.voltages, b.voltages, atol=1e-9)


def test_non_converging_sample_is_named() -> None:
    net, rng = random_transistor_network(8, 40)
    solver = NonlinearNetworkSolver(net, SeedTransistor(), max_iter=1)
    sources = rng.uniform(0, 1, (3, 3))
    with pytest.raises(ConvergenceError, match=r"sample \d of the batch \(residual .* A"):
        solver.solve(rng.uniform(0.3, 3.0, net.n_edges), sources)


def test_floating_part_is_an_error() -> None:
    edges = np.array([[0, 1], [1, 2], [3, 4]])
    net = Network(5, edges, roles=NodeRoles((0,), (2,), ()))
    with pytest.raises(NetworkError, match="float"):
        NonlinearNetworkSolver(net, SeedTransistor())


def test_gate_output_jacobian_matches_finite_differences() -> None:
    """The analysis' dO/dV_G (implicit function theorem at the operating point) against
    re-solving the network with each gate moved."""
    from clln.analysis.nonlinear import gate_output_jacobian

    net = square_lattice(4, 4, periodic=True).with_roles(NodeRoles((1, 4), (10,), ()))
    rng = np.random.default_rng(2)
    solver = NonlinearNetworkSolver(net, SeedTransistor())
    gates = rng.uniform(1.0, 2.0, net.n_edges)
    sources = np.array([[0.8, 0.3]])
    v = solver.solve(gates, sources).voltages
    outputs = np.array([15, 5])
    rows = solver.position[outputs]
    ours = gate_output_jacobian(solver, gates, v[0], rows)
    h = 1e-5
    numeric = np.zeros_like(ours)
    for j in range(net.n_edges):
        step = np.zeros(net.n_edges)
        step[j] = h
        up = solver.solve(gates + step, sources, start=v).voltages[0, outputs]
        down = solver.solve(gates - step, sources, start=v).voltages[0, outputs]
        numeric[:, j] = (up - down) / (2 * h)
    assert np.abs(ours - numeric).max() <= 1e-6 * np.abs(numeric).max()
