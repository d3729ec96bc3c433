"""Every shipped protocol trains down and stays down: 5 seeds each, on the simulator.

For each protocol in protocols/ (and protocols/bias/), trains seeds 0..4 (the protocol's
own steps) and prints the final test error, the floor of the batch error, the step it
was reached, and the growth after convergence (clln.analysis.convergence: the largest
rise of the running median of 25 steps over the lowest one before it; 1.0 means none,
below 3 is within noise).
Protocols with a learning bias and no suppression scheme (protocols/bias/ floor, cycles,
memory, *-plain) are measured against their documented floor as well (``band``: clln.analysis.convergence.bias_floor of their rms b_j and eta, or
the measured floor of docs/benchmarks-bias.md where twin mismatch or taps add to b_j):
their purpose is a floor and drift, so "no growth beyond the documented floor" is their
criterion. Every protocol passes when its worst growth is below 3.

Usage: python benchmarks/protocol_convergence.py [--seeds 5] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from clln.analysis.convergence import bias_floor, growth_after_convergence
from clln.compose import build_experiment, make_trainer
from clln.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]
#: error floors (MSE, V^2) of the plain bias protocols on benches whose bias is more than
#: b_j (twin mismatch, taps): docs/benchmarks-bias.md, the remedy table's plain rows
DOCUMENTED_FLOOR = {"bias/twin-plain.toml": 7.45e-3, "bias/pot-plain.toml": 2.11e-4}


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
        bias = proto.simulator.parameters.learning_bias
        # the floor law is plain learning's: a bias-suppression scheme must stay monotone
        band = (max(bias_floor(bias, proto.training.eta), DOCUMENTED_FLOOR.get(name, 0.0))
                if bias > 0 and proto.training.scheme is None else 0.0)
        t0 = time.perf_counter()
        rows = []
        for seed in range(args.seeds):
            exp = build_experiment(proto, source=str(path), base_dir=path.parent, seed=seed)
            errors: list[float] = []
            result = make_trainer(exp).run([lambda r: errors.append(r.error)])
            c = growth_after_convergence(np.array(errors), band=band)
            rows.append((seed, result.final_test_error, c))
        worst = max(c.growth for _, _, c in rows)
        worst_all = max(worst_all, worst)
        against = f" (documented floor {band:.3g})" if band else ""
        print(f"{name}: {args.seeds} seeds in {time.perf_counter() - t0:.0f} s; worst growth after "
              f"convergence{against} {worst:.2f}{'' if worst < 3.0 else '  NOT within noise'}", flush=True)
        for seed, test, c in rows:
            print(f"  seed {seed}: final test error {test:.3g}, floor {c.floor:.3g} reached at step "
                  f"{c.converged_at}, growth {c.growth:.2f}", flush=True)
    print(f"worst growth after convergence over every protocol and seed: {worst_all:.2f} "
          f"({'every protocol within its criterion' if worst_all < 3.0 else 'NOT every protocol within 3'})")


if __name__ == "__main__":
    main()
