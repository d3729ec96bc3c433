"""Kill -9 at random moments, resume each time: does the run end bit-identical?

Trains ``protocols/pot-bench-regression.toml`` (noisy simulated bench, so the noise
generator's state must survive too) for 2,000 steps with ``clln train``, kills the
process with SIGKILL at random moments, checks ``PRAGMA integrity_check`` and resumes
with ``clln resume``, until 20 kills have landed; then compares the final taps and
conductances with an uninterrupted run of the same protocol and seed.

Usage: python benchmarks/crash_resume.py [--kills 20] [--steps 2000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clln.compose import build_experiment, make_trainer
from clln.controller.store import RunStore
from clln.protocol import load_protocol

PROTOCOL = Path(__file__).resolve().parents[1] / "protocols" / "pot-bench-regression.toml"


def steps_done(runs: Path) -> int:
    if not (runs / "runs.sqlite").exists():
        return 0
    try:
        with RunStore(runs) as store:
            return int(store.run("latest")["steps_done"]) if store.list_runs() else 0
    except Exception:  # noqa: BLE001 - the store may be mid-creation
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    proto, _ = load_protocol(PROTOCOL)
    exp = build_experiment(proto, source=str(PROTOCOL), base_dir=PROTOCOL.parent, steps=args.steps)
    t0 = time.perf_counter()
    make_trainer(exp).run()
    reference = exp.backend.read_edges()
    print(f"uninterrupted run: {args.steps} steps in {time.perf_counter() - t0:.1f} s")

    runs = Path(tempfile.mkdtemp()) / "runs"
    cmd = [sys.executable, "-m", "clln.cli"]
    proc = subprocess.Popen([*cmd, "train", str(PROTOCOL), "--steps", str(args.steps), "--out", str(runs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kills, checks, resumes, last = 0, [], 0, 0
    while kills < args.kills:
        # Let the (re)started process get past its start-up and train a little, then kill
        # it at a random moment while it trains.
        while proc.poll() is None and steps_done(runs) <= last:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
        store = RunStore(runs)
        done = store.run("latest")["steps_done"] if store.list_runs() else 0
        checks.append(store.integrity())
        store.close()
        last = done
        print(f"kill {kills:2d}: at step {done:5d}, integrity_check {checks[-1]}", flush=True)
        resumes += 1
        proc = subprocess.Popen([*cmd, "resume", "latest", "--out", str(runs)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"last resume failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    store = RunStore(runs)
    rec = store.run("latest")
    hist = store.history(rec["id"])
    same_taps = np.array_equal(rec["final_taps"], reference.taps)
    same_g = np.array_equal(rec["final_state"], reference.conductances)
    print(f"\n{kills} kills, {resumes} resumes; status {rec['status']}, {rec['steps_done']} steps, "
          f"steps recorded once each: {hist.steps.tolist() == list(range(1, args.steps + 1))}")
    print(f"integrity_check ok after every kill: {all(c == 'ok' for c in checks)}; final: {store.integrity()}")
    print(f"final taps bit-identical to the uninterrupted run: {same_taps}; conductances: {same_g}")


if __name__ == "__main__":
    main()
