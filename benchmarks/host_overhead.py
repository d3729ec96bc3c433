"""The host's own time per training step on a bench, beside the I/O time of the bench itself.

A protocol trains on ``protocols/benches/example-16.toml`` through the real driver stack
against the emulated bench (``--emulate``), recording every step in a real run store.
Per step, measured on this machine:

* wall time of the step loop;
* time inside the emulated DAQ (the bench model's physics: a real bench spends this
  time in the acquisition instead) and waiting for the emulated controller's replies
  (the serial line and the firmware);
* what is left is the host's own time: controller (trainer, update rule), drivers
  (framing, checks, status reads) and the run store; the store's share is timed apart.

Modelled I/O per step, what the real bench would take:

* DAQ: every acquisition holds each of its B boundary conditions for
  ``settle_samples + average_samples`` sample periods (the DAQ set-up planned from the
  bench file's ``[daq]``, ``clln.benchfile.daq_config``);
* serial: every byte that crossed the emulated line (both directions, from the traffic
  log) at the bench file's baud rate, 10 bits per byte.

Prints the host overhead as a percentage of the modelled I/O (target: below 10 %).

Usage: python benchmarks/host_overhead.py [--steps 400] [--protocol protocols/bench-regression-2x2.toml]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from clln.benchfile import daq_config, parse_bench
from clln.benchrun import bench_experiment
from clln.compose import run_training
from clln.controller.store import RunStore
from clln.protocol import parse_protocol

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "protocols" / "benches" / "example-16.toml"


class Timer:
    """Wraps a bound method and adds up the wall time spent in it while ``on``."""

    def __init__(self, owner: Any, name: str) -> None:
        self.total = 0.0
        self.on = False
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if self.on:
                    self.total += time.perf_counter() - t0

        setattr(owner, name, timed)


def measure(protocol: Path, steps: int, runs_dir: Path) -> dict[str, float]:
    text = BENCH.read_text()
    bench = parse_bench(text, str(BENCH))
    proto_text = protocol.read_text()
    exp, session = bench_experiment(parse_protocol(proto_text, str(protocol)), bench, text,
                                    source=str(protocol), bench_source=str(BENCH), target="emulate",
                                    steps=steps)
    emulator = session.emulator
    assert emulator is not None
    backend = exp.backend
    store = RunStore(runs_dir)
    timers = {"daq model": Timer(emulator.daq, "acquire"), "serial wait": Timer(backend.potbank, "_await"),
              "store": Timer(store, "record_step")}
    marks: dict[str, Any] = {}

    def mark(rec: Any) -> None:
        if rec.step == 1:  # the step loop starts here (after the initial test evaluation)
            for timer in timers.values():
                timer.on = True
            marks["t0"] = time.perf_counter()
            marks["log0"] = len(emulator.log.entries)
        marks["t1"] = time.perf_counter()

    try:
        run_training(exp, store, protocol_text=proto_text, protocol_path=str(protocol), callbacks=[mark])
    finally:
        session.close()
    n = steps - 1  # steps 2..steps lie between the first and the last mark
    entries = emulator.log.entries[marks["log0"]:]
    serial_bytes = sum(len(e["data"]) // 2 for e in entries if e["channel"].startswith("serial"))
    rows = sum(e["samples"] for e in entries if e["channel"] == "ao")
    daq = daq_config(bench)  # the planned set-up: samples per step from whole mains periods
    wall = marks["t1"] - marks["t0"]
    out = {name: timer.total / n for name, timer in timers.items()}
    out["wall"] = wall / n
    out["host"] = out["wall"] - out["daq model"] - out["serial wait"]
    out["modelled daq"] = rows * (daq.settle_samples + daq.average_samples) / daq.sample_rate / n
    out["modelled serial"] = serial_bytes * 10 / bench.serial.baudrate / n
    out["serial bytes"] = serial_bytes / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--protocol", type=Path, default=ROOT / "protocols" / "bench-regression-2x2.toml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.protocol, args.steps, Path(tmp) / "runs")
    ms = 1e3
    io = r["modelled daq"] + r["modelled serial"]
    print(f"{args.protocol.name} on example-16 (emulated), {args.steps} steps; per step:")
    print(f"  wall time of the step loop        {r['wall'] * ms:8.3f} ms")
    print(f"  - in the emulated DAQ (model)     {r['daq model'] * ms:8.3f} ms")
    print(f"  - waiting for the controller      {r['serial wait'] * ms:8.3f} ms")
    print(f"  = host's own time                 {r['host'] * ms:8.3f} ms "
          f"(store {r['store'] * ms:.3f} ms, controller and drivers {(r['host'] - r['store']) * ms:.3f} ms)")
    print(f"  modelled DAQ acquisition time     {r['modelled daq'] * ms:8.3f} ms")
    print(f"  modelled serial time              {r['modelled serial'] * ms:8.3f} ms "
          f"({r['serial bytes']:.0f} bytes)")
    print(f"host overhead = {100 * r['host'] / io:.2f} % of the modelled I/O "
          f"({r['host'] * ms:.3f} ms / {io * ms:.3f} ms; target < 10 %)")


if __name__ == "__main__":
    main()
