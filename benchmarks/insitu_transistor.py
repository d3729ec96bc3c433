"""transistor-16 learning in place: protocols/insitu-transistor-regression.toml over
seeds 1-5 (tasks, devices, parts and start gates), test error final / initial per seed
and the median; wall time per run.

    python benchmarks/insitu_transistor.py [--seeds 5] [--steps 60]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from clln.compose import build_experiment, make_trainer
from clln.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "protocols" / "insitu-transistor-regression.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    protocol, _ = load_protocol(PROTOCOL)
    ratios = []
    for seed in range(1, args.seeds + 1):
        t0 = time.perf_counter()
        exp = build_experiment(protocol, source=str(PROTOCOL), base_dir=ROOT, seed=seed, steps=args.steps)
        result = make_trainer(exp).run()
        ratio = result.final_test_error / result.initial_test_error
        ratios.append(ratio)
        print(f"seed {seed}: test MSE {result.initial_test_error:.3e} -> {result.final_test_error:.3e} V^2 "
              f"(final/initial {ratio:.4f}), {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"median final/initial over {args.seeds} seeds: {np.median(ratios):.4f}; "
          f"improved: {sum(r < 1 for r in ratios)}/{args.seeds}")


if __name__ == "__main__":
    main()
