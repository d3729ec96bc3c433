"""Seed 002's limit cycles on the physical model: the twin transistor pair that learns in
place, two tasks alternated with period tau. Prints D^2(tau) and MSE(tau) of the model
beside the measured ones (benchmarks/data/seed002), the log-log slope of D^2 at small tau,
the saturation at large tau, and writes docs/seed002-*.png.

    python benchmarks/seed002.py [--step-rate 1000] [--burn-in 0.3] [--gain 80]

Mapping: the rig runs one step (free measurement, nudge, learning window) every
1/step_rate s, so a period tau holds tau * step_rate steps, tau/2 * step_rate per task.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from clln.analysis.seed002 import (
    limit_cycle,
    loglog_slope,
    pair_physics,
    read_bowtie,
    read_measured,
)
from clln.simulator.insitu_transistor import EdgeCircuitParams

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "seed002"
TAUS = (0.004, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-rate", type=float, default=1000.0, help="steps per second")
    parser.add_argument("--burn-in", type=float, default=0.3, help="seconds before the measured cycle")
    parser.add_argument("--gain", type=float, default=80.0, help="multiplier gain, V/V^2")
    parser.add_argument("--eta", type=float, default=0.5)
    parser.add_argument("--figures", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    params = EdgeCircuitParams(multiplier_gain=args.gain)
    cycles = []
    for tau in TAUS:
        t0 = time.perf_counter()
        cycle = limit_cycle(pair_physics(params), tau, step_rate=args.step_rate, eta=args.eta,
                            burn_in_s=args.burn_in)
        cycles.append(cycle)
        print(f"tau {tau:6.3f} s  steps/cycle {len(cycle.gates):5d}  D2 {cycle.d2:.3e} V^2  "
              f"MSE {cycle.mse:.3e} V^2  ({time.perf_counter() - t0:.1f} s)", flush=True)
    tau = np.array(TAUS)
    d2 = np.array([c.d2 for c in cycles])
    mse = np.array([c.mse for c in cycles])
    print(f"model: D2 log-log slope over tau <= 0.02 s: {loglog_slope(tau[:3], d2[:3]):.2f}; "
          f"D2(1.0 s) / D2(0.5 s) = {d2[-1] / d2[-2]:.2f} (tau^2 would give 4); "
          f"MSE(0.01) / MSE(0.004) = {mse[1] / mse[0]:.2f}; MSE(1.0) / MSE(0.004) = {mse[-1] / mse[0]:.1f}")
    md, mm = read_measured(DATA, "DG2", 1), read_measured(DATA, "MSE", 1)
    print("tau (s) | model D2 | measured D2 (exp1) | model MSE | measured MSE (exp1)   [V^2]")
    for t, d, e in zip(tau, d2, mse):
        at = lambda table: float(np.exp(np.interp(np.log(t), np.log(table[:, 0]), np.log(table[:, 1]))))  # noqa: E731
        print(f"{t:7.3f} | {d:.2e} | {at(md):.2e} | {e:.2e} | {at(mm):.2e}")
    for k in (1, 2, 3):
        md = read_measured(DATA, "DG2", k)
        mm = read_measured(DATA, "MSE", k)
        small = md[md[:, 0] <= np.quantile(md[:, 0], 0.3)]
        print(f"measured exp{k}: D2 slope over the smallest 30 % of tau: "
              f"{loglog_slope(small[:, 0], small[:, 1]):.2f}; D2 last/previous "
              f"{md[-1, 1] / md[-2, 1]:.2f}; MSE last/first {mm[-1, 1] / mm[0, 1]:.2f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    args.figures.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for k in (1, 2, 3):
        md, mm = read_measured(DATA, "DG2", k), read_measured(DATA, "MSE", k)
        axes[0].loglog(md[:, 0], md[:, 1], "o", ms=3, label=f"measured exp{k}")
        axes[1].loglog(mm[:, 0], mm[:, 1], "o", ms=3, label=f"measured exp{k}")
    axes[0].loglog(tau, d2, "k-", label="model")
    axes[1].loglog(tau, mse, "k-", label="model")
    axes[0].set(xlabel="tau (s)", ylabel="D^2 (V^2)")
    axes[1].set(xlabel="tau (s)", ylabel="MSE (V^2)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.figures / "seed002-d2-mse.png", dpi=120)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for path in sorted(DATA.glob("bowtie-exp1-*.csv")):
        g = read_bowtie(path)
        ax.plot(g[:, 0] - g[:, 0].mean(), g[:, 1] - g[:, 1].mean(), ".", ms=2, label=f"measured {path.stem}")
    for c in (c for c in cycles if c.tau in (0.02, 0.1, 0.2)):  # beside the measured 0.02, 0.08, 0.2 s
        ax.plot(c.gates[:, 0] - c.gates[:, 0].mean(), c.gates[:, 1] - c.gates[:, 1].mean(), "-",
                label=f"model tau {c.tau:g} s")
    ax.set(xlabel="gate 1 - mean (V)", ylabel="gate 2 - mean (V)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.figures / "seed002-bowtie.png", dpi=120)


if __name__ == "__main__":
    main()
