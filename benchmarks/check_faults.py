"""How well ``clln check`` names wiring faults on the emulated example-16.

For each of several emulated part draws (``[emulator] seed``), the check runs on the
sound bench and with random single faults injected (two AI channels swapped, two
chain positions swapped, an open or a shorted edge). Prints, per draw and overall,
how many faults were named right, and the check's score (rms difference between
readings and the map at the worst tap setting, % of the drive) before and after.

Usage: python benchmarks/check_faults.py [--draws 10] [--faults 6] [--seed 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from clln.benchcheck import parse_faults, run_check
from clln.benchfile import parse_bench
from clln.benchrun import open_bench

BENCH = Path(__file__).resolve().parents[1] / "protocols" / "benches" / "example-16.toml"


def random_fault(rng: np.random.Generator, n_ai: int, n_edges: int) -> tuple[str, tuple[str, tuple[int, ...]]]:
    """A fault spec and what the check should answer (kind, parts)."""
    kind = str(rng.choice(["swap-ai", "swap-chain", "open", "short"]))
    if kind in ("swap-ai", "swap-chain"):
        a, b = sorted(int(k) for k in rng.choice(n_ai if kind == "swap-ai" else n_edges, 2, replace=False))
        return f"{kind}:{a}:{b}", (kind, (a, b))
    j = int(rng.integers(n_edges))
    return f"{kind}:{j}", (kind, (j,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--faults", type=int, default=6)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    text = BENCH.read_text()
    rng = np.random.default_rng(args.seed)
    right = total = 0
    sound_scores: list[float] = []
    fault_scores: list[float] = []
    after_scores: list[float] = []
    start = time.perf_counter()
    for draw in range(1, args.draws + 1):
        variant = text.replace('preset = "pot-bench"\nseed = 1', f'preset = "pot-bench"\nseed = {draw}')
        bench = parse_bench(variant, "example-16")
        # chain position k sits in edge k on example-16, so edge and chain indices agree
        cases = [("", None)] + [random_fault(rng, bench.nodes, len(bench.edges)) for _ in range(args.faults)]
        named = 0
        for spec, expected in cases:
            edge_faults, wiring = parse_faults([spec] if spec else [], bench)
            session = open_bench(bench, variant, target="emulate", edge_faults=edge_faults, wiring_faults=wiring)
            try:
                result = run_check(session.backend, bench)
            finally:
                session.close()
            found = [(f.kind, f.parts) for f in result.faults]
            ok = found == ([] if expected is None else [expected]) and len(result.lines) == len(found)
            named += ok
            (sound_scores if expected is None else fault_scores).append(result.rms_before / result.amplitude)
            after_scores.append(result.rms_after / result.amplitude)
        right += named
        total += len(cases)
        print(f"draw {draw:2d}: {named}/{len(cases)} right", flush=True)
    print(f"\n{right}/{total} checks right ({args.draws} sound benches, {total - args.draws} single faults), "
          f"{time.perf_counter() - start:.1f} s")
    print(f"score, % of the drive: sound benches at most {100 * max(sound_scores):.2f}; faulty benches "
          f"{100 * min(fault_scores):.2f}-{100 * max(fault_scores):.2f} before, at most "
          f"{100 * max(after_scores):.2f} after naming (reported when above 5 % unexplained)")


if __name__ == "__main__":
    main()
