"""Every acceptance number of the seed analyses (issue 7), measured in one run.

0. Jammed packings: size, coordination and build time.
1. Numerics: output Jacobian and cost Hessian against central finite differences;
   exact susceptibility against the eigen-sum formula (seed 001, eq. 20).
2. Randomized susceptibility estimator (64 probes) at n = 1e5 against exact
   susceptibility vectors of a random sample of edges.
3. ``protocols/jammed-2x2.toml`` trained and analysed (seed 001): stiff cost modes,
   Spearman(|s_j|, stiff weight), partial susceptibility, relative conductance;
   the same for other seeds of the protocol (robustness table).
4. ``protocols/aging-linear-map.toml`` trained and analysed (seed 000): AIC of the
   relaxation fits, correlation length over training; other seeds too.
5. Model-free susceptibility measured through the NetworkBackend seam on the trained
   jammed network (simulated backend) against the model.

Usage: python benchmarks/seed_analyses.py [--seeds 1,2,3,4,5,6] [--aging-seeds 1,2,3,4]
       [--n-large 100000] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.stats

import clln.compose as compose
import clln.training as training
from clln.analysis.analyze import aging_analysis, load_run, susceptibility_analysis
from clln.analysis.cost import (
    bench_green,
    cost_gradient,
    cost_hessian,
    cost_terms,
    gauss_newton_hessian,
    response_arrays,
    task_output_operator,
)
from clln.analysis.susceptibility import (
    GroundedGreen,
    hessian_boundary,
    hessian_modes,
    susceptibility_norms,
    susceptibility_vectors,
)
from clln.controller import ContinuousEdges, NodeRoles, Task, delaunay, jammed_packing
from clln.controller.response import measure_susceptibility
from clln.controller.store import RunStore
from clln.controller.task import linear_map_dataset
from clln.protocol import load_protocol
from clln.simulator import SimulatedBackend

ROOT = Path(__file__).resolve().parents[1]


def section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def packing_speed() -> None:
    section("0. Jammed packings (500-1000 disks)")
    for n_disks, periodic, z in ((520, False, 4.5), (520, True, 4.5), (520, False, 4.2),
                                 (1000, False, 4.5)):
        t0 = time.perf_counter()
        pack = jammed_packing(n_disks, np.random.default_rng(1), coordination=z, periodic=periodic)
        wall = time.perf_counter() - t0
        net = pack.network
        print(f"{n_disks} disks, {'periodic' if periodic else 'walls'}, target Z {z}: "
              f"{net.n_nodes} nodes, {net.n_edges} edges, Z {pack.coordination:.2f}, "
              f"phi {pack.packing_fraction:.3f}, {wall:.1f} s")


def numerics() -> None:
    section("1. Jacobian, cost Hessian and susceptibility numerics")
    rng = np.random.default_rng(11)
    net = delaunay(60, rng).with_roles(NodeRoles((0, 1), (2,), (5, 6)))
    train, test, _ = linear_map_dataset(rng, 2, 2, 10, 5)
    task = Task("regression", train, test, output_nodes=(5, 6))
    g = rng.uniform(0.5e-3, 3e-3, net.n_edges)
    src = task.source_voltages(train.x)
    op = task_output_operator(task, net.n_nodes)

    def arrays(gg: np.ndarray):
        return response_arrays(bench_green(net, gg), op)

    h = 1e-7 * g.mean()
    steps = [np.eye(net.n_edges)[j] * h for j in range(net.n_edges)]

    def fd(f):
        return np.stack([(f(g + e) - f(g - e)) / (2 * h) for e in steps], axis=-1)

    jac = arrays(g).jacobian(src)
    jac_fd = fd(lambda gg: arrays(gg).outputs(src))
    print(f"output Jacobian vs finite differences: max rel error "
          f"{np.abs(jac - jac_fd).max() / np.abs(jac).max():.2e}")
    grad = cost_gradient(arrays(g), src, train.y)
    grad_fd = fd(lambda gg: np.array(cost_terms('mse', arrays(gg).outputs(src), train.y)[0]))
    print(f"cost gradient vs finite differences: max rel error "
          f"{np.abs(grad - grad_fd).max() / np.abs(grad).max():.2e}")
    hess = cost_hessian(arrays(g), src, train.y, green=bench_green(net, g))
    hess_fd = fd(lambda gg: cost_gradient(arrays(gg), src, train.y))
    print(f"exact cost Hessian vs finite differences of the gradient: max rel error "
          f"{np.abs(hess - hess_fd).max() / np.abs(hess).max():.2e}")
    solved = arrays(g).outputs(src)
    gn = gauss_newton_hessian(arrays(g), src, solved)
    gn_fd = fd(lambda gg: cost_gradient(arrays(gg), src, solved))
    print(f"Gauss-Newton Hessian at a solution vs finite differences: max rel error "
          f"{np.abs(gn - gn_fd).max() / np.abs(gn).max():.2e}")
    big = delaunay(500, rng).with_roles(NodeRoles((0, 1), (2,)))
    gb = 10 ** rng.uniform(-4, -2, big.n_edges)
    exact = susceptibility_norms(GroundedGreen(big, gb), method="exact").norms
    eig = hessian_modes(big, gb).susceptibility()
    print(f"exact |s_j| vs eigen-sum formula (n = 500): max rel difference "
          f"{np.abs(exact / eig - 1).max():.2e}")


def randomized(n: int, probes: int = 64, sample: int = 300) -> None:
    section(f"2. Randomized susceptibility estimator, n = {n}, {probes} probes")
    rng = np.random.default_rng(5)
    t0 = time.perf_counter()
    net = delaunay(n, rng)
    held = rng.choice(n, 3, replace=False)
    net = net.with_roles(NodeRoles(tuple(int(i) for i in held[:2]), (int(held[2]),)))
    g = 10 ** rng.uniform(-4, -2, net.n_edges)  # two decades of conductance
    green = GroundedGreen(net, g)
    t1 = time.perf_counter()
    est = susceptibility_norms(green, method="randomized", probes=probes,
                               rng=np.random.default_rng(0))
    t2 = time.perf_counter()
    edges = rng.choice(net.n_edges, sample, replace=False)
    exact = np.linalg.norm(susceptibility_vectors(green, edges), axis=0)
    t3 = time.perf_counter()
    rel = np.abs(est.norms[edges] / exact - 1)
    z = np.abs(est.norms[edges] - exact) / est.stderr[edges]
    print(f"{n} nodes, {net.n_edges} edges; network + factorization {t1 - t0:.1f} s, "
          f"estimator {t2 - t1:.1f} s, exact check of {sample} random edges {t3 - t2:.1f} s")
    print(f"relative error over the {sample} edges: median {np.median(rel):.3f}, "
          f"90th percentile {np.quantile(rel, 0.9):.3f}; within 2 standard errors: "
          f"{np.mean(z <= 2):.2f}")


def train(protocol: Path, store: RunStore, seed: int | None = None) -> tuple[str, object, float]:
    proto, text = load_protocol(protocol)
    t0 = time.perf_counter()
    exp = compose.build_experiment(proto, source=str(protocol), base_dir=protocol.parent, seed=seed)
    outcome = compose.run_training(exp, store, protocol_text=text, protocol_path=str(protocol))
    return outcome.run_id, exp, time.perf_counter() - t0


def jammed_2x2(store: RunStore, seeds: list[int]) -> str:
    section("3. Seed 001 on protocols/jammed-2x2.toml")
    path = ROOT / "protocols" / "jammed-2x2.toml"
    rows = []
    first = ""
    proto, _ = load_protocol(path)
    for seed in [proto.seed, *[s for s in seeds if s != proto.seed]]:
        run_id, exp, wall = train(path, store, seed)
        data = load_run(store, run_id)
        full = susceptibility_analysis(data, exp.task)  # seed 001's convention: ground held
        res = full.numbers
        cost, part = res["cost"], res["partial"]
        # the bench's convention (sources held too), for comparison
        bench = susceptibility_analysis(data, None, convention="dirichlet")
        rho_bench = float(scipy.stats.spearmanr(bench.norms, full.stiff_weight).statistic)
        k90_bench = bench.numbers["partial"]["fraction_of_modes_for_90pct_network"]
        rows.append((seed, data.network.n_nodes, data.network.n_edges, cost["cost"],
                     cost["n_stiff"], cost["stiff_gap"], cost["smallest_stiff_over_bulk"],
                     cost["spearman_norm_vs_stiff_weight"],
                     part["fraction_of_modes_for_90pct_network"],
                     part["median_fraction_of_modes_for_90pct_per_edge"],
                     res["median_relative_conductance_top10pct"],
                     res["median_relative_conductance_rest"],
                     res["spearman_norm_vs_relative_conductance"], rho_bench, k90_bench, wall))
        if seed == proto.seed:
            first = run_id
            top = cost["top_eigenvalues"][:6]
            print(f"protocol seed {seed}: run {run_id}, {data.network.n_nodes} nodes, "
                  f"{data.network.n_edges} edges, train MSE {cost['cost']:.2e}")
            print(f"cost Hessian (exact, trained state): top eigenvalues "
                  f"{', '.join(f'{v:.3g}' for v in top)}")
            print(f"  stiff modes (largest gap): {cost['n_stiff']}; gap lambda_4/|lambda_5| = "
                  f"{cost['stiff_gap']:.3g}; lambda_4 / median bulk = "
                  f"{cost['smallest_stiff_over_bulk']:.3g}; eigenvalues >= 100x bulk: "
                  f"{cost['n_above_100x_bulk']}")
            before = res["cost_before"]
            print(f"  before training: cost {before['cost']:.2e}, top eigenvalues "
                  f"{', '.join(f'{v:.3g}' for v in before['top_eigenvalues'][:6])}")
            print(f"Spearman(|s_j|, stiff-mode weight) = {cost['spearman_norm_vs_stiff_weight']:.3f}")
            print(f"partial susceptibility: 90% of the network norm with "
                  f"{part['modes_for_90pct_network']} of {part['modes']} modes "
                  f"({100 * part['fraction_of_modes_for_90pct_network']:.1f}%); per edge, median "
                  f"{100 * part['median_fraction_of_modes_for_90pct_per_edge']:.1f}% of the modes")
            print(f"relative conductance g_j / <g adjacent>: median {res['median_relative_conductance_top10pct']:.3f} "
                  f"on the 10% most susceptible edges vs {res['median_relative_conductance_rest']:.3f} "
                  f"on the rest; Spearman(|s_j|, relative g) = "
                  f"{res['spearman_norm_vs_relative_conductance']:.3f}")
            print(f"with the sources held too (dirichlet): Spearman {rho_bench:.3f}, 90% of the "
                  f"network norm with {100 * k90_bench:.1f}% of the modes")
    conv = [r for r in rows if r[3] < 1e-15]
    print(f"\nover {len(rows)} seeds, {len(conv)} trained to MSE < 1e-15; on those: 4 stiff modes on "
          f"{sum(r[4] == 4 for r in conv)}, Spearman >= 0.5 on {sum(r[7] >= 0.5 for r in conv)}, "
          f"90 % of the norm from <= 10 % of the modes on {sum(r[8] <= 0.1 for r in conv)}, lower "
          f"relative conductance on the top 10 % on {sum(r[10] < r[11] for r in conv)}")
    print("robustness over seeds of the same protocol (ground held; last two: dirichlet):")
    print(f"{'seed':>4} {'nodes':>5} {'edges':>5} {'MSE':>9} {'stiff':>5} {'gap':>9} "
          f"{'l4/bulk':>9} {'spearman':>8} {'k90 net':>7} {'k90 edge':>8} {'rel top':>7} "
          f"{'rel rest':>8} {'rho rel':>7} {'rho D':>6} {'k90 D':>6} {'time':>6}")
    for r in rows:
        print(f"{r[0]:>4} {r[1]:>5} {r[2]:>5} {r[3]:>9.2e} {r[4]:>5} {r[5]:>9.2e} {r[6]:>9.2e} "
              f"{r[7]:>8.3f} {r[8]:>7.1%} {r[9]:>8.1%} {r[10]:>7.3f} {r[11]:>8.3f} {r[12]:>7.3f} "
              f"{r[13]:>6.3f} {r[14]:>6.1%} {r[15]:>5.1f}s")
    return first


def aging(store: RunStore, seeds: list[int]) -> None:
    section("4. Seed 000 on protocols/aging-linear-map.toml")
    path = ROOT / "protocols" / "aging-linear-map.toml"
    proto, _ = load_protocol(path)
    rows = []
    for seed in [proto.seed, *[s for s in seeds if s != proto.seed]]:
        run_id, _, wall = train(path, store, seed)
        data = load_run(store, run_id)
        num = aging_analysis(data).numbers
        rel, corr = num["relaxation"], num["correlation"]
        fits = rel["fits"]
        rows.append((seed, data.history.test_error[0], data.history.test_error[-1], rel["best"],
                     rel["aic_exponential_minus_stretched"], fits["stretched"]["params"]["beta"],
                     corr["xi_first"], corr["xi_last"], corr["spearman_xi_vs_step"], wall))
        if seed == proto.seed:
            print(f"protocol seed {seed}: run {run_id}, test MSE {rows[-1][1]:.2e} -> {rows[-1][2]:.2e}")
            for name, fit in fits.items():
                params = ", ".join(f"{k} {v:.3g}" for k, v in fit["params"].items())
                print(f"  {name:<12} AIC {fit['aic']:9.1f}  ({params})")
            print(f"best by AIC: {rel['best']}; AIC(exponential) - AIC(stretched) = "
                  f"{rel['aic_exponential_minus_stretched']:.1f}")
            xi = ", ".join(f"{x:.2f}" for x in corr["xi"])
            print(f"correlation length of g(t) - g(0) at steps {corr['steps'][0]}..{corr['steps'][-1]} "
                  f"(mean edge lengths): {xi}")
            print(f"  xi first {corr['xi_first']:.2f} -> last {corr['xi_last']:.2f}; "
                  f"Spearman(xi, step) = {corr['spearman_xi_vs_step']:.2f}")
    n = len(rows)
    print(f"\nover {n} seeds: AIC(exponential) - AIC(stretched) > 10 on "
          f"{sum(r[4] > 10 for r in rows)}, stretched with beta < 1 on "
          f"{sum(r[4] > 10 and r[5] < 1 for r in rows)}, xi last > xi first on "
          f"{sum(r[7] > r[6] for r in rows)}")
    print("robustness over seeds of the same protocol:")
    print(f"{'seed':>4} {'MSE 0':>9} {'MSE end':>9} {'best':>12} {'dAIC e-s':>9} {'beta':>6} "
          f"{'xi first':>8} {'xi last':>8} {'rho xi':>6} {'time':>6}")
    for r in rows:
        print(f"{r[0]:>4} {r[1]:>9.2e} {r[2]:>9.2e} {r[3]:>12} {r[4]:>9.1f} {r[5]:>6.2f} "
              f"{r[6]:>8.2f} {r[7]:>8.2f} {r[8]:>6.2f} {r[9]:>5.1f}s")


def response(store: RunStore, run_id: str) -> None:
    section("5. Model-free susceptibility through the NetworkBackend seam")
    data = load_run(store, run_id)
    net, g = data.network, data.final
    for convention in ("ground", "dirichlet"):
        backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), g)
        t0 = time.perf_counter()
        measured = measure_susceptibility(backend, convention=convention)
        wall = time.perf_counter() - t0
        model = susceptibility_vectors(GroundedGreen(net, g, hessian_boundary(net, convention)))
        ok = measured.identifiable
        err = np.abs(measured.vectors[:, ok] - model[:, ok]).max() / np.abs(model).max()
        rel = np.abs(measured.norms[ok] / np.linalg.norm(model[:, ok], axis=0) - 1)
        print(f"{convention}: trained jammed network {run_id}: {ok.sum()} of {net.n_edges} edges "
              f"identifiable, {measured.measurements} measure calls, {wall:.1f} s; measured vs "
              f"model s_j: max abs error / max |s| = {err:.2e}, |s_j| max rel error {rel.max():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5,6")
    parser.add_argument("--aging-seeds", default="1,2,3,4,5,6,7,9,10,11,12")
    parser.add_argument("--n-large", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="protocol seeds only, n = 1e4")
    args = parser.parse_args()
    seeds = [] if args.quick else [int(s) for s in args.seeds.split(",") if s]
    aging_seeds = [] if args.quick else [int(s) for s in args.aging_seeds.split(",") if s]
    training.training_report = lambda *a, **k: None  # no PNG report per run here
    t0 = time.perf_counter()
    packing_speed()
    numerics()
    randomized(10_000 if args.quick else args.n_large)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        run_id = jammed_2x2(store, seeds)
        aging(store, aging_seeds)
        response(store, run_id)
        store.close()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
