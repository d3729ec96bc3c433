"""Racing resumes: many ``clln resume`` processes started at once on the same stopped run.

Each round trains a short run, stops it at step 5 (interrupted), then starts
``--racers`` ``clln resume RUN`` processes at the same moment. Counts: double starts
(more than one resume trained the run), refusals that were not the one-line "still
running" message, and runs left failed. All must be 0.

Usage: python benchmarks/racing_resumes.py [--rounds 10] [--racers 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clln.compose import build_experiment, run_training
from clln.controller.store import RunStore
from clln.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "protocols" / "demo.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--racers", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clln-race-"))
    double = odd = failed = total = 0
    t0 = time.perf_counter()
    for r in range(args.rounds):
        out = work / f"round{r}"
        proto, text = load_protocol(DEMO)
        exp = build_experiment(proto, source=str(DEMO), base_dir=DEMO.parent, steps=60)
        store = RunStore(out)
        done: list[int] = []
        run = run_training(exp, store, protocol_text=text, protocol_path=str(DEMO),
                           callbacks=[lambda rec: done.append(rec.step)], should_stop=lambda: len(done) >= 5)
        store.close()
        procs = [subprocess.Popen([sys.executable, "-m", "clln.cli", "resume", run.run_id, "--out", str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(args.racers)]
        results = [(p.wait(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
        total += len(results)
        started = sum(code == 0 for code, _ in results)
        refused = [err for code, err in results if code != 0]
        double += started > 1
        odd += sum(not (e.startswith("error: run ") and "still running" in e and e.count("\n") == 1)
                   and "is completed; only a stopped run" not in e for e in refused)
        status = RunStore(out, readonly=True).run(run.run_id)["status"]
        failed += status == "failed"
        print(f"round {r + 1}: {started} started, {len(refused)} refused, run {status}", flush=True)
    print(f"{total} racing resumes in {args.rounds} rounds ({time.perf_counter() - t0:.0f} s): double starts "
          f"{double}, refusals not one clear line {odd}, runs left failed {failed}")


if __name__ == "__main__":
    main()
