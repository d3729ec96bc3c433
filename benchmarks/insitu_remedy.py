"""Standard clamping vs overclamping on the comparator-clocked twin bench, whose learning
bias comes only from its parts (op-amp and comparator offsets, twin mismatch).

``protocols/insitu-pot-regression.toml`` run for each seed in three settings of the
rig's keys: standard (eta 1 through the divider, one 100 us window per sample), hinge +
NOR (800 us shared among the samples outside a 10 mV margin), and overclamping as in
seed 002's remedy (eta 2.48 through a declared 10x amplifier, 800 us, NOR on). Prints
the median over seeds of the final test error, its ratio to the initial one, and the
mean number of taps the edges moved in the last quarter of the run (drift at the floor),
the error against the standard setting measured in the same run.

``--bench transistor-16``: seed 002's remedy on the twin transistor bench whose bias
comes from its parts (device mismatch, amplifier and driver offsets, leakage,
asymmetric charging): ``protocols/seed002/remedy-standard.toml`` (eta 128/129, 25 us)
against ``protocols/seed002/remedy-overclamp.toml`` (eta 2.48 through the 10x
amplifier, 200 us with NOR), 5,000 steps, each seed. Prints the final test MSE and the
drift of the gate voltages along the task's null space: the gate change projected onto
the null space of d(training outputs)/d(gates) (the free twin), taken at the start and
at a fifth of the run (the change from there to the end), medians over seeds and the
standard / overclamp factors.

Usage: python benchmarks/insitu_remedy.py [--seeds 5] [--steps 200]
       python benchmarks/insitu_remedy.py --bench transistor-16 [--seeds 5] [--steps 5000] [--jobs 1]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from clln.compose import build_experiment, make_trainer
from clln.controller.insitu import InSituRecord
from clln.protocol import load_protocol, parse_protocol
from clln.simulator.insitu_transistor import TransistorTwinPhysics

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "protocols" / "insitu-pot-regression.toml").read_text()
SETTINGS = {
    "standard": {},
    "hinge + NOR": {"hinge = false": "hinge = true", "margin = 0.0 ": "margin = 0.01 ",
                    "normalise = false": "normalise = true",
                    "learn_time_us = 100.0": "learn_time_us = 800.0"},
    "overclamp (10x amp)": {"eta = 1.0 ": "eta = 2.48\namplifier_gain = 10.0 ",
                            "normalise = false": "normalise = true",
                            "learn_time_us = 100.0": "learn_time_us = 800.0"},
}


def run(changes: dict[str, str], seed: int, steps: int) -> tuple[float, float, float]:
    text = TEXT.replace("steps = 60", f"steps = {steps}")
    for old, new in changes.items():
        text = text.replace(old, new)
    protocol = parse_protocol(text, "insitu-pot-regression.toml")
    trainer = make_trainer(build_experiment(protocol, source="p", base_dir=ROOT, seed=seed))
    records: list[InSituRecord] = []
    trainer.on_record = records.append  # type: ignore[attr-defined]
    result = trainer.run()
    states = np.array([r.state for r in records])
    tail = states[-(steps // 4):]
    drift = float(np.abs(np.diff(tail, axis=0)).sum(axis=0).mean())
    return result.initial_test_error, result.final_test_error, drift


# -- transistor-16: the remedy on physical bias ------------------------------------

TRANSISTOR_ARMS = {"standard": ROOT / "protocols" / "seed002" / "remedy-standard.toml",
                   "overclamp": ROOT / "protocols" / "seed002" / "remedy-overclamp.toml"}


def output_jacobian(physics: TransistorTwinPhysics, sources: np.ndarray, gates: np.ndarray,
                    h: float = 1e-4) -> np.ndarray:
    """d(outputs of every training sample) / d(gates) of the free twin, (N * n_out, m),
    by central differences of ``h`` V on a solver of its own (the run's state untouched)."""
    solver = physics.solvers[0]
    extra = np.zeros(solver.network.n_edges - len(gates))
    outs = list(physics.output_nodes)
    cols = []
    for j in range(len(gates)):
        step = np.zeros(len(gates))
        step[j] = h
        up, down = (solver.solve(np.r_[gates + s, extra], sources).voltages[:, outs] for s in (step, -step))
        cols.append(((up - down) / (2 * h)).ravel())
    return np.array(cols).T


def null_drift(jacobian: np.ndarray, change: np.ndarray) -> float:
    """Length (V) of ``change`` projected onto the null space of ``jacobian``: the
    directions of gate space that move no training output to first order (right
    singular vectors beyond the rank, singular values below 1e-6 of the largest)."""
    _, sv, vt = np.linalg.svd(jacobian)
    rank = int(np.sum(sv > 1e-6 * sv[0]))
    null = vt[rank:]
    return float(np.linalg.norm(null @ change))


def transistor_run(path: Path, seed: int, steps: int | None, settle: int) -> dict[str, float]:
    """One arm, one seed: final test MSE, and the drift of the free twin's gates along the
    null space (from the start, and from step ``settle`` on, each against the null
    space of the task at the first gates of the span)."""
    protocol, _ = load_protocol(path)
    exp = build_experiment(protocol, source=str(path), base_dir=ROOT, seed=seed, steps=steps)
    physics = exp.backend.physics  # type: ignore[attr-defined]
    trainer = make_trainer(exp)
    states: dict[int, np.ndarray] = {}
    errors: dict[int, float] = {}

    def keep(rec: InSituRecord) -> None:
        if rec.step in (0, settle):
            states[rec.step] = rec.state.copy()
        states[-1] = rec.state
        errors[rec.step] = rec.train_error

    trainer.on_record = keep  # type: ignore[attr-defined]
    started = time.process_time()
    result = trainer.run()
    cpu = time.process_time() - started
    sources = trainer.experiment.train_sources  # type: ignore[attr-defined]
    start, late, end = states[0], states.get(settle, states[0]), states[-1]
    return {
        "test_mse": result.final_test_error,
        "initial_test_mse": result.initial_test_error,
        "drift_start": null_drift(output_jacobian(physics, sources, start), end - start),
        "drift_late": null_drift(output_jacobian(physics, sources, late), end - late),
        "moved_late": float(np.linalg.norm(end - late)),
        "cpu_s": cpu,
    }


def transistor_bench(seeds: int, steps: int | None, jobs: int = 1) -> None:
    total = steps or load_protocol(TRANSISTOR_ARMS["standard"])[0].training.steps
    settle = total // 5
    tasks = [(arm, seed) for arm in TRANSISTOR_ARMS for seed in range(1, seeds + 1)]
    runs: dict[tuple[str, int], dict[str, float]] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:  # each run is independent and seeded
        futures = {pool.submit(transistor_run, TRANSISTOR_ARMS[arm], seed, steps, settle): (arm, seed)
                   for arm, seed in tasks}
        for future in as_completed(futures):
            arm, seed = futures[future]
            r = runs[arm, seed] = future.result()
            print(f"{arm:9s} seed {seed}: test MSE {r['initial_test_mse']:.3g} -> {r['test_mse']:.3g} V^2, "
                  f"null-space drift {r['drift_start'] * 1e3:.1f} mV from the start, "
                  f"{r['drift_late'] * 1e3:.1f} mV from step {settle} (moved {r['moved_late'] * 1e3:.1f} mV), "
                  f"{r['cpu_s']:.0f} s CPU", flush=True)
    rows = {arm: {key: float(np.median([runs[arm, seed][key] for seed in range(1, seeds + 1)]))
                  for key in runs[arm, 1]} for arm in TRANSISTOR_ARMS}
    std, over = rows["standard"], rows["overclamp"]
    print(f"transistor-16, {seeds} seeds, {total} steps; medians over seeds")
    print(f"{'arm':10s} {'test MSE V^2':>13s} {'drift from start mV':>20s} {f'drift from {settle} mV':>20s}")
    for arm, r in rows.items():
        print(f"{arm:10s} {r['test_mse']:13.3g} {r['drift_start'] * 1e3:20.2f} {r['drift_late'] * 1e3:20.2f}")
    print(f"standard / overclamp: test MSE {std['test_mse'] / over['test_mse']:.3g}x, "
          f"drift from the start {std['drift_start'] / over['drift_start']:.3g}x, "
          f"drift from step {settle} {std['drift_late'] / over['drift_late']:.3g}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps (default: 200 on comparator-twin, the protocols' 5,000 on transistor-16)")
    parser.add_argument("--jobs", type=int, default=1, help="transistor-16: runs in parallel processes")
    parser.add_argument("--bench", choices=("comparator-twin", "transistor-16"), default="comparator-twin")
    args = parser.parse_args()
    if args.bench == "transistor-16":
        transistor_bench(args.seeds, args.steps, args.jobs)
        return
    args.steps = args.steps or 200
    rows = {}
    for name, changes in SETTINGS.items():
        runs = np.array([run(changes, seed, args.steps) for seed in range(1, args.seeds + 1)])
        rows[name] = (np.median(runs[:, 1]), np.median(runs[:, 1] / runs[:, 0]), np.median(runs[:, 2]))
    base = rows["standard"]
    print(f"{args.seeds} seeds, {args.steps} steps; medians over seeds")
    print(f"{'setting':22s} {'test MSE V^2':>13s} {'final/initial':>14s} {'MSE vs std':>11s} "
          f"{'taps moved per edge, last quarter':>34s}")
    for name, (mse, ratio, drift) in rows.items():
        print(f"{name:22s} {mse:13.3g} {ratio:14.3g} {mse / base[0]:11.3g} {drift:34.3g}")


if __name__ == "__main__":
    main()
