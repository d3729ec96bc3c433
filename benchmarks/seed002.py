"""Seed 002's limit cycles on the physical model: the twin transistor pair that learns in
place, two tasks alternated with period tau (``protocols/seed002/limit-cycles.toml``).
Prints D^2(tau) and MSE(tau) of the model beside the measured ones (benchmarks/data/seed002),
the log-log slope of D^2 at small tau, the saturation at large tau, and writes
docs/seed002-*.png. ``clln analyze protocols/seed002/limit-cycles.toml`` prints the same.

    python benchmarks/seed002.py [--file protocols/seed002/limit-cycles.toml] [--figures docs]

Mapping: the rig runs one step (free measurement, nudge, learning window) every
1/step_rate s, so a period tau holds tau * step_rate steps, tau/2 * step_rate per task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clln.analysis.seed002 import overlay_lines
from clln.seed002 import LimitCycleExperiment, progress_line

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=ROOT / "protocols" / "seed002" / "limit-cycles.toml",
                        help="the limit-cycle experiment (tau list, parts, measurements)")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    experiment = LimitCycleExperiment(args.file)
    cycles = experiment.cycles(lambda c, cpu: print(progress_line(c, cpu), flush=True))
    numbers, figures, _ = experiment.write(cycles, args.figures, json_name=None)  # numbers printed
    for line in overlay_lines(numbers):
        print(line)
    for figure in figures:
        print(f"figure: {figure}")


if __name__ == "__main__":
    main()
