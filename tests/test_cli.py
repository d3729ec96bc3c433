"""The real command line, run as a subprocess: ``python -m clln.cli ...``.

Output is captured through pipes, as when a script or a CI job calls ``clln``:
what it prints must be usable there (whole paths, whole ids, one-line errors).

Each invocation costs about a second of interpreter start-up and imports, so
independent invocations are started together (module fixtures) and the tests
then check their results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clln.controller.store import RunStore

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

ROOT = Path(__file__).resolve().parents[1]
DEMO = "protocols/demo.toml"
REGRESSION = "protocols/regression-2x2.toml"
DEMO_STEPS = 60
DEMO_EDGES = 40  # 5x5 lattice, not periodic

SHOW_KEYS = {"id", "status", "steps", "initial_train_error", "final_train_error",
             "initial_test_error", "final_test_error", "wall_time_s", "backend", "protocol"}

Result = subprocess.CompletedProcess


def clln(*args: object, cwd: Path = ROOT) -> Result:
    """Run the command line the way a user's script does (no terminal, default width)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "clln.cli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def clln_many(commands: dict[str, tuple[object, ...]]) -> dict[str, Result]:
    """Run independent invocations concurrently; results by name."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(clln, *args) for name, args in commands.items()}
        return {name: f.result() for name, f in futures.items()}


def ok(res: Result) -> Result:
    assert res.returncode == 0, (res.args, res.stdout, res.stderr)
    return res


def as_json(res: Result) -> dict:
    return json.loads(ok(res).stdout)


def assert_user_error(res: Result, *must_name: str) -> str:
    """Exit 2, exactly one line on stderr starting with 'error:', no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    flat = res.stderr.replace("\n", "")
    assert flat.startswith("error: "), res.stderr
    for text in must_name:
        assert text in flat, f"{text!r} not in {res.stderr!r}"
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {res.stderr!r}"
    return lines[0]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Result]:
    """One short demo training, shared by the tests that inspect and export it."""
    out = tmp_path_factory.mktemp("cli") / "lab-runs-directory"
    res = ok(clln("train", DEMO, "--steps", DEMO_STEPS, "--out", out))
    with RunStore(out) as store:
        (row,) = store.list_runs()
    return out, row["id"], res


@pytest.fixture(scope="module")
def inspect(demo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result | Path]:
    """``runs``, ``show`` and ``export`` on the demo run, started together."""
    out, run_id, _ = demo
    files = tmp_path_factory.mktemp("export")
    results: dict[str, Result | Path] = dict(clln_many({
        "runs": ("runs", "--out", out),
        "show_json": ("show", run_id, "--out", out, "--json"),
        "show_prefix": ("show", run_id[:-2], "--out", out, "--json"),
        "show_latest": ("show", "latest", "--out", out, "--json"),
        "show_human": ("show", "latest", "--out", out),
        "show_unknown": ("show", "no-such-run", "--out", out),
        "export_h5": ("export", run_id, files / "x.h5", "--out", out),
        "export_nc": ("export", "latest", files / "x.nc", "--out", out),
        "export_csv": ("export", run_id, files / "x.csv", "--out", out),
        "export_unknown_run": ("export", "no-such-run", files / "y.h5", "--out", out),
    }))
    results["files"] = files
    return results


ERROR_CASES = {
    # name: (edit of demo.toml or None for a missing file, what the message must name)
    "unknown-key": (lambda t: t.replace("eta = 0.1 ", "eta = 0.1\nwarp = 9 "),
                    ["training.warp", "unknown key", "allowed:", "alpha", "eta", "steps"]),
    "bad-value": (lambda t: t.replace('rule = "coupled"', 'rule = "hebbian"'),
                  ["training.rule", "'hebbian'", "'coupled'", "'stepped'"]),
    "negative": (lambda t: t.replace("eta = 0.1 ", "eta = -0.1 "), ["training.eta", "-0.1"]),
    "no-format": (lambda t: t.replace("format = 1\n", ""), ["format", "missing"]),
    "invalid-toml": (lambda t: t + "\n[training\n", ["TOML"]),
    "missing-file": (None, ["no such protocol file"]),
}


@pytest.fixture(scope="module")
def errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Result, Path, Path]]:
    """Malformed protocols and other user mistakes, started together.

    Returns, by case name: (result, protocol file, --out directory).
    """
    d = tmp_path_factory.mktemp("errors")
    demo_text = (ROOT / DEMO).read_text()
    commands: dict[str, tuple[object, ...]] = {}
    paths: dict[str, tuple[Path, Path]] = {}
    for name, (change, _) in ERROR_CASES.items():
        path, out = d / f"{name}.toml", d / f"runs-{name}"
        if change is not None:
            path.write_text(change(demo_text))
        commands[name] = ("train", path, "--out", out, "--steps", 5)
        paths[name] = (path, out)
    for name, args in {
        "runs-no-store": ("runs", "--out", d / "empty"),
        "show-no-store": ("show", "latest", "--out", d / "empty"),
        "steps-zero": ("train", DEMO, "--steps", 0, "--out", d / "runs-steps-zero"),
        "unknown-option": ("train", DEMO, "--stepz", 3, "--out", d / "runs-unknown-option"),
        "unknown-command": ("frobnicate", "--out", d / "runs-unknown-command"),
    }.items():
        commands[name] = args
        paths[name] = (ROOT / DEMO, Path(str(args[-1])))
    results = clln_many(commands)
    return {name: (res, *paths[name]) for name, res in results.items()}


# -- the module entry point ---------------------------------------------------------------------


def test_python_dash_m_entry_point() -> None:
    res = ok(clln("--help"))
    for command in ("train", "runs", "show", "export"):
        assert command in res.stdout


# -- train --------------------------------------------------------------------------------------------


def test_train_exits_0_and_records_a_completed_run(demo) -> None:
    out, run_id, res = demo
    assert res.returncode == 0
    assert "Traceback" not in res.stderr
    assert run_id in res.stdout
    with RunStore(out) as store:
        rec = store.run(run_id)
        assert rec["status"] == "completed"
        assert rec["steps_done"] == DEMO_STEPS == rec["steps_planned"]
        assert rec["protocol_text"] == (ROOT / DEMO).read_text()


def test_train_prints_the_report_path_and_the_png_exists(demo) -> None:
    out, run_id, res = demo
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("report:")]
    assert len(lines) == 1, res.stdout
    report = Path(lines[0].removeprefix("report:").strip())
    assert report == out / run_id / "report.png", res.stdout
    assert report.is_file()
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_malformed_protocol_is_a_one_line_error(errors, name: str) -> None:
    res, path, out = errors[name]
    assert_user_error(res, str(path), *ERROR_CASES[name][1])
    # Nothing was recorded for a protocol that does not validate.
    if (out / "runs.sqlite").exists():
        with RunStore(out) as store:
            assert store.list_runs() == []


@pytest.mark.parametrize("name", ["steps-zero", "unknown-option", "unknown-command"])
def test_usage_errors_exit_2(errors, name: str) -> None:
    """Command-line mistakes are reported by the argument parser with exit code 2,
    not as an 'unexpected error' (exit 1)."""
    res, _, out = errors[name]
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "unexpected error" not in res.stderr
    assert "Traceback" not in res.stderr
    assert not (out / "runs.sqlite").exists()


# -- runs / show ------------------------------------------------------------------------------------


def test_runs_lists_the_run(demo, inspect) -> None:
    _, run_id, _ = demo
    res = ok(inspect["runs"])
    assert run_id in res.stdout  # the whole id, so it can be copied into 'show'/'export'
    assert "demo" in res.stdout
    assert "completed" in res.stdout


@pytest.mark.parametrize("name", ["runs-no-store", "show-no-store"])
def test_no_run_store_is_a_user_error(errors, name: str) -> None:
    res, _, out = errors[name]
    assert_user_error(res, str(out), "no run store")


def test_show_json(demo, inspect) -> None:
    out, run_id, _ = demo
    s = as_json(inspect["show_json"])
    assert SHOW_KEYS <= set(s)
    assert s["id"] == run_id
    assert s["status"] == "completed"
    assert s["steps"] == DEMO_STEPS
    for key in ("initial_train_error", "final_train_error", "initial_test_error",
                "final_test_error", "wall_time_s"):
        assert isinstance(s[key], float) and s[key] >= 0, key
    # Training on the demo does learn.
    assert s["final_train_error"] < s["initial_train_error"]
    assert s["final_test_error"] < s["initial_test_error"]
    assert s["backend"]["backend"] == "simulator"
    assert s["protocol"] == (ROOT / DEMO).read_text()
    assert len(s["final_conductances"]) == DEMO_EDGES
    with RunStore(out) as store:
        h = store.history(run_id)
        assert s["initial_train_error"] == h.error[0]
        assert s["final_train_error"] == h.error[-1]
        assert s["initial_test_error"] == h.test_error[0]
        assert s["final_test_error"] == h.test_error[-1]
        assert np.array_equal(np.array(s["final_conductances"]), store.run(run_id)["final_state"])


def test_show_by_prefix_and_latest(demo, inspect) -> None:
    _, run_id, _ = demo
    full = as_json(inspect["show_json"])
    assert as_json(inspect["show_prefix"]) == full
    assert as_json(inspect["show_latest"]) == full


def test_show_human_readable(demo, inspect) -> None:
    _, run_id, _ = demo
    res = ok(inspect["show_human"])
    assert run_id in res.stdout
    assert "completed" in res.stdout
    assert 'name = "demo"' not in res.stdout  # the protocol text only with --protocol


def test_show_unknown_run(inspect) -> None:
    assert_user_error(inspect["show_unknown"], "no-such-run")


# -- export ---------------------------------------------------------------------------------------------


def test_export_hdf5(demo, inspect) -> None:
    import h5py

    _, run_id, _ = demo
    ok(inspect["export_h5"])
    s = as_json(inspect["show_json"])
    with h5py.File(inspect["files"] / "x.h5", "r") as f:
        assert f.attrs["run_id"] == run_id
        assert f.attrs["protocol"] == (ROOT / DEMO).read_text()
        assert f["steps/error"].shape == (DEMO_STEPS,)
        assert f["steps/step"][:].tolist() == list(range(1, DEMO_STEPS + 1))
        # demo: snapshot_every = 50 -> snapshots at steps 50 and 60 (the last step)
        assert f["snapshots/step"][:].tolist() == [50, DEMO_STEPS]
        assert f["snapshots/conductances"].shape == (2, DEMO_EDGES)
        assert f["network/edges"].shape == (DEMO_EDGES, 2)
        final = f["state/final"][:]
        assert np.array_equal(final, np.array(s["final_conductances"]))
        assert np.array_equal(f["snapshots/conductances"][-1], final)
        assert f["steps/error"][0] == s["initial_train_error"]
        assert f["steps/error"][-1] == s["final_train_error"]
        assert f["tests/error"][-1] == s["final_test_error"]


def test_export_netcdf(demo, inspect) -> None:
    import xarray as xr

    _, run_id, _ = demo
    ok(inspect["export_nc"])
    s = as_json(inspect["show_json"])
    with xr.open_dataset(inspect["files"] / "x.nc", engine="h5netcdf") as ds:
        assert ds.attrs["run_id"] == run_id
        assert ds["error"].dims == ("step",)
        assert ds["error"].shape == (DEMO_STEPS,)
        assert ds["step"].values.tolist() == list(range(1, DEMO_STEPS + 1))
        assert ds["conductance"].shape == (2, DEMO_EDGES)
        assert ds["conductance"].attrs["units"] == "S"
        assert np.array_equal(ds["final_conductance"].values, np.array(s["final_conductances"]))
        assert float(ds["test_error"][-1]) == s["final_test_error"]


def test_export_unknown_suffix(inspect) -> None:
    assert_user_error(inspect["export_csv"], ".csv", ".h5", ".nc")
    assert not (inspect["files"] / "x.csv").exists()


def test_export_unknown_run(inspect) -> None:
    assert_user_error(inspect["export_unknown_run"], "no-such-run")
    assert not (inspect["files"] / "y.h5").exists()


# -- determinism --------------------------------------------------------------------------------------------


def test_same_seed_is_bit_identical_other_seed_differs(tmp_path: Path) -> None:
    same, other = tmp_path / "same", tmp_path / "other"
    ok(clln("train", REGRESSION, "--steps", 100, "--out", same))
    # regression-2x2 has seed = 1: '--seed 1' is the same experiment.
    again, different = clln_many({
        "again": ("train", REGRESSION, "--steps", 100, "--out", same, "--seed", 1),
        "different": ("train", REGRESSION, "--steps", 100, "--out", other, "--seed", 2),
    }).values()
    ok(again), ok(different)
    latest = as_json(clln("show", "latest", "--out", same, "--json"))
    with RunStore(same) as store:
        first, second = (row["id"] for row in store.list_runs())
        assert latest["id"] == second  # 'latest' is the run trained last
        a, b = store.run(first), store.run(second)
        ha, hb = store.history(first), store.history(second)
    with RunStore(other) as store:
        c = store.run("latest")
    ga, gb, gc = a["final_state"], b["final_state"], c["final_state"]
    assert ga.dtype == gb.dtype and ga.shape == gb.shape
    assert ga.tobytes() == gb.tobytes()
    assert ha.error.tobytes() == hb.error.tobytes()
    assert ha.test_error.tobytes() == hb.test_error.tobytes()
    assert latest["final_conductances"] == ga.tolist()
    # ... and training did change the conductances,
    assert not np.array_equal(a["initial_state"], ga)
    # while another seed gives another network, roles and data, hence other conductances.
    assert c["seed"] == 2
    assert not (gc.shape == ga.shape and np.array_equal(gc, ga))
