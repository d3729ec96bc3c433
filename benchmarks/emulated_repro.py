"""Do emulated bench runs of one protocol and seed reproduce, bit for bit?

Runs ``protocols/bench-regression-2x2.toml`` on ``protocols/benches/example-16.toml``
through the driver stack against the emulated bench (what ``--emulate`` does), and
compares the taps after every step across the runs.

The time dependence that made such runs diverge was the controller's watchdog: a host
busy for longer than the watchdog (a slow step, a slow store, a loaded machine) sent no
frame, the controller parked every pot, and the next measurements were taken on the
parked network without any error; the serial traffic was identical up to that point.
It needs no stall at all: once training converges the taps stop moving, the old host
sent nothing for long stretches, and the watchdog tripped on its own. To show it, every run here keeps the host's main thread busy for 1.5x the watchdog
after a few steps drawn per run (the watchdog is shortened to 500 ms so that this is
quick), and the same is done with the keep-alive and the status read disabled (the
host as it was) as the baseline.

Last, the whole host (keep-alive included) goes silent for 1.5x the watchdog after a
random step: the run must pause with no measurement on the parked network (counted in
the emulated bench's traffic log file) and resume to completion.

Usage: python benchmarks/emulated_repro.py [--runs 10] [--steps 600] [--stalls 2] [--silent 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from clln.benchfile import parse_bench
from clln.benchrun import bench_experiment
from clln.compose import resume_training, run_training
from clln.controller import Trainer
from clln.controller.store import RunStore
from clln.drivers.errors import FirmwareParked
from clln.drivers.potbank import PotBank
from clln.protocol import parse_protocol
from clln.resume import bench_info, rebuild

ROOT = Path(__file__).resolve().parents[1]
BENCH = (ROOT / "protocols" / "benches" / "example-16.toml").read_text()
PROTOCOL = ROOT / "protocols" / "bench-regression-2x2.toml"
WATCHDOG_MS = 500


TEXT = BENCH.replace("watchdog_ms = 2000", f"watchdog_ms = {WATCHDOG_MS}")


def experiment(steps: int, traffic_log: Path | None = None):  # noqa: ANN201
    proto = parse_protocol(PROTOCOL.read_text(), str(PROTOCOL))
    return bench_experiment(proto, parse_bench(TEXT, "example-16.toml"), TEXT, source=str(PROTOCOL),
                            bench_source="example-16.toml", target="emulate", steps=steps,
                            traffic_log=traffic_log)


def run(steps: int, busy_after: set[int]) -> tuple[np.ndarray, int, str]:
    """Taps after every step, measurements taken on a parked network, and how it ended."""
    exp, session = experiment(steps)
    taps: list[np.ndarray] = []

    def record(rec: object) -> None:
        taps.append(exp.backend.read_edges().taps)
        if rec.step in busy_after:
            time.sleep(1.5 * WATCHDOG_MS / 1000)

    ended = "completed"
    try:
        Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run([record])
    except FirmwareParked:
        ended = f"paused after step {len(taps)}"
    finally:
        session.close()
    assert session.emulator is not None
    return np.array(taps), session.emulator.daq.parked_acquisitions, ended


def series(label: str, runs: int, steps: int, stalls: int) -> None:
    if runs < 1:
        return
    trajectories = []
    t0 = time.perf_counter()
    for k in range(runs):
        busy = {int(s) for s in np.random.default_rng(k).integers(1, steps, stalls)}
        taps, parked, ended = run(steps, busy)
        trajectories.append(taps)
        print(f"  run {k + 1:2d}: host busy 1.5 watchdogs after steps {sorted(busy)}; {ended}; "
              f"{parked} measurements on a parked network", flush=True)
    reference = trajectories[0]
    identical = 0
    for k, taps in enumerate(trajectories[1:], 2):
        n = min(len(taps), len(reference))
        diff = np.flatnonzero(np.any(taps[:n] != reference[:n], axis=1))
        if diff.size == 0 and len(taps) == len(reference):
            identical += 1
        elif diff.size:
            print(f"  run {k} differs from run 1 from step {diff[0] + 1}")
    print(f"{label}: {identical + 1} of {runs} runs with bit-identical taps at every step "
          f"({time.perf_counter() - t0:.1f} s)\n", flush=True)


def silent(trials: int, steps: int) -> None:
    """The whole host silent for 1.5 watchdogs: pause, 0 parked measurements, resume."""
    for k in range(trials):
        at = int(np.random.default_rng(100 + k).integers(1, steps // 2))
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "traffic.jsonl"
            store = RunStore(Path(tmp) / "runs")
            exp, session = experiment(steps, log)
            lock = exp.backend.potbank.lock

            def stall(rec: object, at: int = at, lock: object = lock) -> None:
                if rec.step == at:
                    with lock:
                        time.sleep(1.5 * WATCHDOG_MS / 1000)

            try:
                run_training(exp, store, protocol_text=PROTOCOL.read_text(), protocol_path=str(PROTOCOL),
                             callbacks=[stall], extra_info=bench_info(Path("example-16.toml"), TEXT, "emulate"))
                paused = "did not pause"
            except FirmwareParked:
                paused = f"paused after step {store.run('latest')['steps_done']}"
            finally:
                session.close()
            entries = [json.loads(line) for line in log.read_text().splitlines()]
            measured = [e for e in entries if e["channel"] == "ao" and e["samples"] > 0]
            parked = sum(bool(e["parked"]) for e in measured)
            run_id = store.run("latest")["id"]
            exp, session, _ = rebuild(store, run_id)
            try:
                outcome = resume_training(exp, store, run_id)
            finally:
                session.close()
            done = store.run(run_id)
            print(f"  silent after step {at}: {paused}; {len(measured)} measurements in the traffic log, "
                  f"{parked} on a parked network; resumed: {outcome.status}, {done['steps_done']}/{steps} "
                  f"steps", flush=True)
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--stalls", type=int, default=2, help="busy periods per run")
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--silent", type=int, default=5, help="trials of a silent host")
    args = parser.parse_args()
    print(f"{PROTOCOL.name} on example-16 (emulated), {args.steps} steps, watchdog {WATCHDOG_MS} ms")
    print("this host (keep-alive thread, status read before every measurement):")
    series("this host", args.runs, args.steps, args.stalls)
    print("baseline, the host as it was (no keep-alive, no status read):")
    keepalive, check = PotBank.start_keepalive, PotBank.check_running
    PotBank.start_keepalive = lambda self, idle: None  # type: ignore[method-assign]
    PotBank.check_running = lambda self: None  # type: ignore[method-assign,assignment,return-value]
    try:
        series("baseline", args.baseline_runs, args.steps, args.stalls)
    finally:
        PotBank.start_keepalive, PotBank.check_running = keepalive, check  # type: ignore[method-assign]
    print("the whole host silent for 1.5x the watchdog (this host):")
    silent(args.silent, args.steps)


if __name__ == "__main__":
    main()
