"""Sweep speed-up on Dask: 16 short runs with 2 local workers against 1.

The sweep is seed 001's regression task on a 600-node Delaunay network, 4 values of
eta x 4 seeds, 300 steps each (about a second of training per run here), run by
``clln.sweep.run_sweep`` on a LocalCluster of single-threaded worker processes, every
run recorded in a fresh run store. Printed: cluster start-up and sweep time for 1 and
for 2 workers, measured in one run, and their ratio (the sweep time, from the first
submission to the results table and plot, excludes cluster start-up).

Usage: python benchmarks/sweep_speed.py [--workers 1,2] [--steps 300] [--nodes 600] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from clln.sweep import open_client, parse_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def sweep_text(steps: int, nodes: int) -> str:
    return f"""
format = 1
name = "sweep-speed"
protocol = "{ROOT / 'protocols' / 'regression-2x2.toml'}"
seeds = [1, 2, 3, 4]
[set]
"network.nodes" = {nodes}
"training.steps" = {steps}
"training.test_every" = 50
"training.snapshot_every" = 100
[grid]
"training.eta" = [0.05, 0.1, 0.2, 0.5]
"""


def _burn(_: int) -> float:
    t0 = time.perf_counter()
    total = 0
    for i in range(5_000_000):
        total += i
    return time.perf_counter() - t0


def machine_headroom(processes: int) -> float:
    """How much faster ``processes`` processes burn a fixed pure-Python CPU load than one,
    right now: the most any sweep can gain on this (possibly shared) machine."""
    import multiprocessing

    t0 = time.perf_counter()
    for i in range(2 * processes):
        _burn(i)
    serial = time.perf_counter() - t0
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_burn, range(processes))  # start-up
        t0 = time.perf_counter()
        pool.map(_burn, range(2 * processes))
        parallel = time.perf_counter() - t0
    return serial / parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate the worker counts this many times; the best time counts")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    times: dict[int, float] = {}
    print(f"{'workers':>7} {'runs':>5} {'failed':>6} {'cluster start s':>15} {'sweep s':>8}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sweep = parse_sweep(sweep_text(args.steps, args.nodes), Path(tmp) / "sweep.toml")
        for round_, workers in ((r, w) for r in range(args.rounds) for w in counts):
            t0 = time.perf_counter()
            client, cluster = open_client(None, workers)
            client.wait_for_workers(workers)
            client.run(lambda: __import__("clln.compose"))  # imports, not timed in the sweep
            start = time.perf_counter() - t0
            try:
                outcome = run_sweep(sweep, Path(tmp) / f"runs-{workers}-{round_}", client)
            finally:
                client.close()
                cluster.close()
            times[workers] = min(times.get(workers, float("inf")), outcome.wall_time)
            print(f"{workers:>7} {len(outcome.rows):>5} {outcome.n_failed:>6} {start:>15.1f} "
                  f"{outcome.wall_time:>8.1f}", flush=True)
    if len(counts) >= 2:
        a, b = counts[0], counts[-1]
        print(f"speed-up {b} vs {a} workers: {times[a] / times[b]:.2f}x", flush=True)
        print(f"(this machine, now: {b} processes burn a pure-Python CPU load "
              f"{machine_headroom(b):.2f}x faster than 1)", flush=True)


if __name__ == "__main__":
    main()
