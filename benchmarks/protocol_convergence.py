"""Every shipped protocol trains down and stays down: 5 seeds each, on the simulator.

For each protocol in protocols/ (and protocols/bias/), trains seeds 0..4 (the protocol's
own steps) and prints the final test error, the floor of the batch error, the step it
was reached, and the growth after convergence (clln.analysis.convergence: the largest
rise of the running median of 25 steps over the lowest one before it; 1.0 means none,
below 3 is within noise).
Protocols with a learning bias and no suppression scheme (protocols/bias/ floor, cycles,
memory, *-plain) are measured against their documented floor as well (``band``:
clln.analysis.convergence.bias_floor of their rms b_j and eta, or where higher the floor
docs/benchmarks-bias.md documents for that bench (the remedy table's plain rows: twin
mismatch and taps add to b_j) or for that seed ("the floor over bench seeds": edges that
reach or leave their bounds, maps the lattice cannot fit)): their purpose is a floor and
drift, so "no growth beyond the documented floor" is their criterion. On a noisy bench
(squared-error tasks), errors below the bench's resolution count as that level
(clln.analysis.convergence.resolution_band: (5 x the rms noise of one output reading)^2,
measured as the overclamp's auto margin measures it, on a separate copy of the bench so
that the run itself is untouched). Every protocol passes when its worst growth is below 3.

Usage: python benchmarks/protocol_convergence.py [--seeds 5] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from clln.analysis.convergence import bias_floor, growth_after_convergence, resolution_band
from clln.compose import build_experiment, make_trainer
from clln.controller.schemes import Overclamp
from clln.protocol import Protocol, load_protocol
from clln.simulator import PRESETS, make_imperfections

ROOT = Path(__file__).resolve().parents[1]
#: error floors (MSE, V^2) of the plain bias protocols at seeds 0-4, where they can be above
#: the |b| / eta law: docs/benchmarks-bias.md, "the floor over bench seeds" (twin mismatch
#: and taps add to b_j, a drift that pins an edge lifts a seed's floor, and some seeds draw a
#: map the lattice cannot fit, with the same floor at zero bias)
#: the plain rows of docs/benchmarks-bias.md's remedy table (the protocol's seed): the floor
#: the twin and potentiometer benches' mismatch and taps add to b_j, for every seed
BENCH_FLOOR = {"bias/twin-plain.toml": 7.45e-3, "bias/pot-plain.toml": 2.11e-4}
FLOOR_SEEDS = (1.29e-10, 1.93e-11, 8.97e-4, 2.34e-7, 2.91e-3)
TWIN_SEEDS = (9.93e-3, 7.45e-3, 3.15e-2, 1.44e-2, 4.27e-3)
POT_SEEDS = (8.36e-5, 2.11e-4, 2.88e-3, 1.25e-3, 4.08e-3)
DOCUMENTED_FLOOR = {
    "bias/floor.toml": FLOOR_SEEDS, "bias/twin-plain.toml": TWIN_SEEDS, "bias/pot-plain.toml": POT_SEEDS}


def output_noise(proto: Protocol, path: Path, seed: int, readings: int = 4) -> float:
    """rms noise of one output reading (V) of the protocol's bench at ``seed``: the first
    training batch read ``readings`` times on a fresh copy of the bench, as the overclamp's
    auto margin measures it (0 on a noise-free simulator; 0 on an in-place bench, whose
    recorded voltages are not what it learns from)."""
    sim = proto.simulator
    if proto.training.mode == "in-situ":
        return 0.0  # an in-place bench reads its nodes through its own recorder
    if sim.preset in PRESETS and make_imperfections(sim.preset, sim.overrides).exact_readout:
        return 0.0  # readings are the exact physics
    exp = build_experiment(proto, source=str(path), base_dir=path.parent, seed=seed)
    sources = exp.task.source_voltages(exp.task.train.x[:proto.training.batch])
    outputs = [exp.task.outputs(exp.backend.measure(sources)) for _ in range(readings)]
    return Overclamp(eta=1.0).observe_noise(np.stack(outputs))


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
        law = bias_floor(bias, proto.training.eta) if bias > 0 and proto.training.scheme is None else 0.0
        squared = proto.task.kind != "classification"
        t0 = time.perf_counter()
        rows = []
        for seed in range(args.seeds):
            exp = build_experiment(proto, source=str(path), base_dir=path.parent, seed=seed)
            errors: list[float] = []
            result = make_trainer(exp).run([lambda r: errors.append(r.error)])
            resolution = resolution_band(output_noise(proto, path, seed)) if squared else 0.0
            documented = DOCUMENTED_FLOOR.get(name, ())
            band = max(law, BENCH_FLOOR.get(name, 0.0), documented[seed] if seed < len(documented) else 0.0) \
                if law else 0.0
            c = growth_after_convergence(np.array(errors), band=max(band, resolution))
            rows.append((seed, result.final_test_error, c, resolution, band))
        worst = max(c.growth for _, _, c, _, _ in rows)
        worst_all = max(worst_all, worst)
        against = " (against the documented floor)" if law else ""
        print(f"{name}: {args.seeds} seeds in {time.perf_counter() - t0:.0f} s; worst growth after "
              f"convergence{against} {worst:.2f}{'' if worst < 3.0 else '  NOT within noise'}", flush=True)
        for seed, test, c, resolution, band in rows:
            res = (f", bench resolution {resolution:.3g}" if resolution else "") + (
                f", documented floor {band:.3g}" if band else "")
            print(f"  seed {seed}: final test error {test:.3g}, floor {c.floor:.3g} reached at step "
                  f"{c.converged_at}{res}, growth {c.growth:.2f}", flush=True)
    print(f"worst growth after convergence over every protocol and seed: {worst_all:.2f} "
          f"({'every protocol within its criterion' if worst_all < 3.0 else 'NOT every protocol within 3'})")


if __name__ == "__main__":
    main()
