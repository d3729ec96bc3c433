"""Sweep speed-up on Dask: 16 short runs with 2 local workers against 1.

The sweep is seed 001's regression task on a 600-node Delaunay network, 4 values of
eta x 4 seeds, 300 steps each (under a second per run here, report included), run by
``clln.sweep.run_sweep`` on a LocalCluster of single-threaded worker processes, every
run recorded in a fresh run store. Per round, back to back: the sweep with 1 worker,
with 2, their ratio (sweep time from the first submission to the results table and
plot; cluster start-up excluded and printed apart), and how much 2 processes gain on
a pure CPU load on this machine right then (a machine shared with other jobs gives
less than 2x). Then the median and best ratio over the rounds.

Usage: python benchmarks/sweep_speed.py [--workers 2] [--steps 300] [--nodes 600] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from clln.sweep import Sweep, open_client, parse_sweep, run_sweep

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


def timed_sweep(sweep: Sweep, out: Path, workers: int) -> tuple[float, float, int]:
    """(cluster start-up s, sweep s, failed runs) on a fresh LocalCluster."""
    t0 = time.perf_counter()
    client, cluster = open_client(None, workers)
    client.wait_for_workers(workers)
    client.run(lambda: __import__("clln.compose"))  # imports, not timed in the sweep
    start = time.perf_counter() - t0
    try:
        outcome = run_sweep(sweep, out, client)
    finally:
        client.close()
        cluster.close()
    return start, outcome.wall_time, outcome.n_failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="compared with 1 worker")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3,
                        help="pairs of sweeps (1 worker, then N), each pair back to back")
    args = parser.parse_args()
    n = args.workers
    ratios = []
    print(f"{'round':>5} {'1 worker s':>10} {f'{n} workers s':>12} {'speed-up':>9} "
          f"{'failed':>6} {'start-up s':>10} {'CPU headroom':>12}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sweep = parse_sweep(sweep_text(args.steps, args.nodes), Path(tmp) / "sweep.toml")
        print(f"{len(sweep.runs)} runs per sweep", flush=True)
        for round_ in range(args.rounds):
            start1, one, failed1 = timed_sweep(sweep, Path(tmp) / f"runs-1-{round_}", 1)
            start_n, many, failed_n = timed_sweep(sweep, Path(tmp) / f"runs-{n}-{round_}", n)
            headroom = machine_headroom(n)
            ratios.append(one / many)
            print(f"{round_ + 1:>5} {one:>10.1f} {many:>12.1f} {one / many:>8.2f}x "
                  f"{failed1 + failed_n:>6} {max(start1, start_n):>10.1f} {headroom:>11.2f}x",
                  flush=True)
    print(f"speed-up {n} vs 1 workers: median {statistics.median(ratios):.2f}x, best "
          f"{max(ratios):.2f}x over {len(ratios)} rounds", flush=True)
    print(f"(CPU headroom: how much faster {n} processes burn a pure-Python load than 1, "
          f"measured right after each round; below {n}x the machine is shared)", flush=True)


if __name__ == "__main__":
    main()
