"""Learning in place: the capability, the rig's loop, the comparator-clocked twin bench,
the protocol keys and the trainer's in-situ mode."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clln.compose import build_experiment, make_trainer, resume_training, run_training
from clln.controller.capabilities import CapabilityError, LearnsInPlace, require
from clln.controller.errors import ProtocolError
from clln.controller.insitu import InSituExperiment, InSituTrainer, run_loop
from clln.controller.network import NodeRoles, square_lattice
from clln.controller.store import RunStore
from clln.insitu import RecordFile
from clln.protocol import load_protocol, parse_protocol
from clln.simulator.insitu_pot import ComparatorTwinParams, ComparatorTwinPhysics
from tests.conftest import dense_solution

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "protocols" / "insitu-pot-regression.toml"
NET = square_lattice(3, 3).with_roles(NodeRoles((0, 8), (4,), (2, 6)))
QUIET = ComparatorTwinParams(opamp_offset=0.0, comparator_offset=0.0, twin_mismatch=0.0,
                             r_tolerance=0.0, r_wiper_sigma=0.0, noise_rms=0.0, dead_band=1e-6)


class ScriptedPhysics:
    """A physics double that answers fixed node voltages and records every learn call;
    it computes nothing the loop computes."""

    def __init__(self, voltages: np.ndarray) -> None:
        self.voltages = voltages  # (N, n) free voltages of each training sample
        self.learned: list[tuple[np.ndarray, np.ndarray, float, np.ndarray | None]] = []

    @property
    def output_nodes(self) -> tuple[int, ...]:
        return (2, 3)

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> np.ndarray:
        rows = [int(s[0]) for s in np.atleast_2d(sources)]  # source 0 holds the sample index
        v = self.voltages[rows].copy()
        if clamps is not None:
            v[:, [2, 3]] = clamps
        return v

    def learn(self, sources, clamps, duration_s, free_clamps=None) -> None:  # noqa: ANN001
        self.learned.append((np.array(sources), np.array(clamps), duration_s, free_clamps))

    def read_state(self) -> np.ndarray:
        return np.array([float(len(self.learned))])


def scripted_experiment(**options: object) -> tuple[ScriptedPhysics, InSituExperiment]:
    n = 4
    outputs = np.array([[0.1, 0.2], [0.5, 0.5], [0.3, 0.0], [0.25, 0.25]])
    targets = np.array([[0.1, 0.2], [0.2, 0.2], [0.3, 0.4], [0.25, 0.25]])
    voltages = np.zeros((n, 5))
    voltages[:, [2, 3]] = outputs
    sources = np.c_[np.arange(n), np.zeros(n)]
    defaults: dict[str, object] = {"eta": [0.5, 2.5], "learn_time_s": [200e-6, 100e-6],
                                   "amplifier_gain": 10.0}
    ex = InSituExperiment.from_schedules(
        train_sources=sources, train_targets=targets, test_sources=sources, test_targets=targets,
        **{**defaults, **options})  # type: ignore[arg-type]
    return ScriptedPhysics(voltages), ex


def test_loop_nudges_gates_and_normalises_as_the_rig() -> None:
    physics, ex = scripted_experiment(hinge=True, margin=0.05, normalise=True,
                                      learn_flags=[True, True, False, True])
    records = list(run_loop(physics, ex))
    assert [r.step for r in records] == [0, 1, 2]
    # samples 1 and 2 are outside the margin; sample 2's learn flag is off: only sample 1 teaches
    assert [r.n_teaching for r in records[1:]] == [1, 1]
    (src, clamps, window, mirror), (_, clamps2, window2, _) = physics.learned
    assert src[0] == 1 and mirror is None
    eta1 = round(0.5 * 129) / 129  # the divider's nearest step
    np.testing.assert_allclose(clamps, [0.5 + eta1 * (0.2 - 0.5)] * 2)
    eta2 = 10.0 * round(2.5 / 10.0 * 129) / 129  # through the 10x amplifier
    np.testing.assert_allclose(clamps2, [0.5 + eta2 * (0.2 - 0.5)] * 2)
    # NOR: the step's window over the samples that teach (1; sample 2 fails but its flag is off)
    assert window == pytest.approx(200e-6) and window2 == pytest.approx(100e-6)
    physics, ex = scripted_experiment(hinge=True, margin=0.05, normalise=True)
    list(run_loop(physics, ex, n_steps=1))
    assert [w for *_, w, _ in physics.learned] == [pytest.approx(100e-6)] * 2  # 2 teaching
    assert np.isnan(records[1].clamped[[0, 2, 3]]).all()
    assert records[2].test_error is not None and records[1].test_error is None


def test_anti_clamp_holds_the_free_twin_at_the_mirrored_nudge() -> None:
    physics, ex = scripted_experiment(anti_clamp=True, eta=[0.5, 0.5], amplifier_gain=None)
    list(run_loop(physics, ex, n_steps=1))
    _, clamps, _, mirror = physics.learned[1]
    out = np.array([0.5, 0.5])
    np.testing.assert_allclose(mirror, 2 * out - clamps)  # target 2 free - goal at the same eta
    assert np.all(mirror > out)


def test_experiment_refuses_what_the_hardware_cannot_do() -> None:
    with pytest.raises(ValueError, match="amplifier"):
        scripted_experiment(amplifier_gain=None)  # eta 2.5
    with pytest.raises(ValueError, match="learning time"):
        scripted_experiment(learn_time_s=[0.1e-6, 1e-4])  # below one 0.5 us tick
    with pytest.raises(ValueError, match="learning time"):
        scripted_experiment(learn_time_s=[1e-4, 0.04])  # beyond 65535 ticks


def test_capability_is_declared_not_probed() -> None:
    physics = ComparatorTwinPhysics(NET, np.full(NET.n_edges, 50), QUIET)
    exp = build_experiment(load_protocol(PROTOCOL)[0], source=str(PROTOCOL), base_dir=ROOT,
                           steps=2)
    assert isinstance(exp.backend, LearnsInPlace)
    assert require(exp.backend, LearnsInPlace, what="x") is exp.backend
    with pytest.raises(CapabilityError, match="training mode 'in-situ' needs a bench that "
                                              "declares LearnsInPlace"):
        InSituTrainer(physics, scripted_experiment()[1], np.random.default_rng(0))


def test_one_clock_pulse_follows_the_comparators() -> None:
    """Each edge moves one tap toward more conductance where |dV_free| + offsets beats
    |dV_clamped|, checked against an independent dense Kirchhoff solve of both twins."""
    params = replace(QUIET, opamp_offset=3e-3, comparator_offset=2e-3, twin_mismatch=0.05,
                     r_tolerance=0.1, dead_band=1e-3)
    rng = np.random.default_rng(5)
    taps = rng.integers(20, 80, NET.n_edges)
    physics = ComparatorTwinPhysics(NET, taps, params, bench_seed=11)
    src, clamps = np.array([0.8, 0.3]), np.array([0.35, 0.6])
    g = [1.0 / (params.r_series + physics.r_wiper[t] + taps * physics.r_total[t] / 99) for t in (0, 1)]
    v_free = dense_solution(NET, g[0], [0, 8, 4], np.array([[0.8, 0.3, 0.0]]))[0]
    v_clamped = dense_solution(NET, g[1], [0, 8, 4, 2, 6], np.array([[0.8, 0.3, 0.0, 0.35, 0.6]]))[0]
    a, b = NET.edges.T
    s = (np.abs(v_free[a] - v_free[b] + physics.opamp_offset[0])
         - np.abs(v_clamped[a] - v_clamped[b] + physics.opamp_offset[1]) + physics.comparator_offset)
    expected = taps - (s > 1e-3) + (s < -1e-3)
    physics.learn(src, clamps, 1.0 / params.clock_hz)  # one pulse
    np.testing.assert_array_equal(physics.taps, expected)
    assert physics.pulses == 1
    physics.learn(src, clamps, 5.4 / params.clock_hz)  # learning time = whole pulses
    assert physics.pulses == 6


def test_bias_arises_only_from_the_parts() -> None:
    """At zero nudge (clamps at the free outputs) ideal parts never move a tap; the same
    bench with op-amp and comparator offsets and twin mismatch drifts."""
    src = np.array([0.7, 0.2])
    for params, moves in ((QUIET, False), (ComparatorTwinParams(noise_rms=0.0, dead_band=1e-6), True)):
        physics = ComparatorTwinPhysics(NET, np.full(NET.n_edges, 50), params, bench_seed=2)
        start = physics.taps.copy()
        for _ in range(5):
            free_out = physics._settle(0, src[None], None)[0, [2, 6]]
            physics.learn(src, free_out, 10 / params.clock_hz)
        assert bool(np.any(physics.taps != start)) is moves


def test_protocol_keys_are_validated() -> None:
    text = PROTOCOL.read_text()
    cases = {
        "eta = [0.5, 0.5]": "insitu.eta: 2 entries; allowed: one value, or one per step",
        "eta = 1.5": "insitu.eta: 1.5 is beyond the clamp hardware",
        "learn_time_us = 0.2": "insitu.learn_time_us: 0.2 us is outside the learning timer; "
                               "allowed: 0.5..32767.5 us",
        "learn_time_us = 40000.0": "insitu.learn_time_us: 40000 us is outside",
    }
    for line, message in cases.items():
        key = line.split(" =")[0]
        bad = "\n".join(line if ln.startswith(key + " =") else ln for ln in text.splitlines())
        with pytest.raises(ProtocolError, match=r"^bad\.toml: training: " + message.replace(".", r"\.")):
            parse_protocol(bad, "bad.toml")
    ok = text.replace("eta = 1.0 ", "eta = 2.48\namplifier_gain = 10.0 ")
    assert parse_protocol(ok, "ok.toml").training.insitu.amplifier_gain == 10.0
    with pytest.raises(ProtocolError, match="learn_flags: 3 entries; allowed: one per training sample"):
        parse_protocol(text.replace("margin = 0.0", "margin = 0.0\nlearn_flags = [true, false, true]"), "f")
    with pytest.raises(ProtocolError, match="simulator.preset: 'comparator-twin' learns in place"):
        host = text.replace('mode = "in-situ"', 'mode = "host"')
        parse_protocol(host[:host.index("[training.insitu]")] + host[host.index("[simulator]"):], "f")


@pytest.mark.slow
def test_bad_schedule_exits_2_with_one_line_and_records_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(PROTOCOL.read_text().replace("eta = 1.0 ", "eta = 4.0 "))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    res = subprocess.run([sys.executable, "-m", "clln.cli", "train", str(bad), "--out",
                          str(tmp_path / "runs")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "insitu.eta" in lines[0]
    assert "amplifier_gain" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "runs" / "runs.sqlite").exists()


@pytest.mark.slow
def test_in_situ_run_learns_is_recorded_and_reproduces(tmp_path: Path) -> None:
    protocol, text = load_protocol(PROTOCOL)
    outcomes, finals = [], []
    for out in ("a", "b"):
        exp = build_experiment(protocol, source=str(PROTOCOL), base_dir=ROOT)
        with RunStore(tmp_path / out) as store:
            outcome = run_training(exp, store, protocol_text=text, protocol_path=str(PROTOCOL))
            hist = store.history(outcome.run_id)
            finals.append(store.run(outcome.run_id))
        outcomes.append((outcome, hist))
    (first, hist), (second, hist2) = outcomes
    assert first.status == "completed" and first.result.steps_done == protocol.training.steps
    assert first.result.final_test_error < first.result.initial_test_error / 10
    assert len(hist.error) == protocol.training.steps
    kept = RecordFile(tmp_path / "a" / first.run_id / "insitu.sqlite").read()  # every record
    assert [r.step for r in kept] == list(range(protocol.training.steps + 1))
    assert kept[-1].free.shape == (protocol.task.train, 9) and kept[0].test_error is not None
    np.testing.assert_array_equal(kept[-1].state, finals[0]["final_taps"])
    np.testing.assert_array_equal(hist.test_error, hist2.test_error)  # seeded: the same run
    assert finals[0]["backend"]["preset"] == "comparator-twin"


@pytest.mark.slow
def test_interrupted_in_situ_run_resumes_exactly(tmp_path: Path) -> None:
    protocol, text = load_protocol(PROTOCOL)
    calls = {"n": 0}

    def stop_at_25() -> bool:
        calls["n"] += 1
        return calls["n"] >= 25

    with RunStore(tmp_path) as store:
        full = run_training(build_experiment(protocol, source="p", base_dir=ROOT), store,
                            protocol_text=text, protocol_path="p")
        part = run_training(build_experiment(protocol, source="p", base_dir=ROOT), store,
                            protocol_text=text, protocol_path="p", should_stop=stop_at_25)
        assert (part.status, part.result.steps_done) == ("interrupted", 25)
        done = resume_training(build_experiment(protocol, source="p", base_dir=ROOT), store,
                               part.run_id)
        assert done.status == "completed"
        np.testing.assert_array_equal(store.run(part.run_id)["final_taps"],
                                      store.run(full.run_id)["final_taps"])
        np.testing.assert_array_equal(store.history(part.run_id).error,
                                      store.history(full.run_id).error)
        kept = [RecordFile(store.run_dir(r) / "insitu.sqlite").read() for r in (full.run_id, part.run_id)]
    assert [r.step for r in kept[1]] == [r.step for r in kept[0]]
    for a, b in zip(*kept, strict=True):
        np.testing.assert_array_equal(a.state, b.state)
        np.testing.assert_array_equal(a.clamped, b.clamped)


def test_regression_is_learned_in_place_over_seeds() -> None:
    """Median over 5 seeds (tasks, parts, start taps) of test error final / initial."""
    protocol, _ = load_protocol(PROTOCOL)
    ratios = []
    for seed in range(1, 6):
        result = make_trainer(build_experiment(protocol, source="p", base_dir=ROOT, seed=seed)).run()
        ratios.append(result.final_test_error / result.initial_test_error)
    assert np.median(ratios) < 0.05, ratios
    assert max(ratios) < 1.0, ratios


def test_window_shorter_than_a_clock_pulse_is_refused() -> None:
    text = PROTOCOL.read_text().replace("normalise = false", "normalise = true")
    with pytest.raises(ProtocolError, match=r"^p\.toml: training\.insitu\.learn_time_us: 100 us / 8 "
                                            r"samples \(normalise\) is shorter than one pulse.*"
                                            r"allowed: >= 800 us$"):
        build_experiment(parse_protocol(text, "p.toml"), source="p.toml", base_dir=ROOT)
