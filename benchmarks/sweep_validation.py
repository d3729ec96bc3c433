"""How long a large sweep takes to validate (before anything runs).

Writes a sweep of ``--points`` grid points over regression-2x2.toml, two keys of one
protocol table (the slowest case: every point is a distinct setting of that table), and
times ``load_sweep``.

Usage: python benchmarks/sweep_validation.py [--points 1000000]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

from clln.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    args = parser.parse_args()
    side = math.isqrt(args.points)
    work = Path(tempfile.mkdtemp(prefix="clln-sweep-validation-"))
    shutil.copy(ROOT / "protocols" / "regression-2x2.toml", work / "p.toml")
    etas = ", ".join(f"{0.01 + i * 1e-4:.6f}" for i in range(side))
    alphas = ", ".join(f"{0.01 + i * 1e-6:.8f}" for i in range(side))
    (work / "s.toml").write_text(f'format = 1\nname = "big"\nprotocol = "p.toml"\n[grid]\n'
                                 f'"training.eta" = [{etas}]\n"training.alpha" = [{alphas}]\n')
    t0 = time.perf_counter()
    sweep = load_sweep(work / "s.toml")
    print(f"{len(sweep.runs):,} runs validated in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
