"""The compiled firmware under simavr against the Python firmware emulator.

``protocols/bench-regression-2x2.toml`` on ``protocols/benches/example-16.toml`` (noise
off), through the driver stack (``--emulate``): once behind the Python firmware
(``clln.simulator.bench.PotFirmware``), once behind the Mega 2560 firmware built with
avr-gcc and run under simavr with MCP4131 models (``clln.simulator.avr``). Prints the
steps whose taps differ (0 expected), the wall time of each run and their ratio.

``--insitu``: the in-situ mode (PROTOCOL.md §12). ``protocols/insitu-pot-regression.toml``
(noise off; ``--train`` training samples) once on the Python emulator of the streaming
device (``clln.simulator.insitu_device``) and once on the protocol-1.2 firmware built with
avr-gcc (``make INSITU=1``) under simavr, its analog front end served by the same
comparator-twin physics model, both through the driver ``clln.drivers.insitu`` with
``--corrupt`` of the bytes on the simavr link corrupted. Prints records expected, received,
lost and retransmission requests, the steps whose taps differ, the largest differences of
node voltages (250 uV counts) and errors, the learning windows' high times against the
timer ticks, the firmware's stack headroom, and CPU and wall time of both.

Usage: python benchmarks/simavr_equivalence.py [--steps 200] [--build DIR]
       python benchmarks/simavr_equivalence.py --insitu [--steps 100] [--train 4] [--corrupt 0.01]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from clln.benchrun import emulated_trajectory
from clln.compose import build_experiment
from clln.drivers.insitu import VOLT_LSB, InSituBench
from clln.drivers.potbank import open_port
from clln.insitu import emulated_stream, insitu_experiment
from clln.protocol import parse_protocol
from clln.simulator import avr
from clln.simulator.bench import Faults

ROOT = Path(__file__).resolve().parents[1]


def timed(run):  # noqa: ANN001, ANN201
    """(result, wall s, CPU s of this process) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def insitu(args: argparse.Namespace) -> None:
    text = (ROOT / "protocols" / "insitu-pot-regression.toml").read_text()
    text = (text.replace("train = 8", f"train = {args.train}").replace("steps = 60", f"steps = {args.steps}")
            .replace("noise_rms = 1e-3", "noise_rms = 0.0"))
    exp = build_experiment(parse_protocol(text, "p.toml"), source="p.toml", base_dir=ROOT)
    ex = insitu_experiment(exp.protocol, exp.task, args.steps, "p.toml")
    build, t_build, _ = timed(lambda: avr.build(args.build, insitu=True))
    print(f"build: {t_build:.1f} s; {build.size}")

    sim = avr.SimavrInSitu.twin_of(exp.backend, build)  # before anything moves the taps
    try:
        compare(args, exp, ex, build, sim)
    finally:
        sim.close()


def compare(args: argparse.Namespace, exp, ex, build: avr.Build, sim: avr.SimavrInSitu) -> None:  # noqa: ANN001
    """Both devices through the driver; print what they did and where they differ."""
    device, driver = emulated_stream(exp, credit=args.credit)
    python, t_py, cpu_py = timed(lambda: list(driver.run_insitu(ex, 0, ex.steps)))
    device.close()
    port = avr.FaultyPort(open_port(sim.path), Faults(corrupt=args.corrupt, seed=args.seed))
    fw = InSituBench(port, exp.backend.network, exp.backend.physics.nominal_table(),  # type: ignore[arg-type]
                     credit=args.credit, record_timeout=0.05)
    fw.bank.reply_timeout = 0.5
    fw.connect()
    compiled, t_fw, cpu_fw = timed(lambda: list(fw.run_insitu(ex, 0, ex.steps)))
    afe = sim.front_end
    assert afe is not None
    steps = [r.step for r in compiled]
    print(f"records: {ex.steps + 1} expected, {len(compiled)} received, "
          f"{len(set(range(ex.steps + 1)) - set(steps))} lost, {len(steps) - len(set(steps))} duplicated; "
          f"{fw.resends} retransmission requests ({args.corrupt:.1%} of the link's bytes corrupted)")
    differ = [a.step for a, b in zip(compiled, python) if not np.array_equal(a.state, b.state)]
    print(f"steps whose taps differ: {len(differ)}" + (f" (first: {differ[0]})" if differ else "")
          + f"; tap changes along the run: {int(np.count_nonzero(np.diff([r.state for r in python], axis=0)))}")
    volts = [np.nan_to_num(getattr(a, k)) - np.nan_to_num(getattr(b, k))
             for a, b in zip(compiled, python) for k in ("free", "clamped")]
    counts = np.rint(np.abs(np.concatenate([v.ravel() for v in volts])) / VOLT_LSB)
    print(f"node voltages: {counts.size} values, {int(np.count_nonzero(counts))} differ, "
          f"by at most {int(counts.max())} count(s) of 250 uV")
    rel = [abs(a.train_error - b.train_error) / b.train_error for a, b in zip(compiled, python)]
    print(f"train error: largest relative difference {max(rel):.1e} (f32 against f64)")
    ticks = np.concatenate([[round(b.window_s / 0.5e-6)] * b.n_teaching for b in python])
    extra = np.array(afe.windows, dtype=np.int64) - 8 * ticks.astype(np.int64)
    print(f"learning windows: {len(afe.windows)} (Python loop: {ticks.size}); LEARN high for "
          f"8 cycles per tick plus {extra.min()}..{extra.max()} cycles")
    ram = int(re.search(r"static RAM (\d+)", build.size).group(1))  # type: ignore[union-attr]
    lowest = sim.lowest_stack()
    print(f"firmware RAM: static {ram} B, stack down to {lowest:#06x} ({0x21FF - lowest} B), "
          f"{lowest - avr.SRAM_START - ram} B to spare; outside the 6144 B of §12.2: "
          f"{ram - 6144 + 0x21FF - lowest} B of 2048")
    print(f"front end: {afe.requests} requests, {afe.repeats} sent again by the firmware, "
          f"{afe.damaged} damaged; slowest reply {1e3 * afe.slowest:.1f} ms; errors {afe.errors or 'none'}")
    print(f"time: Python emulator {t_py:.1f} s wall / {cpu_py:.1f} s CPU ({1e3 * t_py / ex.steps:.0f} ms/step); "
          f"simavr {t_fw:.1f} s wall / {cpu_fw:.1f} s CPU of the host process "
          f"({1e3 * t_fw / ex.steps:.0f} ms/step); wall ratio {t_fw / t_py:.1f}")
    if sim.stderr.strip():
        print(f"harness: {sim.stderr.strip().splitlines()[-1]}")
    port.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="200; 100 with --insitu")
    parser.add_argument("--build", type=Path, default=avr.default_build_dir())
    parser.add_argument("--insitu", action="store_true", help="the in-situ mode (protocol 1.2)")
    parser.add_argument("--train", type=int, default=4, help="--insitu: training samples")
    parser.add_argument("--credit", type=int, default=8, help="--insitu: records ahead")
    parser.add_argument("--corrupt", type=float, default=0.01, help="--insitu: corrupted byte fraction")
    parser.add_argument("--seed", type=int, default=1, help="--insitu: seed of the corruption")
    args = parser.parse_args()
    missing = avr.missing_tools()
    if missing:
        raise SystemExit(f"needs {', '.join(missing)} (Debian packages: see .ci/run)")
    if args.insitu:
        args.steps = args.steps or 100
        insitu(args)
        return
    args.steps = args.steps or 200
    protocol = (ROOT / "protocols" / "bench-regression-2x2.toml").read_text()
    bench = (ROOT / "protocols" / "benches" / "example-16.toml").read_text().replace(
        "seed = 1\n", "seed = 1\n[emulator.parameters]\nai_noise_rms = 0.0\n", 1)

    t0 = time.perf_counter()
    build = avr.build(args.build)
    print(f"build: {time.perf_counter() - t0:.1f} s; {build.size}")

    t0 = time.perf_counter()
    python = emulated_trajectory(protocol, bench, args.steps)
    t_python = time.perf_counter() - t0
    sim = avr.SimavrPotBank(build)
    t0 = time.perf_counter()
    compiled = emulated_trajectory(protocol, bench, args.steps, controller=sim)
    t_sim = time.perf_counter() - t0

    differ = [k for k, (a, b) in enumerate(zip(python, compiled)) if not np.array_equal(a, b)]
    moves = sum(int(np.count_nonzero(b != a)) for a, b in zip(python, python[1:]))
    print(f"steps: {len(python)} (Python firmware), {len(compiled)} (simavr)")
    print(f"steps whose taps differ: {len(differ)}" + (f" (first: {differ[0]})" if differ else ""))
    print(f"tap changes along the run: {moves}; wiper changes seen by the MCP4131 models: "
          f"{len(sim.wiper_log)}")
    print(f"wall time: Python firmware {t_python:.1f} s ({1e3 * t_python / args.steps:.1f} ms/step), "
          f"simavr {t_sim:.1f} s ({1e3 * t_sim / args.steps:.1f} ms/step), ratio {t_sim / t_python:.2f}")
    if sim.stderr.strip():
        print(f"harness: {sim.stderr.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
