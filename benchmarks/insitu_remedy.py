"""Standard clamping vs overclamping on the comparator-clocked twin bench, whose learning
bias comes only from its parts (op-amp and comparator offsets, twin mismatch).

``protocols/insitu-pot-regression.toml`` run for each seed in three settings of the
rig's keys: standard (eta 1 through the divider, one 100 us window per sample), hinge +
NOR (800 us shared among the samples outside a 10 mV margin), and overclamping as in
seed 002's remedy (eta 2.48 through a declared 10x amplifier, 800 us, NOR on). Prints
the median over seeds of the final test error, its ratio to the initial one, and the
mean number of taps the edges moved in the last quarter of the run (drift at the floor),
the error against the standard setting measured in the same run.

Usage: python benchmarks/insitu_remedy.py [--seeds 5] [--steps 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from clln.compose import build_experiment, make_trainer
from clln.controller.insitu import InSituRecord
from clln.protocol import parse_protocol

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
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
