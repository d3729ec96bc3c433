"""Training-step speed of transistor networks against the bare Newton-LU cost and the
field's approach (ngspice solving every sample's operating points separately).

For Delaunay networks pruned to mean coordination 4.5 (m = 2.25 n edges; 1 ground,
2 sources, 2 output nodes), seed transistor edges with gates uniform in [1.5, 2.5] V,
this prints one table per batch size of ``--batch`` (default 10 and 1: one sample per
step, as the seed's rig and the field's per-sample update work), per network size,
measured in one run:

* ``step``: clln's training step on TransistorBackend (free and clamped batch solves by
  Newton, each warm started, the local gate update, one learning window; a batch of one
  sample takes the solver's compiled one-sample path), median over
  ``--repeats`` steps after four untimed ones (the cold start from a flat guess, the
  kernels' first calls, which compile them where numba's cache is not yet written, and
  the history the warm starts extrapolate from); ``mean``: their mean (it includes the
  steps that refactorized the shared LU); ``/sample``: step / batch;
* ``step lu``: the same step with every sample's Jacobian factorized in every Newton
  iteration (``linear = "lu"``, the solver before the shared factorization), median
  over ``--baseline-repeats`` steps (default: ``--repeats``, at most 10: a step of that
  kind takes seconds at 1e5 edges);
* ``bare``: the linear algebra those steps needed (LU factorizations, triangular
  solves, GMRES with its Jacobian products), per step;
* ``NLU``: the bare Newton-LU cost of the Newton iterations the step needed: one
  refactorization and solve per iteration (each sample's Jacobian, SuperLU), at the
  cost per iteration measured in the ``step lu`` steps (their LU seconds over their
  Newton iterations); ``step/NLU``: step / NLU. With the shared LU, the step's own linear
  algebra (``bare``) is a small part of NLU, so ``step/bare`` is the stricter ratio;
* ``LUs``, ``gmres``: shared factorizations per step, GMRES iterations per Newton step;
* ``step/bare``: their ratio (what the step costs beyond the LU library), of the medians;
  ``run``: of the sums over the timed steps (the refactorizing steps and their LUs
  included: what a run spends beyond the linear algebra);
* ``iters``: Newton iterations per solve (median, 95th percentile, share <= 5);
* ``ngspice/sample``: ``ngspice -b`` solving one sample's free and clamped operating
  points (netlist written, run and read back), measured on ``--spice-samples`` samples
  where the size is at most ``--spice-max-edges``; larger sizes are extrapolated with
  the power law through the measured sizes (marked ``~``);
* ``speedup``: ngspice per sample / clln step (whole batch), and per sample (ngspice per
  sample / (step / batch));
* ``peak``: the process's peak resident memory so far in the run (sizes, then batches in
  the order given), MB;
* ``|dV| lu``: after the timed steps, the largest difference (V) between the step
  solver's node voltages and per-sample-LU Newton's (to the same tolerance) for the
  training batch.

All times are CPU seconds (clln runs single-threaded here: bundled BLAS limited to one
thread; ngspice's are its child processes' CPU time plus this process's share), so a
machine shared with other work does not distort the ratios.

Then, at the middle size: the LU libraries (SuperLU, UMFPACK) on the same block
system, and one block-diagonal system for the batch against a loop over samples.

Usage: python benchmarks/nonlinear_speed.py [--sizes 1e3,2e4,1e5] [--batch 10,1]
       [--repeats 3] [--spice-samples 3] [--spice-max-edges 25000]
       [--linear auto|lu|krylov] [--baseline-repeats N] [--no-baseline]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from clln.controller import CoupledRule, NodeRoles, Task, TrainConfig, Trainer, delaunay
from clln.controller.backend import GateEdges
from clln.controller.task import linear_map_dataset
from clln.runtime import limit_bundled_blas
from clln.simulator.devices import SeedTransistor
from clln.simulator.nonlinear import NonlinearNetworkSolver, available_lu
from clln.simulator.spice import ngspice_path, solve_with_ngspice
from clln.simulator.transistor_backend import TransistorBackend


def build(m_edges: int, batch: int, seed: int = 0, linear: str = "auto") -> tuple[TransistorBackend, Task]:
    rng = np.random.default_rng(seed)
    n = int(round(m_edges / 2.25))
    net = delaunay(n, rng, coordination=4.5)
    perm = rng.permutation(n)
    roles = NodeRoles(tuple(int(i) for i in perm[:2]), (int(perm[2]),), tuple(int(i) for i in perm[3:5]))
    net = net.with_roles(roles)
    train, test, _ = linear_map_dataset(rng, 2, 2, batch, batch)
    task = Task("regression", train, test, output_nodes=roles.clamps)
    backend = TransistorBackend(net, SeedTransistor(), GateEdges(0.0, 5.0),
                                rng.uniform(1.5, 2.5, net.n_edges), linear=linear)
    return backend, task


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


WARM_UP = 4  # untimed steps before the timed ones


def time_steps(m_edges: int, batch: int, repeats: int, linear: str) -> dict[str, float]:
    backend, task = build(m_edges, batch, linear=linear)
    trainer = Trainer(backend, task, CoupledRule(2.0), TrainConfig(steps=repeats + WARM_UP, batch_size=batch,
                                                                  eta=0.3), np.random.default_rng(1))
    for k in range(WARM_UP):  # the cold start; compiles; the warm starts' history
        trainer.step(k - WARM_UP + 1)
    solver = backend.solvers[0]
    steps, bare = [], []  # CPU s of each timed step, of its linear algebra
    backend.iterations.clear()
    lus0, krylov0 = solver.refactorizations, solver.krylov_iterations
    for k in range(repeats):
        lu0 = solver.lu_seconds
        t0 = time.process_time()
        trainer.step(k + 1)
        steps.append(time.process_time() - t0)
        bare.append(solver.lu_seconds - lu0)
    iters = np.concatenate(backend.iterations)
    # accuracy: the step's solver against per-sample LUs (Newton to the same tolerance,
    # started from the step solver's answer) at the trained gates
    sources = task.source_voltages(task.train.x)
    ours = backend.solve(0, sources, None).voltages
    ref = NonlinearNetworkSolver(backend.network, backend.models[0], linear="lu").solve(
        backend.gate_voltages(0), sources, start=ours).voltages
    return {"edges": backend.network.n_edges, "nodes": backend.network.n_nodes,
            "error": float(np.abs(ours - ref).max()),
            "step": float(np.median(steps)), "bare": float(np.median(bare)), "mean": float(np.mean(steps)),
            "run_ratio": float(np.sum(steps) / np.sum(bare)),
            "iters_per_step": float(iters.sum() / repeats),
            "bare_per_iter": float(np.sum(bare) / max(iters.sum(), 1)),
            "iters_median": float(np.median(iters)), "iters_p95": float(np.percentile(iters, 95)),
            "iters_le5": float(np.mean(iters <= 5)), "peak": peak_mb(),
            "shared_lus": (solver.refactorizations - lus0) / repeats,
            "gmres": (solver.krylov_iterations - krylov0) / max(iters.sum(), 1)}


def cpu_with_children() -> float:
    """CPU seconds of this process and its finished children (the ngspice runs)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_ngspice(m_edges: int, samples: int) -> float:
    """CPU seconds per sample for ngspice (netlists written, ``ngspice -b`` run, output
    read back): one free and one clamped operating point."""
    backend, task = build(m_edges, samples)
    net = backend.network
    gates = backend.read_edges().conductances
    model = backend.models[0]
    sources = task.source_voltages(task.train.x)
    times = []
    for b in range(samples):
        t0 = cpu_with_children()
        free = solve_with_ngspice(net, model, gates, sources[b])
        clamps = free[list(net.roles.clamps)] + 0.3 * (task.train.y[b] - free[list(net.roles.clamps)])
        solve_with_ngspice(net, model, gates, sources[b], clamps)
        times.append(cpu_with_children() - t0)
    return float(np.median(times))


def compare_lu(m_edges: int, batch: int) -> None:
    backend, task = build(m_edges, batch)
    sources = task.source_voltages(task.train.x)
    gates = backend.read_edges().conductances
    start = NonlinearNetworkSolver(backend.network, SeedTransistor()).solve(gates, sources).voltages
    print(f"\nLU libraries at {backend.network.n_edges} edges, batch {batch} "
          "(one warm-started batch solve):")
    for lu in available_lu():
        solver = NonlinearNetworkSolver(backend.network, SeedTransistor(), lu=lu, linear="lu")
        solver.solve(gates * 1.001, sources, start=start)  # symbolic work, caches
        solver.lu_seconds, solver.lu_calls = 0.0, 0
        t0 = time.process_time()
        solver.solve(gates * 1.002, sources, start=start)
        wall = time.process_time() - t0
        print(f"  {lu:8s} {solver.lu_seconds / max(solver.lu_calls, 1) * 1e3:8.1f} ms per LU call, "
              f"batch solve {wall * 1e3:8.1f} ms")
    print("  samples per block-diagonal LU (SuperLU), LU seconds per Newton iteration:")
    for blocks in (1, 2, 4, None, "auto"):
        solver = NonlinearNetworkSolver(backend.network, SeedTransistor(), blocks_per_lu=blocks,
                                        linear="lu")
        solver.solve(gates * 1.003, sources, start=start)
        solver.lu_seconds = 0.0
        calls = solver.lu_calls = 0
        t0 = time.process_time()
        result = solver.solve(gates * 1.004, sources, start=start)
        wall = time.process_time() - t0
        calls = int(result.iterations.max())
        print(f"    {'all ' + str(batch) if blocks is None else blocks:>6}: "
              f"{solver.lu_seconds / max(calls, 1) * 1e3:8.1f} ms, batch solve {wall * 1e3:8.1f} ms")
    t0 = time.process_time()
    for b in range(batch):  # the whole Newton solve sample by sample
        solver.solve(gates * 1.005, sources[b:b + 1], start=start[b:b + 1])
    print(f"    a Python loop of single-sample solves: {(time.process_time() - t0) * 1e3:.1f} ms")


def main() -> None:
    limit_bundled_blas(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e3,2e4,1e5")
    parser.add_argument("--batch", default="10,1", help="batch sizes, comma-separated (one table each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spice-samples", type=int, default=3)
    parser.add_argument("--spice-max-edges", type=float, default=25_000)
    parser.add_argument("--linear", default="auto", choices=["auto", "lu", "krylov"])
    parser.add_argument("--baseline-repeats", type=int, default=None,
                        help="timed steps of the per-sample-LU step (default: --repeats, at most 10)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the per-sample-LU step (linear = lu)")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    tables: dict[int, list[dict[str, float]]] = {b: [] for b in batches}
    for m in sizes:  # the shared-LU step first: the peak memory printed is its own
        for batch in batches:
            print(f"-- {m:.0e} edges, batch {batch}: training steps ({args.linear}, then per-sample LU) ...",
                  flush=True)
            row = time_steps(m, batch, args.repeats, args.linear)
            baseline_repeats = args.baseline_repeats or min(args.repeats, 10)
            lu = time_steps(m, batch, baseline_repeats, "lu") if args.baseline else None
            row["step_lu"] = lu["step"] if lu else float("nan")
            # bare Newton-LU: a refactor + solve (per-sample LU, priced by the
            # baseline's steps) for each Newton iteration the step needed
            row["newton_lu"] = row["iters_per_step"] * lu["bare_per_iter"] if lu else float("nan")
            tables[batch].append(row)
    spice: dict[int, float] = {}
    if ngspice_path() is None:
        print("ngspice not installed: no baseline (apt-get install ngspice)")
    else:
        for row in tables[batches[0]]:
            if row["edges"] <= args.spice_max_edges:
                print(f"-- {row['edges']} edges: ngspice per sample ...", flush=True)
                spice[row["edges"]] = time_ngspice(row["edges"], args.spice_samples)
    for batch in batches:
        print_table(tables[batch], batch, spice, args.linear)
    if len(sizes) > 1:
        compare_lu(sizes[1], batches[0])


def print_table(rows: list[dict[str, float]], batch: int, spice: dict[int, float], linear: str) -> None:
    """One batch size's rows; ngspice per sample measured (or extrapolated) per size."""
    measured = sorted(spice)
    print(f"\nbatch {batch}; times in CPU seconds; ~ = extrapolated (power law through the "
          f"measured ngspice sizes)")
    print(f"step lu: the step with every sample's Jacobian factorized; step: with --linear {linear} "
          "(median; mean: with the steps that refactorized); /sample: step / batch; "
          "LUs: shared LUs per step; gmres: GMRES iterations per Newton step")
    print(f"{'edges':>8} {'nodes':>7} {'step lu':>8} {'step':>8} {'mean':>8} {'/sample':>8} {'lu/step':>7} "
          f"{'bare':>8} {'step/bare':>9} {'run':>5} {'NLU':>8} {'step/NLU':>8} {'iters med/p95/<=5':>18} {'LUs':>5} {'gmres':>5} "
          f"{'ngspice/sample':>15} {'speedup step':>12} {'per sample':>10} {'peak MB':>8} {'|dV| lu':>8}")
    for row in rows:
        m = row["edges"]
        if m in spice:
            ref, mark = spice[m], " "
        elif len(measured) >= 2:
            (m0, m1), (t0, t1) = measured[-2:], (spice[measured[-2]], spice[measured[-1]])
            ref, mark = t1 * (m / m1) ** (np.log(t1 / t0) / np.log(m1 / m0)), "~"
        else:
            ref, mark = float("nan"), " "
        iters = f"{row['iters_median']:.0f}/{row['iters_p95']:.0f}/{row['iters_le5']:.0%}"
        print(f"{m:8d} {row['nodes']:7d} {row['step_lu']:8.4f} {row['step']:8.4f} {row['mean']:8.4f} "
              f"{row['step'] / batch:8.4f} {row['step_lu'] / row['step']:7.1f} {row['bare']:8.4f} "
              f"{row['step'] / row['bare']:9.2f} {row['run_ratio']:5.2f} {row['newton_lu']:8.4f} "
              f"{row['step'] / row['newton_lu']:8.3f} {iters:>18} {row['shared_lus']:5.1f} {row['gmres']:5.1f} "
              f"{mark}{ref:14.2f} "
              f"{ref / row['step']:12.1f} {ref / (row['step'] / batch):10.1f} {row['peak']:8.0f} "
              f"{row['error']:8.1e}")


if __name__ == "__main__":
    main()
