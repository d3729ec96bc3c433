"""Calibration of the emulated 16-edge bench against its hidden truth, in one run.

Every number is measured here, on ``protocols/benches/example-16.toml`` behind the real
driver stack (potentiometer firmware on a pty, emulated DAQ, emulated SMU), with the
``pot-bench`` imperfections and their noise on:

1. per-edge conductance error over every tap: calibrated (SMU scale, and datasheet
   prior scale without the SMU) against datasheet values; the same over five
   emulator seeds (five drawn benches); the cost: DAQ acquisitions, tap writes,
   serial frames, SMU readings, emulated bench time;
2. the DAQ channels: AI offsets, AO gains, offsets and output impedances against the
   model's (the AO figures are relative to the AI channels, the reference);
3. tomography: every conductance at four fresh tap states against the truth, on the
   healthy bench and with a stuck wiper and an open edge injected (flags); an open
   edge that leaves its neighbour without current;
4. the 2x2 regression (``protocols/bench-regression-2x2.toml``) with the calibration
   and with datasheet values: (a) the protocol's random map, trained in situ; (b) a map
   the bench can realize, trained in situ from random taps, and trained on the
   controller's model of the bench, programmed onto the bench, then fine-tuned in situ.

Usage: python benchmarks/calibration.py [--seeds 3] [--steps 1500] [--model-steps 3000] [--quick]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from clln.benchfile import Bench, bench_hash, hardware_hash, parse_bench
from clln.benchrun import bench_experiment, bench_network, nominal_edges, open_bench
from clln.calibrate import BenchCounter
from clln.controller import Dataset, SteppedEdges, Trainer
from clln.controller.calibration import Calibration, calibrate, verify
from clln.protocol import parse_protocol
from clln.simulator import SimulatedBackend
from clln.simulator.bench import EdgeFaults

ROOT = Path(__file__).resolve().parents[1]
BENCH = (ROOT / "protocols" / "benches" / "example-16.toml").read_text()
PROTOCOL = (ROOT / "protocols" / "bench-regression-2x2.toml").read_text()


def without_smu(text: str) -> str:
    start = text.index("[smu]")
    return text[:start] + text[text.index("[emulator]"):]


def with_seed(text: str, seed: int) -> str:
    return text.replace("preset = \"pot-bench\"\nseed = 1\n", f"preset = \"pot-bench\"\nseed = {seed}\n", 1)


def errors(table: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    rel = table / truth - 1.0
    return float(np.sqrt(np.mean(rel**2))), float(np.abs(rel).max())


def calibrate_emulated(text: str, *, seed: int = 0) -> tuple[Calibration, dict[str, Any], Any]:
    bench = parse_bench(text, "example-16.toml")
    session = open_bench(bench, text, target="emulate")
    try:
        counter = BenchCounter(session, bench)
        meta = {"bench": bench.name, "bench_sha256": bench_hash(text),
                "hardware_sha256": hardware_hash(bench), "clln_version": "benchmark"}
        run = calibrate(session.backend, nominal=nominal_edges(bench), meter=session.open_meter(bench),
                        rng=np.random.default_rng(seed), meta=meta)
        cost = counter.cost(run.calibration.summary)
        assert session.emulator is not None
        model = session.emulator.model
        return run.calibration, {"table": model.true_table(), **model.true_channels()}, cost
    finally:
        session.close()


def part1(quick: bool) -> tuple[Calibration, dict[str, Any]]:
    print("1. per-edge tap -> conductance, error over all 129 taps x 16 edges vs the hidden truth")
    print("| bench (emulator seed) | scale | datasheet rms / max | calibrated rms / max | "
          "DAQ acquisitions | tap writes (serial frames) | SMU readings | emulated bench time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    nominal = nominal_edges(parse_bench(BENCH, "b")).table
    first: tuple[Calibration, dict[str, Any]] | None = None
    seeds = [1] if quick else [1, 2, 3, 4, 5]
    for bench_seed in seeds:
        for smu in ([True, False] if bench_seed == 1 else [True]):
            text = with_seed(BENCH if smu else without_smu(BENCH), bench_seed)
            cal, truth, cost = calibrate_emulated(text)
            d_rms, d_max = errors(nominal, truth["table"])
            c_rms, c_max = errors(cal.table, truth["table"])
            print(f"| {bench_seed} | {cal.scale} | {d_rms:.2%} / {d_max:.2%} | {c_rms:.3%} / {c_max:.3%} | "
                  f"{cost.acquisitions} ({cost.boundary_conditions} boundary conditions) | "
                  f"{cost.tap_writes} ({cost.serial_frames}) | {cost.meter_readings} | "
                  f"{cost.bench_seconds:.1f} s (DAQ clock and SMU {cost.daq_seconds:.1f} s, serial "
                  f"{cost.serial_seconds:.2f} s) |", flush=True)
            if first is None:
                first = (cal, truth)
    assert first is not None
    return first


def part2(cal: Calibration, truth: dict[str, Any]) -> None:
    print("\n2. DAQ channels (seed 1)")
    ch = cal.channels
    print(f"AI offsets: max |true| {np.abs(truth['ai_offset']).max() * 1e6:.0f} uV, max |calibrated - "
          f"true| {np.abs(ch.ai_offset - truth['ai_offset']).max() * 1e6:.1f} uV")
    bench = parse_bench(BENCH, "b")
    driven = list(bench.sources.nodes) + list(bench.clamps.nodes)
    a_d = truth["ai_gain"][driven]
    gain_eff = (1 + a_d) * (1 + truth["ao_gain"]) - 1  # relative to the node's AI channel
    offset_eff = (1 + a_d) * truth["ao_offset"]
    print(f"AO gains (vs AI): true {np.round(gain_eff * 1e6).tolist()} ppm, calibrated "
          f"{np.round(ch.ao_gain * 1e6).tolist()} ppm, max error "
          f"{np.abs(ch.ao_gain - gain_eff).max() * 1e6:.0f} ppm")
    print(f"AO offsets: max |true| {np.abs(offset_eff).max() * 1e6:.0f} uV, max error "
          f"{np.abs(ch.ao_offset - offset_eff).max() * 1e6:.1f} uV")
    assert ch.ao_impedance is not None
    print(f"AO output impedance: true {truth['source_impedance'][0]:.3f} ohm, calibrated "
          f"{np.round(ch.ao_impedance, 3).tolist()} ohm")


def part3(cal: Calibration) -> None:
    print("\n3. tomography at 4 fresh tap states (SMU scale) vs the hidden truth")
    print("| injected faults | flagged | max error, unflagged edges | rms error vs calibration | "
          "verdict | DAQ acquisitions | emulated time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    bench = parse_bench(BENCH, "b")
    for faults in ([], ["stuck:2:30", "open:9"], ["open:4"]):
        ef = EdgeFaults.parse(faults, 16, 129) if faults else None
        session = open_bench(bench, BENCH, target="emulate", calibration=cal, edge_faults=ef,
                             noise_seed=7)
        try:
            counter = BenchCounter(session, bench)
            result = verify(session.backend, cal, meter=session.open_meter(bench),
                            rng=np.random.default_rng(11))
            cost = counter.cost(result.check.counts)
            assert session.emulator is not None
            table = session.emulator.model.true_table()
        finally:
            session.close()
        c = result.check
        truth = table[np.arange(16)[None, :], c.taps]
        ok = [j for j in range(16) if j not in c.flags]
        worst = float(np.nanmax(np.abs(c.estimate[:, ok] / truth[:, ok] - 1)))
        flagged = ", ".join(f"{j} {w}" for j, w in sorted(c.flags.items())) or "none"
        print(f"| {', '.join(faults) or 'none (healthy)'} | {flagged} | {worst:.2%} | {c.rms_error:.3%} | "
              f"{'holds' if result.holds else 'does not hold'} | {cost.acquisitions} | "
              f"{cost.bench_seconds:.1f} s |", flush=True)


def final_error(backend: Any, task: Any) -> float:
    free = backend.measure(task.source_voltages(task.test.x))
    return task.cost(task.outputs(free), task.test.y)


def realizable(task: Any, bench: Bench, truth: np.ndarray, seed: int) -> Any:
    """The task with targets y = A x from the bench itself at random teacher taps (its
    true tables), so that the 2x2 map can be learned exactly up to tap quantization."""
    teacher = SimulatedBackend(bench_network(bench), SteppedEdges(truth),
                               np.random.default_rng(100 + seed).integers(0, truth.shape[1], truth.shape[0]))
    amap = teacher.measure(np.eye(2)).at_nodes(task.output_nodes).T  # (outputs, inputs)
    return replace(task, train=Dataset(task.train.x, task.train.x @ amap.T),
                   test=Dataset(task.test.x, task.test.x @ amap.T))


def part4(cal: Calibration, truth: np.ndarray, seeds: int, steps: int, model_steps: int) -> None:
    print("\n4. 2x2 regression on the emulated bench (bench-regression-2x2.toml, coupled rule), "
          "final test MSE (V^2)")
    print(f"(a) the protocol's task (a random map y = A x), {steps} steps in situ from random taps")
    print("| seed | calibrated | datasheet |")
    print("| --- | --- | --- |")
    bench = parse_bench(BENCH, "b")
    proto = parse_protocol(PROTOCOL, "bench-regression-2x2.toml")
    nominal = nominal_edges(bench).table
    a_rows = []
    for seed in range(1, seeds + 1):
        row = []
        for which in (cal, "none"):
            exp, session = bench_experiment(proto, bench, BENCH, source="p", bench_source="b",
                                            target="emulate", seed=seed, steps=steps,
                                            calibration=which)  # type: ignore[arg-type]
            try:
                Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run()
                row.append(final_error(exp.backend, exp.task))
            finally:
                session.close()
        a_rows.append(row)
        print(f"| {seed} | {row[0]:.3g} | {row[1]:.3g} |", flush=True)
    med = np.median(np.array(a_rows), axis=0)
    print(f"| median | {med[0]:.3g} | {med[1]:.3g} |")
    print(f"(b) a 2x2 map the bench can realize (targets from the bench at random teacher taps): in "
          f"situ from random taps ({steps} steps); trained on the controller's model of the bench "
          f"(ideal physics with the tables it believes, {model_steps} steps), programmed onto the "
          f"bench; then {steps // 4} steps in situ")
    print("| seed | tables | in situ | model-trained, programmed | + in situ |")
    print("| --- | --- | --- | --- | --- |")
    rows: dict[str, list[list[float]]] = {"calibrated": [], "datasheet": []}
    for seed in range(1, seeds + 1):
        for label, which in (("calibrated", cal), ("datasheet", "none")):
            exp, session = bench_experiment(proto, bench, BENCH, source="p", bench_source="b",
                                            target="emulate", seed=seed, steps=steps,
                                            calibration=which)  # type: ignore[arg-type]
            try:
                task = realizable(exp.task, bench, truth, seed)
                start = exp.backend.read_edges().taps
                Trainer(exp.backend, task, exp.rule, exp.config, exp.batch_rng).run()
                in_situ = final_error(exp.backend, task)
                table = cal.table if which is cal else nominal
                belief = SimulatedBackend(bench_network(bench), SteppedEdges(table), start)
                offline = replace(exp.config, steps=model_steps)
                Trainer(belief, task, exp.rule, offline, np.random.default_rng(seed)).run()
                exp.backend.write_taps(belief.read_edges().taps)  # type: ignore[attr-defined]
                programmed = final_error(exp.backend, task)
                tune = replace(exp.config, steps=steps // 4)
                Trainer(exp.backend, task, exp.rule, tune, np.random.default_rng(seed)).run()
                tuned = final_error(exp.backend, task)
            finally:
                session.close()
            rows[label].append([in_situ, programmed, tuned])
            print(f"| {seed} | {label} | {in_situ:.3g} | {programmed:.3g} | {tuned:.3g} |", flush=True)
    for label, values in rows.items():
        med = np.median(np.array(values), axis=0)
        print(f"| median | {label} | {med[0]:.3g} | {med[1]:.3g} | {med[2]:.3g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="protocol seeds of the regression")
    parser.add_argument("--steps", type=int, default=1500, help="in-situ training steps of the regression")
    parser.add_argument("--model-steps", type=int, default=3000,
                        help="training steps on the controller's model before programming")
    parser.add_argument("--quick", action="store_true", help="one emulator seed in part 1")
    args = parser.parse_args()
    t0 = time.monotonic()
    cal, truth = part1(args.quick)
    part2(cal, truth)
    part3(cal)
    part4(cal, truth["table"], args.seeds, args.steps, args.model_steps)
    print(f"\nbenchmark wall time {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
