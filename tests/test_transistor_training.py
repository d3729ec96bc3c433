"""Training transistor networks through the NetworkBackend seam: protocols, bad input,
determinism, device spread, warm-started Newton, a paused and resumed run, and a
nonlinear task a linear network cannot learn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clln.compose import build_experiment, make_trainer, resume_training, run_training
from clln.controller import ProtocolError
from clln.controller.store import RunStore
from clln.protocol import parse_protocol
from clln.simulator.nonlinear import ConvergenceError

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "protocols"


def protocol_text(name: str, **replace: str) -> str:
    text = (PROTOCOLS / f"{name}.toml").read_text()
    for old, new in replace.items():
        old = old.replace("__", " ")
        assert old in text, old
        text = text.replace(old, new)
    return text


def experiment(text: str, seed: int | None = None, steps: int | None = None):  # noqa: ANN201
    return build_experiment(parse_protocol(text, "test.toml"), source="test.toml", base_dir=PROTOCOLS,
                            seed=seed, steps=steps)


@pytest.mark.parametrize("name", ["xor", "nonlinear-regression"])
def test_shipped_protocols_build_transistor_16(name: str) -> None:
    exp = experiment((PROTOCOLS / f"{name}.toml").read_text())
    assert exp.network.n_nodes == 16 and exp.network.n_edges == 32
    assert exp.backend.edges.kind == "gate"
    desc = exp.backend.describe()
    assert desc["preset"] == "transistor-16"
    assert len(desc["devices"][0]["v_t_per_device"]) == 32  # the drawn fingerprint is recorded


def test_device_spread_is_drawn_once_per_bench_seed() -> None:
    text = protocol_text("nonlinear-regression")
    a, b = experiment(text, seed=3), experiment(text, seed=3)
    c = experiment(text, seed=4)
    vt = [np.asarray(e.backend.models[0].v_t) for e in (a, b, c)]
    np.testing.assert_array_equal(vt[0], vt[1])
    assert not np.allclose(vt[0], vt[2])
    assert 0.004 < np.std(vt[0] - 0.62) < 0.02  # sigma V_T = 10 mV
    twin = experiment(text.replace('preset = "transistor-16"',
                                   'preset = "transistor-16"\nparameters = { twin = true }'))
    assert twin.backend.twin
    assert not np.allclose(twin.backend.models[0].v_t, twin.backend.models[1].v_t)


def test_same_seed_same_run() -> None:
    text = protocol_text("xor")
    runs = []
    for _ in range(2):
        exp = experiment(text, steps=5)
        make_trainer(exp).run()
        runs.append(exp.backend.read_edges().conductances)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_warm_started_newton_needs_few_iterations_in_training() -> None:
    """Training solves (each step's free and clamped batch), after the first cold step."""
    exp = experiment(protocol_text("xor"), steps=40)
    trainer = make_trainer(exp)
    trainer.step(0)
    exp.backend.iterations.clear()
    for index in range(1, 41):
        trainer.step(index)
    counts = np.concatenate(exp.backend.iterations)
    assert counts.size >= 40 * 2 * 40  # free, clamped (and mirrored) batches of 40
    assert np.mean(counts <= 5) >= 0.95


def test_nonlinear_regression_beats_every_linear_network() -> None:
    """The transistor network's test MSE falls below the least-squares floor of any
    output affine in the inputs (what a linear network can at best produce)."""
    exp = experiment(protocol_text("nonlinear-regression", **{"steps = 600": "steps = 300"}))
    trainer = make_trainer(exp)
    trainer.run()
    mse, _ = trainer.evaluate(exp.task.test)
    x, y = exp.task.test.x, exp.task.test.y[:, 0]
    affine = np.c_[x, np.ones(len(x))]
    residual = y - affine @ np.linalg.lstsq(affine, y, rcond=None)[0]
    linear_floor = float(np.mean(residual**2))
    assert linear_floor > 1.5e-3
    assert mse < 0.5 * linear_floor


@pytest.mark.parametrize(("old", "new", "key"), [
    ("gate_init = [1.0, 2.0]", "gate_init = [1.0, 6.0]", "gate_init"),
    ('kind = "transistor"', 'kind = "transistor"\ns = -8.5e-4', "edges.s"),
    ('kind = "transistor"', 'kind = "continuous"', "apply to transistor edges only"),
    ("gate_max = 5.0", "gate_max = -1.0", "gate_min"),
])
def test_bad_transistor_keys_name_the_key(old: str, new: str, key: str) -> None:
    text = (PROTOCOLS / "nonlinear-regression.toml").read_text().replace(old, new)
    with pytest.raises(ProtocolError, match=key) as info:
        experiment(text)
    assert "\n" not in str(info.value)


def clln_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    return subprocess.run([sys.executable, "-m", "clln.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_floating_node_and_bad_gate_exit_2_with_one_line(tmp_path: Path) -> None:
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n1 2\n2 3\n3 0\n0 2\n4 5\n5 6\n")  # nodes 4-6 float
    text = (PROTOCOLS / "nonlinear-regression.toml").read_text()
    text = text.replace('kind = "lattice"\nrows = 4\ncols = 4\nperiodic = true',
                        f'kind = "edge-list"\nfile = "{edges}"')
    text = text.replace('preset = "transistor-16"', 'preset = "transistor-pair"')
    text = text.replace("[task]", "[task]\nsource_nodes = [0, 1]\nground_nodes = [2]\noutput_nodes = [3]")
    floating = tmp_path / "floating.toml"
    floating.write_text(text)
    bad_gate = tmp_path / "bad_gate.toml"
    bad_gate.write_text((PROTOCOLS / "xor.toml").read_text().replace(
        "gate_init = [1.45, 1.55]", "gate_init = [-1.0, 2.0]"))
    for path, words in ((floating, "float"), (bad_gate, "gate_init")):
        res = clln_cli("train", path, "--out", tmp_path / "runs", cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and str(path.name) in lines[0], res.stderr
        assert "Traceback" not in res.stderr


def test_convergence_failure_pauses_the_run_and_resume_completes(tmp_path: Path) -> None:
    text = protocol_text("xor", **{"steps = 1000": "steps = 6", "test_every = 50": "test_every = 3"})
    exp = experiment(text)
    store = RunStore(tmp_path / "runs")
    solver = exp.backend.solvers[0]
    calls = {"n": 0}
    original = solver.solve

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 9:  # mid-run: the fourth step's free measurement
            raise ConvergenceError("Newton's method did not converge for sample 2 of the batch "
                                   "(residual 1e-3 A after 40 iterations)", 2, 1e-3)
        return original(*args, **kwargs)

    solver.solve = failing  # type: ignore[method-assign]
    with pytest.raises(ConvergenceError):
        run_training(exp, store, protocol_text=text, protocol_path="xor.toml")
    run = store.list_runs()[-1]
    assert run["status"] == "paused"
    assert "sample 2" in (store.run(run["id"])["message"] or "")
    fresh = experiment(text)
    outcome = resume_training(fresh, store, run["id"])
    assert outcome.status == "completed"
    assert store.history(run["id"]).steps[-1] == 6


def test_transistor_pair_has_its_fixed_resistor_and_learns_both_tasks() -> None:
    """Seed 002's small network: Kirchhoff's law at the output with the two transistors
    (the device model evaluated here directly) and the 500 ohm resistor; training brings
    both tasks' outputs to their targets."""
    exp = experiment((PROTOCOLS / "transistor-pair.toml").read_text())
    backend = exp.backend
    sources = exp.task.source_voltages(exp.task.train.x)
    v = backend.solve(0, sources, None).voltages
    model = backend.models[0]
    gates = backend.gate_voltages()
    transistors = model.currents(v[:, [0, 1]], v[:, [2, 2]], gates[None, :]).current  # high, low -> out
    into_output = transistors.sum(axis=1) + (v[:, 3] - v[:, 2]) / 500.0
    assert np.abs(into_output).max() < 1e-15
    assert exp.backend.describe()["fixed_resistors"] == [[3, 2, 500.0]]
    trainer = make_trainer(exp)
    result = trainer.run()
    assert result.final_test_error < 1e-2 * result.initial_test_error
