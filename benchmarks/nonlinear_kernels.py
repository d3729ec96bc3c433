"""The compiled kernels of the Newton solve (clln.simulator._nl_kernels) against the numpy
code they replace, on the networks of ``benchmarks/nonlinear_speed.py`` (Delaunay, mean
coordination 4.5, seed transistor edges), measured in one run:

* per call, at a trained operating point (batch ``--batch``): the device evaluation with
  the free-node residual (``_free_residual_state``) and the Jacobian's values
  (``_values``), numpy and compiled, and the largest difference between them;
* per training step (median of ``--repeats`` steps, compiled off and on in alternating
  blocks of steps on the same trainer): the step, its linear algebra (``bare``) and the
  rest (``step - bare``), and step / bare;
* the first use of the kernels in a fresh process, with an empty compile cache
  (compiling) and with the cache just written (loading numba and the cached code).

All times are CPU seconds of one process (bundled BLAS on one thread).

Usage: python benchmarks/nonlinear_kernels.py [--sizes 2e4,1e5] [--batch 10] [--repeats 6]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clln.controller import CoupledRule, TrainConfig, Trainer
from clln.runtime import limit_bundled_blas

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nonlinear_speed import build  # noqa: E402  (the same networks as the speed benchmark)


def per_call(solver, v: np.ndarray, gates: np.ndarray, reps: int = 20) -> dict[str, float]:  # noqa: ANN001
    """Median CPU ms per call of residual + state and of the Jacobian values, numpy and
    compiled, and the largest relative differences."""
    out: dict[str, float] = {}
    results = {}
    for compiled in (False, True):
        solver.compiled = compiled
        tag = "compiled" if compiled else "numpy"
        r, state = solver._free_residual_state(v, gates, False)
        values = solver._values(state, False)
        results[tag] = (r, state.d_va, state.d_vb, values)
        for name, call in (("residual", lambda: solver._free_residual_state(v, gates, False)),
                           ("values", lambda: solver._values(state, False))):
            times = []
            for _ in range(reps):
                t0 = time.process_time()
                call()
                times.append(time.process_time() - t0)
            out[f"{name}_{tag}"] = float(np.median(times)) * 1e3
    solver.compiled = True
    out["max_rel_diff"] = max(float(np.abs(x - y).max() / np.abs(y).max())
                              for x, y in zip(results["compiled"], results["numpy"]))
    return out


def steps(m_edges: int, batch: int, repeats: int) -> dict[str, float]:
    """Training steps with the kernels off and on, alternating blocks of two steps."""
    backend, task = build(m_edges, batch)
    trainer = Trainer(backend, task, CoupledRule(2.0),
                      TrainConfig(steps=2 * repeats + 2, batch_size=batch, eta=0.3), np.random.default_rng(1))
    trainer.step(0)
    trainer.step(1)  # warm starts extrapolated from here on
    solvers = backend.solvers
    timed: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    k = 2
    for block in range(repeats):
        for compiled in ((False, True) if block % 2 == 0 else (True, False)):
            for s in solvers:
                s.compiled = compiled
            lu0 = sum(s.lu_seconds for s in solvers)
            t0 = time.process_time()
            trainer.step(k)
            k += 1
            timed[compiled].append((time.process_time() - t0, sum(s.lu_seconds for s in solvers) - lu0))
    sources = task.source_voltages(task.train.x)
    v = backend.solve(0, sources, None).voltages
    row: dict[str, float] = {"edges": backend.network.n_edges}
    for compiled, rows in timed.items():
        arr = np.array(rows)
        tag = "compiled" if compiled else "numpy"
        row[f"step_{tag}"] = float(np.median(arr[:, 0]))
        row[f"bare_{tag}"] = float(np.median(arr[:, 1]))
        row[f"rest_{tag}"] = float(np.median(arr[:, 0] - arr[:, 1]))
    row.update(per_call(solvers[0], v, backend._physics_gates(0)))
    return row


FIRST_USE = """
import time, numpy as np
from clln.controller import NodeRoles, delaunay
from clln.simulator.devices import SeedTransistor
from clln.simulator.nonlinear import NonlinearNetworkSolver
rng = np.random.default_rng(0)
net = delaunay(2500, rng).with_roles(NodeRoles((0, 1), (2,), (3, 4)))
solver = NonlinearNetworkSolver(net, SeedTransistor())
assert solver.compiled
v = rng.uniform(0, 1, (2, net.n_nodes))
gates = rng.uniform(1.5, 2.5, net.n_edges)
t0 = time.process_time()
r, state = solver._free_residual_state(v, gates, False)
solver._values(state, False)
print(time.process_time() - t0)
"""


def first_use() -> tuple[float, float]:
    """CPU seconds of the kernels' first use in a fresh process: cold cache, then warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        got = [float(subprocess.run([sys.executable, "-c", FIRST_USE], env=env, check=True,
                                    capture_output=True, text=True).stdout) for _ in range(2)]
    return got[0], got[1]


def main() -> None:
    limit_bundled_blas(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2e4,1e5")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    rows = []
    for size in [int(float(s)) for s in args.sizes.split(",")]:
        print(f"-- {size:.0e} edges ...", flush=True)
        rows.append(steps(size, args.batch, args.repeats))
    print(f"\nbatch {args.batch}; CPU ms; per call at a trained operating point; per step the median of "
          f"{args.repeats} steps each way (numpy / compiled, alternating on one trainer)")
    print(f"{'edges':>7} {'residual np/jit':>16} {'values np/jit':>14} {'max rel diff':>12} "
          f"{'step np/jit':>14} {'bare np/jit':>14} {'rest np/jit':>12} {'step/bare np/jit':>17} {'speedup':>7}")
    for r in rows:
        print(f"{r['edges']:7d} {r['residual_numpy']:7.2f}/{r['residual_compiled']:<7.2f} "
              f"{r['values_numpy']:6.2f}/{r['values_compiled']:<6.2f} {r['max_rel_diff']:12.1e} "
              f"{r['step_numpy'] * 1e3:6.0f}/{r['step_compiled'] * 1e3:<6.0f} "
              f"{r['bare_numpy'] * 1e3:6.0f}/{r['bare_compiled'] * 1e3:<6.0f} "
              f"{r['rest_numpy'] * 1e3:5.0f}/{r['rest_compiled'] * 1e3:<5.0f} "
              f"{r['step_numpy'] / r['bare_numpy']:8.2f}/{r['step_compiled'] / r['bare_compiled']:<8.2f} "
              f"{r['step_numpy'] / r['step_compiled']:7.2f}")
    cold, warm = first_use()
    print(f"\nfirst use in a fresh process: {cold:.2f} s CPU with an empty compile cache, "
          f"{warm:.2f} s with the cache written (numba import and cached code)")


if __name__ == "__main__":
    main()
