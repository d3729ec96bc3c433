"""transistor-16 learning in place: protocols/insitu-transistor-regression.toml (or with
``--xor`` protocols/insitu-transistor-xor.toml) over seeds 1-5 (tasks, devices, parts and
start gates): test error final / initial per seed, test accuracy for XOR, the medians;
CPU time per run.

    python benchmarks/insitu_transistor.py [--seeds 5] [--steps 60] [--xor] [--jobs 1]
    python benchmarks/insitu_transistor.py --speed [--steps 5]
    python benchmarks/insitu_transistor.py --xor-causes [--seeds 5] [--jobs 2]

``--speed``: CPU time per training step of the reference path (sparse Newton per twin,
adaptive Heun) and of the fast one (dense batched Newton, Bogacki-Shampine 3(2)) in the
same run, and the accuracy of one learning window: every window of the reference run
integrated again from the same gates by both paths and by a tight solution (the fast
path at ``step_tolerance`` 1e-8 V); the largest gate-voltage differences over all
windows are printed.

``--xor-causes``: what makes XOR learn in place or not, measured. The XOR protocol as
shipped and variants of it that each undo one of its choices (the free twin free instead
of anti-clamped, the learning time shared among the teaching points (NOR), a smaller or
amplified nudge, the protocol as it was before), over the seeds: final test accuracy per
seed and the median, the lowest gate voltage of the run (V; below V_T = 0.62 V a channel
is off), the rms gate movement per step over the first 10 steps (V; the host's xor.toml
moves 1.5 mV rms per step), and the share of drive evaluations in the learning windows
whose driver output sits on a rail (0 V or the rail: the gate moves by (u - V_G) / RC with
u clipped, no longer in proportion to the signal). First, per seed at the start gates
(the host's ideal transistor backend on the bench's nominal devices): the one-sided
signal (dV^F)^2 - (dV^C)^2 of every training sample split into its part odd in the nudge,
[(dV^-)^2 - (dV^+)^2] / 2 (what anti-clamp keeps), and the even rest.
"""

from __future__ import annotations

import argparse
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import tomli_w

from clln.compose import build_experiment, make_trainer
from clln.controller.backend import GateEdges
from clln.controller.rules import contrastive_signal
from clln.protocol import load_protocol, parse_protocol
from clln.simulator.transistor_backend import TransistorBackend

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "protocols" / "insitu-transistor-regression.toml"
XOR = ROOT / "protocols" / "insitu-transistor-xor.toml"


def one_seed(path: Path, seed: int, steps: int | None) -> dict[str, float | None]:
    """One seeded run: initial and final test MSE (V^2), first and last test accuracy
    (classification), CPU seconds."""
    protocol, _ = load_protocol(path)
    t0 = time.process_time()
    exp = build_experiment(protocol, source=str(path), base_dir=ROOT, seed=seed, steps=steps)
    tests: list[float | None] = []
    trainer = make_trainer(exp)
    trainer.on_record = lambda rec: (  # type: ignore[attr-defined]
        tests.append(rec.test_accuracy) if rec.test_error is not None else None)
    result = trainer.run()
    return {"initial": result.initial_test_error, "final": result.final_test_error,
            "first_accuracy": tests[0], "accuracy": tests[-1], "cpu_s": time.process_time() - t0}


def seeds(path: Path, count: int, steps: int | None, jobs: int = 1) -> None:
    with ProcessPoolExecutor(max_workers=jobs) as pool:  # seeded runs, independent
        runs = list(pool.map(one_seed, [path] * count, range(1, count + 1), [steps] * count))
    for seed, r in enumerate(runs, start=1):
        accuracy = "" if r["accuracy"] is None else f", test accuracy {r['first_accuracy']:.3f} -> {r['accuracy']:.3f}"
        print(f"seed {seed}: test MSE {r['initial']:.3e} -> {r['final']:.3e} V^2 "
              f"(final/initial {r['final'] / r['initial']:.4f}){accuracy}, {r['cpu_s']:.1f} s CPU")
    ratios = [r["final"] / r["initial"] for r in runs]
    accuracies = [r["accuracy"] for r in runs if r["accuracy"] is not None]
    print(f"{path.name}, {count} seeds: median test MSE {np.median([r['final'] for r in runs]):.3e} V^2, "
          f"median final/initial {np.median(ratios):.4f}; improved: {sum(q < 1 for q in ratios)}/{count}"
          + (f"; median test accuracy {np.median(accuracies):.3f} (each: "
             f"{', '.join(f'{a:.3f}' for a in accuracies)})" if accuracies else ""))


def speed(steps: int) -> None:
    protocol, _ = load_protocol(PROTOCOL)
    per_step, windows = {}, []
    for reference in (True, False):
        exp = build_experiment(protocol, source=str(PROTOCOL), base_dir=ROOT, seed=1, steps=steps)
        physics = exp.backend.physics  # type: ignore[attr-defined]
        physics.reference = reference
        if reference:  # keep every window: (sources, clamps, duration, free clamps, gates)
            learn = physics.learn

            def spy(src, clamps, duration, free_clamps=None, _learn=learn, _ph=physics):  # noqa: ANN001, ANN202
                windows.append((src, clamps, duration, free_clamps, _ph.gates.copy()))
                return _learn(src, clamps, duration, free_clamps)
            physics.learn = spy
        t0 = time.process_time()
        make_trainer(exp).run()
        per_step[reference] = (time.process_time() - t0) / steps
        print(f"{'reference' if reference else 'fast':9s}: {per_step[reference] * 1e3:8.1f} ms CPU per step "
              f"({physics.evaluations} gate-rate evaluations in {steps} steps)", flush=True)
    print(f"speed-up per step: {per_step[True] / per_step[False]:.1f}x")
    exp = build_experiment(protocol, source=str(PROTOCOL), base_dir=ROOT, seed=1, steps=steps)
    physics = exp.backend.physics  # type: ignore[attr-defined]
    tolerance = physics.params.step_tolerance
    ends = {}
    for name, ref, params in (("reference", True, physics.params), ("fast", False, physics.params),
                              ("tight", False, replace(physics.params, step_tolerance=1e-8))):
        physics.reference, physics.params = ref, params
        out = []
        for src, clamps, duration, free_clamps, gates in windows:
            physics.gates = gates.copy()
            physics.learn(src, clamps, duration, free_clamps)
            out.append(physics.gates - gates)
        ends[name] = np.array(out)
    moved = np.abs(ends["tight"]).max()
    print(f"{len(windows)} windows of {windows[0][2] * 1e6:.0f} us; step_tolerance {tolerance:g} V; "
          f"largest gate movement in a window {moved * 1e3:.1f} mV")
    for a, b in (("fast", "reference"), ("reference", "tight"), ("fast", "tight")):
        print(f"max |gate {a} - gate {b}| over a window: {np.abs(ends[a] - ends[b]).max() * 1e3:.4f} mV")


#: variants of protocols/insitu-transistor-xor.toml, each as its changed keys
#: (section path, key, value; value None removes the key)
XOR_VARIANTS: dict[str, list[tuple[str, str, object]]] = {
    "as shipped": [],
    "free twin free (no anti-clamp)": [("training.insitu", "anti_clamp", False)],
    "NOR, 2 ms per step": [("training.insitu", "normalise", True), ("training.insitu", "learn_time_us", 2000.0)],
    "NOR, 10 us per step": [("training.insitu", "normalise", True), ("training.insitu", "learn_time_us", 10.0)],
    "600 steps": [("training", "steps", 600)],
    "start gates over 1-2 V": [("edges", "gate_init", [1.0, 2.0])],
    "eta 0.5": [("training.insitu", "eta", 0.5)],
    "eta 2.48 (10x amplifier)": [("training.insitu", "eta", 2.48), ("training.insitu", "amplifier_gain", 10.0)],
    "before (no anti-clamp, NOR 2 ms, 200 steps, quiet amplifiers)": [
        ("training.insitu", "anti_clamp", False), ("training.insitu", "normalise", True),
        ("training.insitu", "learn_time_us", 2000.0), ("training", "steps", 200),
        ("training", "test_every", 20), ("simulator.edge_circuit", "opamp_offset", 1e-4),
        ("simulator.edge_circuit", "output_offset", 1e-5)],
}


def variant_text(changes: list[tuple[str, str, object]]) -> str:
    """The XOR protocol's text with ``changes`` applied."""
    data = tomllib.loads(XOR.read_text())
    for section, key, value in changes:
        table = data
        for part in section.split("."):
            table = table.setdefault(part, {})
        table[key] = value
    return tomli_w.dumps(data)


def one_variant(name: str, seed: int) -> dict[str, float]:
    """One seeded run of an XOR variant: final test accuracy, lowest gate (V), rms gate
    movement per step over the first 10 steps (V), share of drives on a rail."""
    protocol = parse_protocol(variant_text(XOR_VARIANTS[name]), f"{XOR.name} ({name})")
    exp = build_experiment(protocol, source=str(XOR), base_dir=ROOT, seed=seed)
    physics = exp.backend.physics  # type: ignore[attr-defined]
    drive, counts = physics.drive, [0, 0]

    def counting(v_free, v_clamped, gate):  # noqa: ANN001, ANN202
        u = drive(v_free, v_clamped, gate)
        counts[0] += u.size
        counts[1] += int(np.count_nonzero((u <= 0.0) | (u >= physics.params.rail)))
        return u
    physics.drive = counting
    states, accuracy = [], []
    trainer = make_trainer(exp)
    trainer.on_record = lambda rec: (  # type: ignore[attr-defined]
        states.append(rec.state), accuracy.append(rec.test_accuracy) if rec.test_error is not None else None)
    trainer.run()
    gates = np.array(states)
    moves = np.diff(gates[:11], axis=0)
    return {"accuracy": float(accuracy[-1]), "lowest_gate": float(gates.min()),
            "early_move": float(np.sqrt(np.mean(moves**2))),
            "on_rail": counts[1] / max(counts[0], 1)}


def even_term(seed: int) -> str:
    """The one-sided signal's part even in the nudge against the odd part, at the start
    gates of the XOR protocol's bench of ``seed``, over its training samples."""
    protocol, _ = load_protocol(XOR)
    exp = build_experiment(protocol, source=str(XOR), base_dir=ROOT, seed=seed)
    task, incidence = exp.task, exp.network.incidence
    physics = exp.backend.physics  # type: ignore[attr-defined]
    host = TransistorBackend(exp.network, physics.models[0], GateEdges(0.0, 5.0), physics.read_state())
    outs = list(task.clamp_nodes)
    spec = protocol.training.insitu
    assert spec is not None and not isinstance(spec.eta, list)
    eta = float(spec.eta)
    one, odd = [], []
    for x, y in zip(task.source_voltages(task.train.x), task.train.y):
        free = host.measure(x[None])
        out = free.at_nodes(outs)
        nudge = eta * (y[None] - out)
        clamped = host.measure(x[None], out + nudge)
        one.append(contrastive_signal(free, clamped, incidence))
        odd.append(0.5 * contrastive_signal(host.measure(x[None], out - nudge), clamped, incidence))
    even = np.array(one) - np.array(odd)
    total_even, total_odd = even.sum(axis=0), np.array(odd).sum(axis=0)
    return (f"seed {seed}: even part negative in {np.mean(even < 0) * 100:.0f} % of (sample, edge) "
            f"entries, mean {even.mean():.2e} V^2 against mean |odd part| {np.abs(odd).mean():.2e} V^2; "
            f"summed over the samples larger than the odd part on {np.sum(np.abs(total_even) > np.abs(total_odd))} "
            f"of {len(total_even)} edges")


def xor_causes(count: int, jobs: int) -> None:
    for seed in range(1, count + 1):
        print(even_term(seed), flush=True)
    names = list(XOR_VARIANTS)
    tasks = [(name, seed) for name in names for seed in range(1, count + 1)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        runs = list(pool.map(one_variant, *zip(*tasks)))
    print(f"{XOR.name} and variants, seeds 1-{count}: final test accuracy per seed (median); "
          "lowest gate; rms gate move per step, steps 1-10; drives on a rail (medians over seeds)")
    for k, name in enumerate(names):
        rows = runs[k * count:(k + 1) * count]
        acc = [r["accuracy"] for r in rows]
        print(f"{name:62s} {' '.join(f'{a:.3f}' for a in acc)} ({np.median(acc):.3f}); "
              f"{np.median([r['lowest_gate'] for r in rows]):.2f} V; "
              f"{np.median([r['early_move'] for r in rows]) * 1e3:.1f} mV; "
              f"{np.median([r['on_rail'] for r in rows]) * 100:.0f} %", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--speed", action="store_true", help="reference vs fast path, and window accuracy")
    parser.add_argument("--xor", action="store_true", help="protocols/insitu-transistor-xor.toml instead")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--xor-causes", action="store_true",
                        help="the XOR protocol against variants that undo one choice each")
    args = parser.parse_args()
    if args.xor_causes:
        xor_causes(args.seeds, args.jobs)
    elif args.speed:
        speed(args.steps or 5)
    else:
        seeds(XOR if args.xor else PROTOCOL, args.seeds, args.steps, args.jobs)


if __name__ == "__main__":
    main()
