"""How long ``clln --help`` takes to start, against a bare Python start measured alongside.

Runs ``python -m clln.cli --help`` (and ``python -c pass`` as the baseline) ``--repeat``
times, alternating, and prints the median wall time and the median CPU time of the child
(user + system, which a busy shared machine distorts less than wall time), the ratio of
the two, and whether the help imported scipy.

Usage: python benchmarks/cli_startup.py [--repeat 10] [--command "train --help"]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

PROBE = ("import runpy, sys; sys.argv = ['clln', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('clln.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('scipy loaded' if 'scipy' in sys.modules else 'scipy not loaded', file=sys.stderr)")


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall time (s), child CPU time (s) and stderr of one run of ``argv``."""
    before = os.times()
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--command", default="--help", help="Arguments after clln.")
    args = parser.parse_args()
    clln = [sys.executable, "-m", "clln.cli", *args.command.split()]
    bare = [sys.executable, "-c", "pass"]
    runs: dict[str, list[tuple[float, float]]] = {"clln": [], "python": []}
    for _ in range(args.repeat):
        w, c, _err = timed(clln)
        runs["clln"].append((w, c))
        w, c, _err = timed(bare)
        runs["python"].append((w, c))
    loaded = timed([sys.executable, "-c", PROBE, *args.command.split()])[2].strip().splitlines()[-1]
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in runs.items()}
    print(f"clln {args.command}: median of {args.repeat}: wall {med['clln'][0]:.3f} s, "
          f"CPU {med['clln'][1]:.3f} s; {loaded}")
    print(f"python -c pass: wall {med['python'][0]:.3f} s, CPU {med['python'][1]:.3f} s")
    print(f"ratio clln/python: wall {med['clln'][0] / med['python'][0]:.1f}x, "
          f"CPU {med['clln'][1] / max(med['python'][1], 1e-3):.1f}x")


if __name__ == "__main__":
    main()
