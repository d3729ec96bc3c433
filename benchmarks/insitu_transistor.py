"""transistor-16 learning in place: protocols/insitu-transistor-regression.toml (or with
``--xor`` protocols/insitu-transistor-xor.toml) over seeds 1-5 (tasks, devices, parts and
start gates): test error final / initial per seed, test accuracy for XOR, the medians;
CPU time per run.

    python benchmarks/insitu_transistor.py [--seeds 5] [--steps 60] [--xor] [--jobs 1]
    python benchmarks/insitu_transistor.py --speed [--steps 5]

``--speed``: CPU time per training step of the reference path (sparse Newton per twin,
adaptive Heun) and of the fast one (dense batched Newton, Bogacki-Shampine 3(2)) in the
same run, and the accuracy of one learning window: every window of the reference run
integrated again from the same gates by both paths and by a tight solution (the fast
path at ``step_tolerance`` 1e-8 V); the largest gate-voltage differences over all
windows are printed.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from clln.compose import build_experiment, make_trainer
from clln.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "protocols" / "insitu-transistor-regression.toml"
XOR = ROOT / "protocols" / "insitu-transistor-xor.toml"


def one_seed(path: Path, seed: int, steps: int | None) -> dict[str, float | None]:
    """One seeded run: initial and final test MSE (V^2), first and last test accuracy
    (classification), CPU seconds."""
    protocol, _ = load_protocol(path)
    t0 = time.process_time()
    exp = build_experiment(protocol, source=str(path), base_dir=ROOT, seed=seed, steps=steps)
    tests: list[float | None] = []
    trainer = make_trainer(exp)
    trainer.on_record = lambda rec: (  # type: ignore[attr-defined]
        tests.append(rec.test_accuracy) if rec.test_error is not None else None)
    result = trainer.run()
    return {"initial": result.initial_test_error, "final": result.final_test_error,
            "first_accuracy": tests[0], "accuracy": tests[-1], "cpu_s": time.process_time() - t0}


def seeds(path: Path, count: int, steps: int | None, jobs: int = 1) -> None:
    with ProcessPoolExecutor(max_workers=jobs) as pool:  # seeded runs, independent
        runs = list(pool.map(one_seed, [path] * count, range(1, count + 1), [steps] * count))
    for seed, r in enumerate(runs, start=1):
        accuracy = "" if r["accuracy"] is None else f", test accuracy {r['first_accuracy']:.3f} -> {r['accuracy']:.3f}"
        print(f"seed {seed}: test MSE {r['initial']:.3e} -> {r['final']:.3e} V^2 "
              f"(final/initial {r['final'] / r['initial']:.4f}){accuracy}, {r['cpu_s']:.1f} s CPU")
    ratios = [r["final"] / r["initial"] for r in runs]
    accuracies = [r["accuracy"] for r in runs if r["accuracy"] is not None]
    print(f"{path.name}, {count} seeds: median test MSE {np.median([r['final'] for r in runs]):.3e} V^2, "
          f"median final/initial {np.median(ratios):.4f}; improved: {sum(q < 1 for q in ratios)}/{count}"
          + (f"; median test accuracy {np.median(accuracies):.3f} (each: "
             f"{', '.join(f'{a:.3f}' for a in accuracies)})" if accuracies else ""))


def speed(steps: int) -> None:
    protocol, _ = load_protocol(PROTOCOL)
    per_step, windows = {}, []
    for reference in (True, False):
        exp = build_experiment(protocol, source=str(PROTOCOL), base_dir=ROOT, seed=1, steps=steps)
        physics = exp.backend.physics  # type: ignore[attr-defined]
        physics.reference = reference
        if reference:  # keep every window: (sources, clamps, duration, free clamps, gates)
            learn = physics.learn

            def spy(src, clamps, duration, free_clamps=None, _learn=learn, _ph=physics):  # noqa: ANN001, ANN202
                windows.append((src, clamps, duration, free_clamps, _ph.gates.copy()))
                return _learn(src, clamps, duration, free_clamps)
            physics.learn = spy
        t0 = time.process_time()
        make_trainer(exp).run()
        per_step[reference] = (time.process_time() - t0) / steps
        print(f"{'reference' if reference else 'fast':9s}: {per_step[reference] * 1e3:8.1f} ms CPU per step "
              f"({physics.evaluations} gate-rate evaluations in {steps} steps)", flush=True)
    print(f"speed-up per step: {per_step[True] / per_step[False]:.1f}x")
    exp = build_experiment(protocol, source=str(PROTOCOL), base_dir=ROOT, seed=1, steps=steps)
    physics = exp.backend.physics  # type: ignore[attr-defined]
    tolerance = physics.params.step_tolerance
    ends = {}
    for name, ref, params in (("reference", True, physics.params), ("fast", False, physics.params),
                              ("tight", False, replace(physics.params, step_tolerance=1e-8))):
        physics.reference, physics.params = ref, params
        out = []
        for src, clamps, duration, free_clamps, gates in windows:
            physics.gates = gates.copy()
            physics.learn(src, clamps, duration, free_clamps)
            out.append(physics.gates - gates)
        ends[name] = np.array(out)
    moved = np.abs(ends["tight"]).max()
    print(f"{len(windows)} windows of {windows[0][2] * 1e6:.0f} us; step_tolerance {tolerance:g} V; "
          f"largest gate movement in a window {moved * 1e3:.1f} mV")
    for a, b in (("fast", "reference"), ("reference", "tight"), ("fast", "tight")):
        print(f"max |gate {a} - gate {b}| over a window: {np.abs(ends[a] - ends[b]).max() * 1e3:.4f} mV")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--speed", action="store_true", help="reference vs fast path, and window accuracy")
    parser.add_argument("--xor", action="store_true", help="protocols/insitu-transistor-xor.toml instead")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    args = parser.parse_args()
    if args.speed:
        speed(args.steps or 5)
    else:
        seeds(XOR if args.xor else PROTOCOL, args.seeds, args.steps, args.jobs)


if __name__ == "__main__":
    main()
