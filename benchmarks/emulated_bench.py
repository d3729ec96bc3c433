"""The emulated bench against the simulator, and under a faulty serial link.

1. ``protocols/demo.toml`` on ``protocols/benches/example-16.toml``: the bench's model in
   the simulator vs the same model behind the real driver stack (pty + emulated DAQ),
   noise off and on: are the tap trajectories identical, and the error floors?
2. 500 steps through the driver stack with 1 % of the serial bytes dropped or
   corrupted (0.5 % each, both directions): does every step complete, and does the
   read-back show every edge at its commanded tap after every step?

Usage: python benchmarks/emulated_bench.py [--steps 400] [--fault-steps 500]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from clln.benchfile import parse_bench
from clln.benchrun import bench_experiment
from clln.controller import Trainer
from clln.protocol import parse_protocol
from clln.simulator.bench import Faults

ROOT = Path(__file__).resolve().parents[1]
BENCH = (ROOT / "protocols" / "benches" / "example-16.toml").read_text()
DEMO = (ROOT / "protocols" / "demo.toml").read_text()


def run(target: str, steps: int, bench_text: str, faults: Faults | None = None, verify: bool = False):
    proto = parse_protocol(DEMO, "demo.toml")
    exp, session = bench_experiment(proto, parse_bench(bench_text, "example-16.toml"), bench_text,
                                    source="demo.toml", bench_source="example-16.toml",
                                    target=target, steps=steps, faults=faults)
    trajectory: list[np.ndarray] = []
    tests: list[float] = []
    mismatches = 0

    def record(rec: object) -> None:
        nonlocal mismatches
        trajectory.append(exp.backend.read_edges().taps)
        if rec.test_error is not None:
            tests.append(rec.test_error)
        if verify:
            backend = session.backend
            if not np.array_equal(backend.potbank.get_all()[backend.chain], trajectory[-1]):
                mismatches += 1

    t0 = time.perf_counter()
    try:
        Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run([record])
    finally:
        session.close()
    floor = float(np.median(tests[-max(3, len(tests) // 4):]))
    return np.array(trajectory), floor, time.perf_counter() - t0, mismatches, session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--fault-steps", type=int, default=500)
    args = parser.parse_args()
    quiet = BENCH.replace("seed = 1\n", "seed = 1\n[emulator.parameters]\nai_noise_rms = 0.0\n", 1)
    print("| bench model | simulator floor | emulated floor | identical tap trajectory |")
    print("| --- | --- | --- | --- |")
    for label, text in (("pot-bench, noise off", quiet), ("pot-bench, noise on", BENCH)):
        sim, f_sim, t_sim, _, _ = run("simulate", args.steps, text)
        emu, f_emu, t_emu, _, _ = run("emulate", args.steps, text)
        same = sim.shape == emu.shape and np.array_equal(sim, emu)
        print(f"| {label} | {f_sim:.4g} | {f_emu:.4g} | {'yes' if same else 'no'} "
              f"({len(sim)} steps; {t_sim:.1f} s vs {t_emu:.1f} s) |", flush=True)
    traj, floor, wall, mismatches, session = run(
        "emulate", args.fault_steps, BENCH, Faults(drop=0.005, corrupt=0.005, seed=11), verify=True)
    bank = session.backend.potbank
    fw = session.emulator.firmware
    print(f"\nfaulty link (0.5 % dropped + 0.5 % corrupted bytes): {len(traj)}/{args.fault_steps} steps, "
          f"read-back mismatches {mismatches}, frames sent {bank.frames_sent}, retries {bank.retries_used}, "
          f"damaged replies dropped {bank.frames_dropped}, damaged requests dropped by the firmware "
          f"{fw.crc_errors}, error floor {floor:.4g}, {wall:.1f} s")


if __name__ == "__main__":
    main()
