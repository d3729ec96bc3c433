"""Sweep files, and sweeps run on real Dask: a LocalCluster, and a ``dask scheduler`` plus
``dask worker`` started as subprocesses on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from clln.compose import build_experiment
from clln.controller import ProtocolError, Trainer
from clln.controller.store import RunStore
from clln.protocol import parse_protocol
from clln.sweep import load_sweep, open_client, parse_sweep, run_sweep

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "protocols" / "regression-2x2.toml"
BIN = Path(sys.executable).parent

# Short runs; point 3 names a source node the 64-node network does not have: it fails
# in its worker, and the sweep goes on.
SWEEP = f"""
format = 1
name = "test-sweep"
protocol = "{PROTOCOL}"
seeds = [3, 4]

[set]
"training.steps" = 20
"training.test_every" = 10
"training.snapshot_every" = 10

[[points]]
"training.eta" = 0.1
[[points]]
"training.eta" = 0.5
[[points]]
"training.eta" = 0.5
"task.source_nodes" = [0, 999]
"""


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the file --------------------------------------------------------------------------


def test_grid_expands_to_every_combination_and_seed(tmp_path: Path) -> None:
    sweep = parse_sweep(f"""
format = 1
name = "g"
protocol = "{PROTOCOL}"
seeds = [5, 6]
[set]
"training.steps" = 7
[grid]
training.eta = [0.1, 0.2, 0.3]        # a TOML dotted key is the same as a quoted one
"training.alpha" = [0.01, 0.02]
""", tmp_path / "g.toml")
    assert sweep.keys == ("training.eta", "training.alpha")
    assert len(sweep.runs) == 12
    seen = set()
    for run in sweep.runs:
        proto = parse_protocol(run.protocol_text)
        assert proto.seed == run.seed and proto.training.steps == 7
        assert proto.training.eta == run.parameters["training.eta"]
        assert proto.training.alpha == run.parameters["training.alpha"]
        assert proto.network.nodes == 64  # untouched keys come from the protocol
        seen.add((proto.training.eta, proto.training.alpha, proto.seed))
    assert len(seen) == 12
    assert sweep.plot_x == "training.eta"


def test_seeds_default_to_the_protocol_seed(tmp_path: Path) -> None:
    sweep = parse_sweep(f'format = 1\nname = "s"\nprotocol = "{PROTOCOL}"\n'
                        '[grid]\n"training.eta" = [0.1]\n', tmp_path / "s.toml")
    assert [r.seed for r in sweep.runs] == [tomllib.loads(PROTOCOL.read_text())["seed"]]


@pytest.mark.parametrize(("body", "message"), [
    ('[grid]\n"training.eta" = [0.1]\ncolour = ["red"]',
     r"s\.toml: grid\.colour: unknown protocol key; allowed: description, name$"),
    ('wokers = 3\n[grid]\n"training.eta" = [0.1]',
     r"s\.toml: wokers: unknown key; allowed: description, format, grid, name, plot, points, "
     r"protocol, seeds, set"),
    ('[grid]\n"training.etta" = [0.1]',
     r"s\.toml: grid\.training\.etta: unknown protocol key; allowed: training\.alpha, "
     r"training\.backoff, training\.batch"),
    ('[grid]\n"training.eta" = [0.1, -1.0]',
     r"s\.toml \(training\.eta = -1\.0\): training\.eta: .*(greater than 0|must be within)"),
    ('[grid]\n"training.rule" = ["coupled", "hebbian"]',
     r"training\.rule: 'hebbian' is not allowed; allowed: 'coupled' or 'stepped'"),
    ('[grid]\n"training.eta" = 0.1', r"s\.toml: grid\.training\.eta: .*valid list \(got 0\.1\)"),
    ('[grid]\n"training.eta" = []', r"grid\.training\.eta: .*at least 1 item"),
    ('[grid]\n"seed" = [1, 2]', r"grid\.seed: cannot be swept \(give seeds in the sweep's 'seeds'"),
    ('[grid]\n"training" = [1]', r"grid\.training: is a table; give one of its keys: training\.alpha"),
    ("", r"s\.toml: give exactly one of \[grid\] .* or \[\[points\]\]"),
    ('[grid]\n"training.eta" = [0.1]\n[[points]]\n"training.eta" = 0.1', r"exactly one of"),
    ('[grid]\n"training.eta" = [0.1]\n[plot]\nx = "training.alpha"',
     r"plot\.x: 'training\.alpha' is not swept; allowed: training\.eta"),
    ('[grid]\n"training.eta" = [0.1]\n[plot]\ny = "accuracy"',
     r"plot\.y: 'accuracy' is not allowed; allowed: 'final_test_error'"),
    ('seeds = [-1]\n[grid]\n"training.eta" = [0.1]', r"seeds\.0: .*greater than or equal to 0"),
    ('[set]\n"training.eta" = 0.2\n[grid]\n"training.eta" = [0.1]',
     r"set\.training\.eta: is also swept"),
])
def test_mistakes_name_the_file_the_key_and_what_is_allowed(tmp_path: Path, body: str,
                                                            message: str) -> None:
    text = f'format = 1\nname = "s"\nprotocol = "{PROTOCOL}"\n{body}\n'
    with pytest.raises(ProtocolError, match=message) as info:
        parse_sweep(text, tmp_path / "s.toml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ('name = "s"', r"format: required key is missing; this clln reads sweep format 1"),
    ('format = 2\nname = "s"', r"format: version 2 is not supported; allowed: 1 \(upgrade clln\)"),
    ('format = 1\nname = "s"\nprotocol = "missing.toml"\n[grid]\n"training.eta" = [0.1]',
     r"protocol: no such protocol file '.*missing\.toml'"),
    ("format = 1\nname = [", r"not valid TOML"),
])
def test_version_and_protocol_are_checked(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_sweep(text, tmp_path / "s.toml")


def test_shipped_sweep_is_valid() -> None:
    for path in sorted((ROOT / "protocols" / "sweeps").glob("*.toml")):
        sweep = load_sweep(path)
        assert sweep.runs, path


def test_cli_rejects_a_bad_sweep_file_with_one_line_and_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, f'format = 1\nname = "s"\nprotocol = "{PROTOCOL}"\n'
                           '[grid]\n"training.eta" = [0.1]\n"training.etta" = [1]\n')
    result = subprocess.run([BIN / "clln", "sweep", str(path), "--out", str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "training.etta: unknown protocol key" in lines[0]
    assert str(path) in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing started


# -- running on Dask -------------------------------------------------------------------


def check_outcome(out: Path, rows: list[dict], sweep_path: Path) -> None:
    """Every run is in the store with its parameters; the failed one is reported."""
    assert [r["index"] for r in rows] == list(range(6))
    assert [r["status"] for r in rows] == ["completed"] * 4 + ["failed"] * 2
    assert all("999" in r["message"] for r in rows[4:])
    store = RunStore(out)
    try:
        for row in rows[:4]:
            record = store.run(row["run_id"])
            assert record["status"] == "completed" and record["seed"] == row["seed"]
            proto = parse_protocol(record["protocol_text"])
            assert proto.training.eta == row["training.eta"] and proto.seed == row["seed"]
            assert proto.training.steps == 20
            assert np.isfinite(row["final_test_error"])
        # A stored run replays bit-identically from its protocol text alone.
        record = store.run(rows[1]["run_id"])
        proto = parse_protocol(record["protocol_text"])
        exp = build_experiment(proto, source="replay", base_dir=PROTOCOL.parent)
        Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run()
        assert np.array_equal(exp.backend.read_edges().conductances, record["final_state"])
    finally:
        store.close()


def test_sweep_on_a_local_cluster_records_every_run(tmp_path: Path) -> None:
    sweep = parse_sweep(SWEEP, tmp_path / "sweep.toml")
    out = tmp_path / "runs"
    client, cluster = open_client(None, 2)
    seen: list[int] = []
    try:
        outcome = run_sweep(sweep, out, client, on_result=lambda row: seen.append(row["index"]))
    finally:
        client.close()
        cluster.close()
    assert sorted(seen) == list(range(6))
    check_outcome(out, outcome.rows, sweep.path)
    assert outcome.n_failed == 2
    with outcome.csv.open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["status"] for r in table] == [r["status"] for r in outcome.rows]
    assert table[2]["training.eta"] == "0.5" and table[2]["seed"] == "3"
    data = json.loads(outcome.json.read_text())
    assert data["keys"] == ["training.eta", "task.source_nodes"]
    assert data["runs"][5]["task.source_nodes"] == [0, 999]
    assert outcome.plot is not None and outcome.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def dask_scheduler(tmp_path: Path):
    """A ``dask scheduler`` and one ``dask worker`` as subprocesses on 127.0.0.1."""
    info = tmp_path / "scheduler.json"
    env = dict(os.environ)
    procs = [subprocess.Popen(
        [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(info)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            assert procs[0].poll() is None, "the dask scheduler exited"
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but be sure it is complete
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen(
            [BIN / "dask", "worker", "--scheduler-file", str(info), "--host", "127.0.0.1",
             "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--no-nanny"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_cli_sweep_on_a_running_scheduler(tmp_path: Path, dask_scheduler: str) -> None:
    path = write(tmp_path, SWEEP)
    out = tmp_path / "runs"
    result = subprocess.run(
        [BIN / "clln", "sweep", str(path), "--scheduler", dask_scheduler, "--out", str(out)],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 of 6 runs completed" in result.stdout
    assert result.stdout.count("failed (") == 2  # both failed runs reported, one line each
    csv_path = Path(result.stdout.split("results: ")[1].split("\n")[0].strip())
    with csv_path.open() as fh:
        rows = [dict(r) for r in csv.DictReader(fh)]
    parsed = [{**r, "index": int(r["index"]), "seed": int(r["seed"]),
               "training.eta": float(r["training.eta"]),
               "final_test_error": float(r["final_test_error"] or "nan")} for r in rows]
    check_outcome(out, parsed, path)
    assert (csv_path.parent / "summary.png").exists()


def test_unreachable_scheduler_is_a_user_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a free port on 127.0.0.1 that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write(tmp_path, SWEEP)
    result = subprocess.run(
        [BIN / "clln", "sweep", str(path), "--scheduler", f"tcp://127.0.0.1:{port}",
         "--out", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(f"error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
