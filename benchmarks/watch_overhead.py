"""What following a run costs the run: the trainer's per-step look for a control request
(``RunStore.pending``) against the per-step record it already writes
(``RunStore.record_step``, one transaction with its checkpoint), and a demo run's speed
while ``clln watch`` pages poll the same store.

Per round, in one run store: N record_step calls, N pending calls, their ratio; then the
demo protocol (3,000 steps) trained with no page open and with a page's poll (every
0.5 s, as the dashboard does) from another thread, and the ratio of their step rates.

Usage: python benchmarks/watch_overhead.py [--n 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from clln.compose import build_experiment, run_training
from clln.controller.store import RunStore
from clln.protocol import load_protocol
from clln.watch import RunFeed

ROOT = Path(__file__).resolve().parents[1]


def store_costs(n: int) -> tuple[float, float]:
    """(s per record_step, s per pending) in a fresh store."""
    with tempfile.TemporaryDirectory() as d, RunStore(d) as store:
        run_id = store.create_run(name="b", protocol_text="", protocol_path=None, version="0",
                                  seed=0, backend={}, info={}, steps_planned=n,
                                  initial_state=np.zeros(40))
        blob = b"x" * 4000
        t0 = time.perf_counter()
        for k in range(1, n + 1):
            store.record_step(run_id, k, error=1.0, nudge=0.1, update_norm=0.1, n_clipped=0,
                              checkpoint=blob)
        t_record = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            store.pending(run_id)
        t_pending = (time.perf_counter() - t0) / n
    return t_record, t_pending


def demo_rate(watched: bool) -> float:
    """Steps per second of the demo protocol (3,000 steps), with or without a page polling."""
    proto, text = load_protocol(ROOT / "protocols" / "demo.toml")
    exp = build_experiment(proto, source="demo", base_dir=ROOT / "protocols", steps=3000)
    with tempfile.TemporaryDirectory() as d:
        store = RunStore(d)
        started: list[str] = []
        done = threading.Event()

        def page() -> None:
            reader = RunStore(d)
            feed = None
            while not done.is_set():
                if started:
                    feed = feed or RunFeed(reader, started[0])
                    feed.poll()
                time.sleep(0.5)
            reader.close()

        poller = threading.Thread(target=page) if watched else None
        if poller:
            poller.start()
        t0 = time.perf_counter()
        run_training(exp, store, protocol_text=text, protocol_path=None, on_start=started.append)
        rate = 3000 / (time.perf_counter() - t0)
        done.set()
        if poller:
            poller.join()
        store.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ratios, slowdowns = [], []
    for r in range(args.rounds):
        t_record, t_pending = store_costs(args.n)
        plain, watched = demo_rate(False), demo_rate(True)
        ratios.append(t_pending / t_record)
        slowdowns.append(plain / watched)
        print(f"round {r + 1}: record_step {t_record * 1e6:.0f} us, pending {t_pending * 1e6:.1f} us "
              f"({t_pending / t_record:.1%} of a record); demo {plain:.0f} steps/s alone, "
              f"{watched:.0f} steps/s with a page polling (ratio {plain / watched:.2f})", flush=True)
    print(f"median: pending costs {statistics.median(ratios):.1%} of a step's record; a page "
          f"polling slows the demo by a factor {statistics.median(slowdowns):.2f}")


if __name__ == "__main__":
    main()
