"""``clln analyze`` end to end on a short simulated run: figures, JSON numbers that agree
with direct computations on the stored conductances, and one-line user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from clln.analysis.analyze import load_run
from clln.analysis.cost import cost_landscape
from clln.analysis.susceptibility import GroundedGreen, relative_conductance, susceptibility_norms
from clln.compose import build_experiment, rebuild_task
from clln.controller.store import RunStore
from clln.protocol import load_protocol, parse_protocol

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

ROOT = Path(__file__).resolve().parents[1]

PROTOCOL = """\
format = 1
name = "tiny"
seed = 2

[network]
kind = "delaunay"
nodes = 40

[edges]
gmin = 1e-5
gmax = 1e-2
init = [1e-3, 2e-3]

[task]
kind = "regression"
inputs = 2
outputs = 2
train = 12
test = 20

[training]
alpha = 0.5
eta = 0.1
batch = 12
steps = 300
test_every = 10
snapshot_every = 50
"""


def clln(*args: object) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    return subprocess.run([sys.executable, "-m", "clln.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    folder = tmp_path_factory.mktemp("analyze")
    proto = folder / "tiny.toml"
    proto.write_text(PROTOCOL)
    runs = folder / "runs"
    res = clln("train", proto, "--out", runs)
    assert res.returncode == 0, res.stderr
    run_id = RunStore(runs).list_runs()[-1]["id"]
    return runs, run_id, proto


@pytest.fixture(scope="module")
def analyzed(trained) -> tuple[subprocess.CompletedProcess, dict]:
    runs, run_id, _ = trained
    res = clln("analyze", run_id[:12], "--out", runs)
    assert res.returncode == 0, res.stderr
    return res, json.loads((runs / run_id / "analysis" / "analysis.json").read_text())


def test_analyze_writes_figures_and_json(trained, analyzed) -> None:
    runs, run_id, _ = trained
    res, numbers = analyzed
    folder = runs / run_id / "analysis"
    for name in ("susceptibility.png", "spectra.png", "aging.png"):
        path = folder / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figure: {path}" in res.stdout
    assert f"numbers: {folder / 'analysis.json'}" in res.stdout
    assert numbers["run"] == run_id
    assert {"susceptibility", "aging"} <= numbers.keys()
    assert numbers["aging"]["relaxation"]["best"] in ("exponential", "stretched", "power")
    corr = numbers["aging"]["correlation"]
    assert corr["steps"] == [50, 100, 150, 200, 250, 300]


def test_numbers_agree_with_direct_computation(trained, analyzed) -> None:
    runs, run_id, proto_path = trained
    _, numbers = analyzed
    store = RunStore(runs)
    data = load_run(store, run_id)
    rec = store.run(run_id)
    g = np.asarray(rec["final_state"])
    norms = susceptibility_norms(GroundedGreen(data.network, g), method="exact").norms
    sus = numbers["susceptibility"]
    assert sus["median_norm"] == pytest.approx(float(np.median(norms)), rel=1e-9)
    rel = relative_conductance(data.network, g)
    assert sus["spearman_norm_vs_relative_conductance"] == pytest.approx(
        scipy.stats.spearmanr(norms, rel).statistic, rel=1e-9)
    task = rebuild_task(parse_protocol(rec["protocol_text"]), rec["seed"], rec["info"])
    land = cost_landscape(data.network, g, task)
    assert sus["cost"]["cost"] == pytest.approx(land.cost, rel=1e-9)
    assert sus["cost"]["spearman_norm_vs_stiff_weight"] == pytest.approx(
        scipy.stats.spearmanr(norms, land.modes.weight).statistic, rel=1e-9)


def test_rebuilt_task_is_the_trained_one(trained) -> None:
    runs, run_id, proto_path = trained
    rec = RunStore(runs).run(run_id)
    proto, _ = load_protocol(proto_path)
    exp = build_experiment(proto, source=str(proto_path), base_dir=proto_path.parent)
    task = rebuild_task(proto, rec["seed"], rec["info"])
    np.testing.assert_array_equal(task.train.x, exp.task.train.x)
    np.testing.assert_array_equal(task.train.y, exp.task.train.y)
    assert task.output_nodes == exp.task.output_nodes


def test_aging_only_and_user_errors(trained) -> None:
    runs, run_id, _ = trained
    with ThreadPoolExecutor(max_workers=3) as pool:
        res, bad, missing = pool.map(lambda args: clln(*args), [
            ("analyze", "latest", "--out", runs, "--what", "aging"),
            ("analyze", run_id, "--out", runs, "--what", "everything"),
            ("analyze", "nope", "--out", runs),
        ])
    assert res.returncode == 0, res.stderr
    assert "aging.png" in res.stdout and "susceptibility.png" not in res.stdout
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--what" in bad.stderr and "susceptibility, aging, all" in bad.stderr
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


def test_a_stepped_edge_run_is_analysed_from_its_snapshots(tmp_path: Path) -> None:
    """Stepped runs record their start as taps: the analysis starts from the first
    conductance snapshot instead and skips the before-training spectra."""
    import clln.compose as compose
    from clln.analysis.analyze import analyze_run

    path = ROOT / "protocols" / "pot-bench-regression.toml"
    proto, text = load_protocol(path)
    exp = build_experiment(proto, source=str(path), base_dir=path.parent, steps=60)
    store = RunStore(tmp_path)
    run_id = compose.run_training(exp, store, protocol_text=text, protocol_path=str(path)).run_id
    data = load_run(store, run_id)
    assert data.initial is None
    np.testing.assert_array_equal(data.final, store.run(run_id)["final_state"])
    out = analyze_run(store, run_id, task=exp.task, what="susceptibility")
    sus = out.numbers["susceptibility"]
    assert "cost_before" not in sus and sus["cost"]["n_stiff"] >= 1
    assert [p.name for p in out.figures] == ["susceptibility.png", "spectra.png"]
