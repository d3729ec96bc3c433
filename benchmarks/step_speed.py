"""Training-step speed of the simulator against the bare solver limit and the field's
per-sample approach, n = 1e3 ... 1e6 nodes.

For Delaunay networks of n nodes pruned to mean coordination 4.5 (m = 2.25 n;
1 ground, 2 sources, 2 output nodes, batch 30) this prints, per size and measured in
one run (each size in its own process, so peak memory is that size's):

* ``step``: clln's training step (free and clamped batch measurements, local rule,
  actuation), median over ``--repeats`` steps after a first step that does the
  symbolic analysis;
* ``bare``: the limit of the same sparse library: numeric refactorization of L_FF plus
  one solve with 30 right-hand sides (what any batched step must at least do), median;
* ``step/bare``: their ratio;
* ``per-sample``: the field's usual approach, a fresh ``scipy.sparse.linalg.spsolve``
  per sample and per phase (60 per step), then the same local rule; skipped where it
  would take over ``--baseline-limit`` seconds (predicted from the previous size, or
  from one timed sample);
* ``speedup``: per-sample / step;
* ``peak``: the process's peak resident memory during the timed steps (everything
  alive: network, incidence, factorization, bases), MB.

Both clln and the baseline run with numpy's BLAS capped at one thread, as ``clln``
runs (``clln.runtime``); the baseline is faster that way too.

Usage: python benchmarks/step_speed.py [--sizes 1e3,1e4,1e5,1e6] [--repeats 5]
       [--solver auto] [--coordination 4.5] [--baseline-limit 60]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from clln.controller import (
    ContinuousEdges,
    CoupledRule,
    NodeRoles,
    Task,
    TrainConfig,
    Trainer,
    delaunay,
)
from clln.controller.task import linear_map_dataset
from clln.runtime import limit_bundled_blas
from clln.simulator import LinearNetworkSolver, SimulatedBackend

BATCH = 30


def build(n: int, solver: str, coordination: float | None, seed: int = 0) -> tuple[Trainer, SimulatedBackend]:
    rng = np.random.default_rng(seed)
    net = delaunay(n, rng, coordination=coordination)
    pick = rng.choice(n, 5, replace=False)
    net = net.with_roles(NodeRoles(sources=tuple(pick[:2].tolist()), grounds=(int(pick[2]),),
                                   clamps=tuple(pick[3:].tolist())))
    train, test, _ = linear_map_dataset(rng, 2, 2, BATCH, 10)
    task = Task("regression", train, test, output_nodes=net.roles.clamps)
    backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), rng.uniform(1e-3, 2e-3, net.n_edges),
                               solver=solver)  # type: ignore[arg-type]
    config = TrainConfig(steps=10**9, batch_size=BATCH, eta=0.1)
    return Trainer(backend, task, CoupledRule(0.02), config, rng), backend


def per_sample_step(trainer: Trainer, samples: int) -> float:
    """Seconds for ``samples`` samples of the field's approach: fresh spsolve per sample
    and per phase, then the local rule on those states."""
    backend, task = trainer.backend, trainer.task
    net = backend.network
    g = backend.read_edges().conductances
    roles = net.roles
    fixed_free = np.r_[roles.sources, roles.grounds]
    fixed_clamped = np.r_[fixed_free, roles.clamps]
    batch = task.train
    t0 = time.perf_counter()
    lap = (net.incidence.T @ sp.diags(g) @ net.incidence).tocsr()
    delta = np.zeros(net.n_edges)
    for b in range(samples):
        x = batch.x[b]
        states = []
        for fixed, values in ((fixed_free, np.r_[x, 0.0]), (fixed_clamped, None)):
            free = np.setdiff1d(np.arange(net.n_nodes), fixed)
            if values is None:  # clamped phase: nudge the outputs of the free state
                out_free = states[0][list(roles.clamps)]
                values = np.r_[x, 0.0, out_free + 0.1 * (batch.y[b] - out_free)]
            v = np.zeros(net.n_nodes)
            v[fixed] = values
            l_ff = lap[free][:, free].tocsc()
            v[free] = spla.spsolve(l_ff, -(lap[free][:, fixed] @ values))
            states.append(v)
        dv_free = net.incidence @ states[0]
        dv_clamped = net.incidence @ states[1]
        delta += dv_free**2 - dv_clamped**2
    return time.perf_counter() - t0


def bare_limit(backend: SimulatedBackend, repeats: int) -> float:
    """Median seconds of the library's numeric refactorization + one 30-RHS solve."""
    solver = LinearNetworkSolver(backend.network, backend.solver_name)  # type: ignore[arg-type]
    g = backend.read_edges().conductances
    matrix = solver.laplacian_ff(g)
    rhs = np.asfortranarray(np.random.default_rng(0).standard_normal((solver.n_free, BATCH)))
    factorization = solver.factorization
    factorization.factorize(matrix)  # symbolic analysis, not timed
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        factorization.factorize(matrix)
        factorization.solve(rhs)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _reset_peak_memory() -> None:
    """Return freed heap to the OS and restart the kernel's peak-RSS counter (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_size(n: int, args: argparse.Namespace) -> dict[str, object]:
    """Everything for one size, in this process."""
    limit_bundled_blas(1)
    trainer, backend = build(n, args.solver, args.coordination or None)
    trainer.step(0)  # symbolic analysis and first factorization
    _reset_peak_memory()
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        trainer.step(i + 1)
        times.append(time.perf_counter() - t0)
    peak = _peak_memory_mb()
    step = float(np.median(times))
    bare = bare_limit(backend, args.repeats)
    baseline, note = None, ""
    estimate = args.baseline_estimate
    if estimate is None:
        estimate = per_sample_step(trainer, 1) * BATCH if args.baseline_limit > 0 else np.inf
    if estimate <= args.baseline_limit:
        baseline = per_sample_step(trainer, BATCH)
    else:
        note = f"per-sample skipped (~{estimate:.0f} s per step)"
    return {"n": n, "m": backend.network.n_edges, "solver": backend.solver_name, "step": step,
            "bare": bare, "baseline": baseline, "peak_mb": peak, "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e3,1e4,1e5,1e6")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--solver", default="auto", help="auto | cholmod | qdldl | superlu")
    parser.add_argument("--coordination", type=float, default=4.5,
                        help="mean coordination of the pruned Delaunay network (0: unpruned)")
    parser.add_argument("--baseline-limit", type=float, default=60.0,
                        help="skip the per-sample baseline where a step of it would take longer (s)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-estimate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure_size(args.child, args)), flush=True)
        return
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    print(f"Delaunay networks, coordination {args.coordination or 'unpruned'}, batch {BATCH}, "
          f"2 sources, 2 outputs; medians of {args.repeats} steps")
    print(f"{'n':>9} {'m':>9} {'solver':>8} {'step ms':>9} {'bare ms':>9} {'step/bare':>9} "
          f"{'per-sample ms':>14} {'speedup':>8} {'peak MB':>8}  note", flush=True)
    previous: tuple[int, float] | None = None
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--repeats", str(args.repeats),
               "--solver", args.solver, "--coordination", str(args.coordination),
               "--baseline-limit", str(args.baseline_limit)]
        if previous is not None:  # per-sample cost grows about as n^1.25 here
            cmd += ["--baseline-estimate", str(previous[1] * (n / previous[0]) ** 1.25)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        base = r["baseline"]
        if base is not None:
            previous = (n, base)
        base_txt = "-" if base is None else f"{base * 1e3:.0f}"
        speed = "-" if base is None else f"{base / r['step']:.0f}x"
        print(f"{n:>9} {r['m']:>9} {r['solver']:>8} {r['step'] * 1e3:>9.1f} {r['bare'] * 1e3:>9.1f} "
              f"{r['step'] / r['bare']:>9.2f} {base_txt:>14} {speed:>8} {r['peak_mb']:>8.0f}  "
              f"{r['note']}", flush=True)


if __name__ == "__main__":
    main()
