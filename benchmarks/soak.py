"""Soak test of the bench stack: a long run on the emulated bench through a link with 1 %
corrupted bytes and a disconnect every 1,000 steps, each followed by a resume.

After every step the taps are read back from the controller and compared with the
command. At the end the run store must hold every step exactly once.

Usage: python benchmarks/soak.py [--steps 5000] [--disconnect-every 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from clln.benchfile import load_bench
from clln.benchrun import bench_experiment
from clln.compose import resume_training, run_training
from clln.controller.store import RunStore
from clln.drivers.errors import DriverError
from clln.protocol import parse_protocol
from clln.resume import bench_info, rebuild
from clln.simulator.bench import Faults

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "protocols" / "benches" / "example-16.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--disconnect-every", type=int, default=1000)
    parser.add_argument("--corrupt", type=float, default=0.01)
    args = parser.parse_args()
    text = (ROOT / "protocols" / "demo.toml").read_text().replace("test_every = 25", "test_every = 100")
    proto = parse_protocol(text, "demo.toml")
    bench, bench_text = load_bench(BENCH)
    store = RunStore(Path(tempfile.mkdtemp()))
    faults = lambda seed: Faults(corrupt=args.corrupt, seed=seed)  # noqa: E731
    exp, session = bench_experiment(proto, bench, bench_text, source="demo.toml", bench_source=str(BENCH),
                                    target="emulate", steps=args.steps, faults=faults(0))
    counters = {"mismatches": 0, "verified": 0, "disconnects": 0, "pauses": 0, "retries": 0,
                "frames": 0}

    def callbacks(sess):  # noqa: ANN001, ANN202
        def verify(rec) -> None:  # noqa: ANN001
            backend = sess.backend
            counters["verified"] += 1
            if not np.array_equal(backend.potbank.get_all()[backend.chain], backend.read_edges().taps):
                counters["mismatches"] += 1

        def disconnect(rec) -> None:  # noqa: ANN001
            if rec.step % args.disconnect_every == 0 and rec.step < args.steps:
                counters["disconnects"] += 1
                sess.emulator.link.deafen(5.0)

        return [verify, disconnect]

    t0 = time.perf_counter()
    run_id = None
    attempt = 0
    while True:
        try:
            if run_id is None:
                outcome = run_training(exp, store, protocol_text=text, protocol_path=None,
                                       callbacks=callbacks(session),
                                       on_start=lambda rid: None,
                                       extra_info=bench_info(BENCH, bench_text, "emulate"))
            else:
                outcome = resume_training(exp, store, run_id, callbacks=callbacks(session))
            break
        except DriverError as exc:
            counters["pauses"] += 1
            run_id = store.run("latest")["id"]
            rec = store.run(run_id)
            print(f"paused at step {rec['steps_done']} ({rec['status']}): {exc}", flush=True)
        finally:
            bank = session.backend.potbank
            counters["retries"] += bank.retries_used
            counters["frames"] += bank.frames_sent
            session.close()
        attempt += 1
        exp, session, _ = rebuild(store, run_id, faults=faults(attempt))
    session.close()
    hist = store.history(outcome.run_id)
    rec = store.run(outcome.run_id)
    print(f"\n{rec['status']}: {rec['steps_done']}/{args.steps} steps in {time.perf_counter() - t0:.0f} s; "
          f"{counters['disconnects']} disconnects, {counters['pauses']} pauses, each resumed")
    print(f"every step recorded exactly once: {hist.steps.tolist() == list(range(1, args.steps + 1))}")
    print(f"read-back checks {counters['verified']}, mismatches {counters['mismatches']}; "
          f"frames sent {counters['frames']}, retries {counters['retries']}; "
          f"integrity_check {store.integrity()}")


if __name__ == "__main__":
    main()
