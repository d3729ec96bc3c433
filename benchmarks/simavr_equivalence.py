"""The compiled firmware under simavr against the Python firmware emulator.

``protocols/bench-regression-2x2.toml`` on ``protocols/benches/example-16.toml`` (noise
off), through the driver stack (``--emulate``): once behind the Python firmware
(``clln.simulator.bench.PotFirmware``), once behind the Mega 2560 firmware built with
avr-gcc and run under simavr with MCP4131 models (``clln.simulator.avr``). Prints the
steps whose taps differ (0 expected), the wall time of each run and their ratio.

Usage: python benchmarks/simavr_equivalence.py [--steps 200] [--build DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from clln.benchrun import emulated_trajectory
from clln.simulator import avr

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--build", type=Path, default=avr.default_build_dir())
    args = parser.parse_args()
    missing = avr.missing_tools()
    if missing:
        raise SystemExit(f"needs {', '.join(missing)} (Debian packages: see .ci/run)")
    protocol = (ROOT / "protocols" / "bench-regression-2x2.toml").read_text()
    bench = (ROOT / "protocols" / "benches" / "example-16.toml").read_text().replace(
        "seed = 1\n", "seed = 1\n[emulator.parameters]\nai_noise_rms = 0.0\n", 1)

    t0 = time.perf_counter()
    build = avr.build(args.build)
    print(f"build: {time.perf_counter() - t0:.1f} s; {build.size}")

    t0 = time.perf_counter()
    python = emulated_trajectory(protocol, bench, args.steps)
    t_python = time.perf_counter() - t0
    sim = avr.SimavrPotBank(build)
    t0 = time.perf_counter()
    compiled = emulated_trajectory(protocol, bench, args.steps, controller=sim)
    t_sim = time.perf_counter() - t0

    differ = [k for k, (a, b) in enumerate(zip(python, compiled)) if not np.array_equal(a, b)]
    moves = sum(int(np.count_nonzero(b != a)) for a, b in zip(python, python[1:]))
    print(f"steps: {len(python)} (Python firmware), {len(compiled)} (simavr)")
    print(f"steps whose taps differ: {len(differ)}" + (f" (first: {differ[0]})" if differ else ""))
    print(f"tap changes along the run: {moves}; wiper changes seen by the MCP4131 models: "
          f"{len(sim.wiper_log)}")
    print(f"wall time: Python firmware {t_python:.1f} s ({1e3 * t_python / args.steps:.1f} ms/step), "
          f"simavr {t_sim:.1f} s ({1e3 * t_sim / args.steps:.1f} ms/step), ratio {t_sim / t_python:.2f}")
    if sim.stderr.strip():
        print(f"harness: {sim.stderr.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
