"""Where a transistor training step spends its time outside the linear algebra: on the
networks of ``benchmarks/nonlinear_speed.py`` (Delaunay, mean coordination 4.5, seed
transistor edges, the coupled rule), per network size and batch size, measured in one
run (median over ``--repeats`` steps after ``--warmup`` steps):

* ``step``: the training step (``Trainer.step``);
* ``solve``: inside ``NonlinearNetworkSolver.solve`` and ``solve_one`` (the free and the
  clamped solve; one sample per step takes ``solve_one``);
* ``bare``: the linear algebra of those solves (LU factorizations, triangular solves,
  GMRES with its Jacobian products);
* ``in solve``: solve - bare (device evaluation, Newton and line-search bookkeeping);
* ``outside``: step - solve (the trainer, the rule's signal, the learning window, warm
  starts, the measurement records), per step and, in ``us/edge``, per thousand edges;
* ``step/bare``: of the medians.

All times are CPU seconds of one process (bundled BLAS on one thread); the timer around
the two solves costs a few microseconds per step.

Usage: python benchmarks/transistor_step_overhead.py [--sizes 2e4,1e5] [--batch 1,10]
       [--repeats 200] [--warmup 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clln.controller import CoupledRule, TrainConfig, Trainer
from clln.runtime import limit_bundled_blas

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nonlinear_speed import build  # noqa: E402  (the same networks as the speed benchmark)


def _timed(method: Callable[..., Any], inside: list[float]) -> Callable[..., Any]:
    """``method``, its CPU time added to ``inside[0]``."""
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return method(*args, **kwargs)
        finally:
            inside[0] += time.process_time() - started
    return timed


def measure(m_edges: int, batch: int, repeats: int, warmup: int) -> dict[str, float]:
    """Median CPU seconds per step of the step, its solves and their linear algebra."""
    backend, task = build(m_edges, batch)
    trainer = Trainer(backend, task, CoupledRule(2.0),
                      TrainConfig(steps=warmup + repeats, batch_size=batch, eta=0.3), np.random.default_rng(1))
    solver = backend.solvers[0]
    inside = [0.0]
    for name in ("solve", "solve_one"):  # the batch path; the one-sample path (neither calls the other)
        setattr(solver, name, _timed(getattr(solver, name), inside))  # this solver only, for the run
    for k in range(warmup):
        trainer.step(k)
    step, solves, bare = [], [], []
    for k in range(repeats):
        in0, lu0 = inside[0], solver.lu_seconds
        started = time.process_time()
        trainer.step(warmup + k)
        step.append(time.process_time() - started)
        solves.append(inside[0] - in0)
        bare.append(solver.lu_seconds - lu0)
    s, v, b = np.array(step), np.array(solves), np.array(bare)
    return {"edges": backend.network.n_edges, "step": float(np.median(s)), "solve": float(np.median(v)),
            "bare": float(np.median(b)), "in_solve": float(np.median(v - b)),
            "outside": float(np.median(s - v)), "outside_mean": float(np.mean(s - v))}


def main() -> None:
    limit_bundled_blas(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2e4,1e5")
    parser.add_argument("--batch", default="1,10", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 1:
        print("--repeats and --warmup: at least 1 each", file=sys.stderr)
        raise SystemExit(2)
    rows = []
    for m in (int(float(s)) for s in args.sizes.split(",")):
        for batch in (int(b) for b in args.batch.split(",")):
            print(f"-- {m:.0e} edges, batch {batch} ...", flush=True)
            rows.append((batch, measure(m, batch, args.repeats, args.warmup)))
    print("\nms per step (CPU, medians); outside mean: with the steps that refactorized")
    print(f"{'batch':>5} {'edges':>8} {'step':>8} {'solve':>8} {'bare':>8} {'in solve':>8} "
          f"{'outside':>8} {'out mean':>8} {'us/kedge':>8} {'step/bare':>9}")
    for batch, r in rows:
        print(f"{batch:5d} {r['edges']:8d} {r['step'] * 1e3:8.3f} {r['solve'] * 1e3:8.3f} {r['bare'] * 1e3:8.3f} "
              f"{r['in_solve'] * 1e3:8.3f} {r['outside'] * 1e3:8.3f} {r['outside_mean'] * 1e3:8.3f} "
              f"{r['outside'] * 1e9 / r['edges']:8.2f} {r['step'] / r['bare']:9.2f}")


if __name__ == "__main__":
    main()
