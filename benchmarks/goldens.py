"""Golden final states of every shipped protocol, to prove a refactoring changes no number.

Trains each protocol in ``protocols/*.toml`` and ``protocols/bias/*.toml`` with its own
seed and steps, and keeps the final edge state (conductances, S, or taps):

- on the simulator (what ``clln train PROTOCOL`` runs);
- for the stepped-edge protocols that ``protocols/benches/example-16.toml`` can run, on
  the bench's model (``--simulate``) and through the driver stack against the emulated
  bench (``--emulate``), both with the bench model's noise off (emulator preset
  ``ideal``).

``--record DIR`` writes one ``.npz`` per run (the state, the solver used and the wall
time); ``--check DIR`` trains again and compares bit for bit, printing a table; it exits
1 when any run differs. The sparse solver (CHOLMOD or QDLDL) changes round-off, so a
recorded simulator state is compared only on the same solver (a mismatch is reported as
``other solver``, not as a difference).

Usage: python benchmarks/goldens.py --record tests/data/goldens
       python benchmarks/goldens.py --check tests/data/goldens [--only demo,regression-2x2]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Imported before any run, so that a whole record uses one version of the code.
from clln.benchfile import parse_bench
from clln.benchrun import bench_experiment
from clln.compose import build_experiment, make_trainer
from clln.controller.errors import ProtocolError
from clln.protocol import load_protocol
from clln.runtime import limit_bundled_blas

ROOT = Path(__file__).resolve().parents[1]
BENCH_FILE = ROOT / "protocols" / "benches" / "example-16.toml"

TIME_LIMIT_S = 90.0  # a run still going after this is left out of the record, with a note


@dataclass(frozen=True)
class Case:
    """One golden run: a protocol on a target (``sim``, ``simulate`` or ``emulate``)."""

    protocol: Path
    target: str

    @property
    def name(self) -> str:
        rel = self.protocol.relative_to(ROOT / "protocols").with_suffix("")
        return f"{str(rel).replace('/', '-')}.{self.target}"


def protocols() -> list[Path]:
    """Every shipped protocol (sweeps and bench files excluded)."""
    return sorted((ROOT / "protocols").glob("*.toml")) + sorted((ROOT / "protocols" / "bias").glob("*.toml"))


def quiet_bench_text() -> str:
    """The reference bench with its model's noise and imperfections off."""
    text = BENCH_FILE.read_text()
    if 'preset = "pot-bench"' not in text:
        raise SystemExit(f"{BENCH_FILE}: expected [emulator] preset = \"pot-bench\" to switch off")
    return text.replace('preset = "pot-bench"', 'preset = "ideal"', 1)


def cases() -> list[Case]:
    """The simulator run of every protocol, and the bench runs of the stepped ones."""
    found = []
    for path in protocols():
        found.append(Case(path, "sim"))
        proto, _ = load_protocol(path)
        if proto.edges.kind == "stepped" and proto.training.mode != "in-situ":
            found += [Case(path, "simulate"), Case(path, "emulate")]
    return found


def final_state(case: Case, limit_s: float) -> tuple[np.ndarray, str] | None:
    """Train one case to the protocol's own steps; (final conductances or taps, solver),
    or None when it takes longer than ``limit_s``."""
    proto, _ = load_protocol(case.protocol)
    session = None
    if case.target == "sim":
        exp = build_experiment(proto, source=str(case.protocol), base_dir=case.protocol.parent)
    else:
        text = quiet_bench_text()
        exp, session = bench_experiment(
            proto, parse_bench(text, str(BENCH_FILE)), text, source=str(case.protocol),
            bench_source=str(BENCH_FILE), target=case.target)
    try:
        trainer = make_trainer(exp)
        t0 = time.perf_counter()
        result = trainer.run([], should_stop=lambda: time.perf_counter() - t0 > limit_s)
        if result.interrupted:
            return None
        state = exp.backend.read_edges()
        model = exp.backend if session is None or session.emulator is None else session.emulator.model
        solver = str(model.describe().get("solver", "none"))
    finally:
        if session is not None:
            session.close()
    return np.asarray(state.conductances if state.taps is None else state.taps), solver


def runnable(case: Case) -> str | None:
    """None when the case runs; else why not (a protocol the bench cannot run)."""
    if case.target == "sim":
        return None
    proto, _ = load_protocol(case.protocol)
    text = quiet_bench_text()
    try:
        _, session = bench_experiment(
            proto, parse_bench(text, str(BENCH_FILE)), text, source=str(case.protocol),
            bench_source=str(BENCH_FILE), target="simulate")
        session.close()
    except ProtocolError as exc:
        return str(exc).splitlines()[0]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, metavar="DIR", help="write the goldens here")
    mode.add_argument("--check", type=Path, metavar="DIR", help="compare against the goldens here")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, metavar="S",
                        help="leave out runs longer than this (s)")
    parser.add_argument("--only", default="", help="comma-separated names (protocol or protocol.target)")
    args = parser.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    limit_bundled_blas()
    out = args.record or args.check
    out.mkdir(parents=True, exist_ok=True)
    bad = 0
    print(f"{'run':40s} {'solver':8s} {'time s':>8s}  result", flush=True)
    for case in cases():
        if only and case.name not in only and case.name.rsplit(".", 1)[0] not in only:
            continue
        why = runnable(case)
        if why is not None:
            print(f"{case.name:40s} {'':8s} {'':>8s}  not on this bench: {why}", flush=True)
            continue
        t0 = time.perf_counter()
        found = final_state(case, args.time_limit)
        wall = time.perf_counter() - t0
        if found is None:
            print(f"{case.name:40s} {'':8s} {wall:8.1f}  left out: over {args.time_limit:g} s", flush=True)
            continue
        state, solver = found
        file = out / f"{case.name}.npz"
        if args.record:
            np.savez(file, state=state, solver=np.array(solver), wall_s=np.array(wall))
            result = f"recorded {state.size} edges ({state.dtype})"
        elif not file.exists():
            result, bad = "no golden", bad + 1
        else:
            with np.load(file) as gold:
                want, want_solver = gold["state"], str(gold["solver"])
            if want_solver != solver:
                result = f"other solver (golden {want_solver})"
            elif want.dtype == state.dtype and want.shape == state.shape and want.tobytes() == state.tobytes():
                result = "bit-identical"
            else:
                diff = np.max(np.abs(np.asarray(want, float) - np.asarray(state, float))) \
                    if want.shape == state.shape else float("nan")
                result, bad = f"DIFFERS (max |diff| {diff:.3g})", bad + 1
        print(f"{case.name:40s} {solver:8s} {wall:8.1f}  {result}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
