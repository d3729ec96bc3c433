"""Nonlinear tasks on transistor-16 against the same protocols on linear edges.

For ``protocols/xor.toml`` and ``protocols/nonlinear-regression.toml`` this trains, for
``--seeds`` seeds each, the protocol as shipped (transistor edges, preset
transistor-16) and the same protocol with linear edges (``[edges]`` replaced by
continuous conductances in [1e-5, 1e-2] S, coupled rule with ``--linear-alpha`` S/V^2,
ideal bench), and prints the median test error (task cost), accuracy (classification)
the worst seed's accuracy and, for regression, the least-squares floor of any output
affine in the inputs.

Usage: python benchmarks/nonlinear_tasks.py [--seeds 5] [--linear-alpha 0.02] [--steps N]
       [--protocols xor,nonlinear-regression]
"""

from __future__ import annotations

import argparse
import copy
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from clln.compose import build_experiment, make_trainer
from clln.protocol import Protocol
from clln.runtime import limit_bundled_blas

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("xor", "nonlinear-regression")
LINEAR_EDGES = {"kind": "continuous", "gmin": 1e-5, "gmax": 1e-2, "init": [1e-3, 2e-3]}


def train(data: dict[str, Any], seed: int) -> tuple[float, float | None, float]:
    """(test error, accuracy, affine floor) after training."""
    exp = build_experiment(Protocol.model_validate(data), source=data["name"], base_dir=ROOT / "protocols",
                           seed=seed)
    trainer = make_trainer(exp)
    trainer.run()
    error, accuracy = trainer.evaluate(exp.task.test)
    floor = float("nan")
    if exp.task.kind == "regression":
        x, y = exp.task.test.x, exp.task.test.y
        affine = np.c_[x, np.ones(len(x))]
        floor = float(np.mean((y - affine @ np.linalg.lstsq(affine, y, rcond=None)[0]) ** 2))
    return error, accuracy, floor


def main() -> None:
    limit_bundled_blas(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--linear-alpha", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--protocols", default=",".join(NAMES))
    args = parser.parse_args()
    print(f"{'protocol':22s} {'edges':11s} {'median test error':>18s} {'median accuracy':>16s} "
          f"{'worst accuracy':>15s} {'affine floor':>13s}  per seed (test error/accuracy)")
    for name in args.protocols.split(","):
        base = tomllib.loads((ROOT / "protocols" / f"{name}.toml").read_text())
        if args.steps:
            base["training"]["steps"] = args.steps
        linear = copy.deepcopy(base)
        linear["edges"] = dict(LINEAR_EDGES)
        linear["training"]["alpha"] = args.linear_alpha
        linear["simulator"] = {"preset": "ideal"}
        for label, data in (("transistor", base), ("linear", linear)):
            runs = [train(data, seed) for seed in range(args.seeds)]
            errors = [r[0] for r in runs]
            accs = [r[1] for r in runs if r[1] is not None]
            acc = f"{np.median(accs):16.3f}" if accs else f"{'-':>16s}"
            worst = f"{np.min(accs):15.3f}" if accs else f"{'-':>15s}"
            print(f"{name:22s} {label:11s} {np.median(errors):18.3g} {acc} {worst} "
                  f"{np.median([r[2] for r in runs]):13.3g}  "
                  + ", ".join(f"{e:.3g}" + (f"/{a:.2f}" if a is not None else "") for e, a, _ in runs),
                  flush=True)


if __name__ == "__main__":
    main()
