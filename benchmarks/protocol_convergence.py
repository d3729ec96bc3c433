"""Every shipped protocol trains down and stays down: 5 seeds each, on the simulator.

For each protocol in protocols/ (and protocols/bias/), trains seeds 0..4 (the protocol's
own steps) and prints the final test error, the floor of the batch error, the step it
was reached, and the growth after convergence (clln.analysis.convergence: the running
median of 25 steps against the floor; 1.0 means none, below 3 is within noise).

Usage: python benchmarks/protocol_convergence.py [--seeds 5] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from clln.analysis.convergence import growth_after_convergence
from clln.compose import build_experiment, make_trainer
from clln.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    files = sorted((ROOT / "protocols").glob("*.toml")) + sorted((ROOT / "protocols" / "bias").glob("*.toml"))
    worst_all = 0.0
    for path in files:
        name = str(path.relative_to(ROOT / "protocols"))
        if args.only and not any(o in name for o in args.only):
            continue
        proto, _ = load_protocol(path)
        t0 = time.perf_counter()
        rows = []
        for seed in range(args.seeds):
            exp = build_experiment(proto, source=str(path), base_dir=path.parent, seed=seed)
            errors: list[float] = []
            result = make_trainer(exp).run([lambda r: errors.append(r.error)])
            c = growth_after_convergence(np.array(errors))
            rows.append((seed, result.final_test_error, c))
        worst = max(c.growth for _, _, c in rows)
        worst_all = max(worst_all, worst)
        print(f"{name}: {args.seeds} seeds in {time.perf_counter() - t0:.0f} s; worst growth after "
              f"convergence {worst:.2f}", flush=True)
        for seed, test, c in rows:
            print(f"  seed {seed}: final test error {test:.3g}, floor {c.floor:.3g} reached at step "
                  f"{c.converged_at}, growth {c.growth:.2f}", flush=True)
    print(f"worst growth after convergence over every protocol and seed: {worst_all:.2f}")


if __name__ == "__main__":
    main()
