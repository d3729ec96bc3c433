"""Training-step speed of the simulator against the field's usual approach.

For Delaunay networks of n nodes (1 ground, 2 sources, 2 output nodes, batch 30)
this prints, measured in one run:

* clln's training step (free and clamped batch measurements, local rule, actuation),
  median over several steps;
* the field's usual approach: for every sample and each phase a fresh
  ``scipy.sparse.linalg.spsolve`` on the Laplacian (60 solves per step), then the
  same local rule. Where a full baseline step would take too long, a few samples
  are timed and the per-step time is scaled from them (printed as such);
* their ratio.

Usage: python benchmarks/step_speed.py [--sizes 1000,10000,100000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from clln.controller import ContinuousEdges, CoupledRule, NodeRoles, Task, TrainConfig, Trainer, delaunay
from clln.controller.task import linear_map_dataset
from clln.simulator import SimulatedBackend

BATCH = 30


def build(n: int, seed: int = 0) -> tuple[Trainer, SimulatedBackend]:
    rng = np.random.default_rng(seed)
    net = delaunay(n, rng)
    pick = rng.choice(n, 5, replace=False)
    net = net.with_roles(NodeRoles(sources=tuple(pick[:2].tolist()), grounds=(int(pick[2]),),
                                   clamps=tuple(pick[3:].tolist())))
    train, test, _ = linear_map_dataset(rng, 2, 2, BATCH, 10)
    task = Task("regression", train, test, output_nodes=net.roles.clamps)
    backend = SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), rng.uniform(1e-3, 2e-3, net.n_edges))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline-budget", type=float, default=20.0,
                        help="seconds allowed for timing the per-sample baseline at one size")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    print(f"{'n':>9} {'m':>9} {'solver':>7} {'clln step (ms)':>15} "
          f"{'per-sample step (ms)':>21} {'ratio':>8}  note")
    for n in sizes:
        trainer, backend = build(n)
        trainer.step(0)  # symbolic analysis and first factorization
        times = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            trainer.step(i + 1)
            times.append(time.perf_counter() - t0)
        step = float(np.median(times))
        one = per_sample_step(trainer, 1)
        samples = int(min(BATCH, max(1, args.baseline_budget // max(one, 1e-9))))
        note = "full batch" if samples >= BATCH else f"scaled from {samples} of {BATCH} samples"
        base = per_sample_step(trainer, samples) * BATCH / samples if samples > 1 else one * BATCH
        print(f"{n:>9} {backend.network.n_edges:>9} {backend.solver_name:>7} {step * 1e3:>15.2f} "
              f"{base * 1e3:>21.1f} {base / step:>7.0f}x  {note}", flush=True)


if __name__ == "__main__":
    main()
