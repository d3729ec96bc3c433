"""load_run: a run as an xarray Dataset with units and provenance, equal to the store's
records; the NetCDF export passes the IOOS compliance checker's CF-1.8 suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clln
from clln.controller.store import RunStore
from tests.conftest import PROTOCOLS, require_tool
from tests.test_cli_help import clln as run_cli

CLLN = [sys.executable, "-m", "clln.cli"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from clln.compose import build_experiment, run_training
    from clln.protocol import load_protocol

    out = tmp_path_factory.mktemp("dataset") / "runs"
    proto, text = load_protocol(PROTOCOLS / "classification-3.toml")
    exp = build_experiment(proto, source="c3", base_dir=PROTOCOLS, steps=60)
    with RunStore(out) as store:
        outcome = run_training(exp, store, protocol_text=text, protocol_path="c3",
                               extra_info={"meta": {"operator": "Ada", "tags": ["x"]},
                                           "provenance": {"host": "bench-pc"}})
        store.log_event(outcome.run_id, "note", "a note after the run")
    return out, outcome.run_id


def test_load_run_equals_the_store(run: tuple[Path, str]) -> None:
    out, run_id = run
    ds = clln.load_run(run_id[:10], out=out)
    with RunStore(out) as store:
        rec, hist, events = store.run(run_id), store.history(run_id), store.events(run_id)
    info = rec["info"]
    pairs = {
        "step": hist.steps, "error": hist.error, "nudge": hist.nudge,
        "update_norm": hist.update_norm, "n_clipped": hist.n_clipped, "step_time": hist.t,
        "test_step": hist.test_steps, "test_error": hist.test_error,
        "test_accuracy": hist.test_accuracy, "snapshot_step": hist.snapshot_steps,
        "conductance": hist.snapshots, "initial_state": rec["initial_state"],
        "final_conductance": rec["final_state"], "edge_nodes": np.asarray(info["edges"]),
        "node_position": np.asarray(info["positions"]),
        "output_nodes": np.asarray(info["output_nodes"]),
    }
    for name, expected in pairs.items():
        np.testing.assert_array_equal(ds[name].values, expected, err_msg=name)
    roles = ds["node_role"].values
    meanings = ds["node_role"].attrs["flag_meanings"].split()
    for key, role in (("sources", "source"), ("grounds", "ground"), ("clamps", "clamp")):
        code = ds["node_role"].attrs["flag_values"][meanings.index(role)]
        assert sorted(np.flatnonzero(roles == code)) == sorted(info[key])
    assert ds.attrs["protocol"] == rec["protocol_text"]
    assert ds.attrs["seed"] == rec["seed"] and ds.attrs["status"] == rec["status"]
    assert json.loads(ds.attrs["backend"]) == rec["backend"]
    assert json.loads(ds.attrs["info"]) == info
    assert json.loads(ds.attrs["meta"]) == {"operator": "Ada", "tags": ["x"]}
    assert json.loads(ds.attrs["provenance"]) == {"host": "bench-pc"}
    assert json.loads(ds.attrs["events"]) == events and events[-1]["kind"] == "note"
    # units on every variable; the cost of a classification task is a cosine distance
    for name, v in ds.variables.items():
        assert "units" in v.attrs or "flag_values" in v.attrs, name
        assert "long_name" in v.attrs, name
    assert ds["nudge"].attrs["units"] == "V" and ds["conductance"].attrs["units"] == "S"
    assert ds["test_error"].attrs["units"] == "1"
    assert ds["step_time"].attrs["standard_name"] == "time"


@pytest.mark.slow
def test_netcdf_export_is_cf_compliant_and_equals_load_run(run: tuple[Path, str],
                                                           tmp_path: Path) -> None:
    import xarray as xr

    require_tool("udunits2")  # the checker's unit library (Debian udunits-bin, libudunits2-0)
    out, run_id = run
    path = tmp_path / "run.nc"
    res = subprocess.run([*CLLN, "export", run_id, str(path), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with xr.open_dataset(path, engine="h5netcdf", decode_times=False) as ds:
        xr.testing.assert_identical(ds.load(), clln.load_run(run_id, out=out))
    with xr.open_dataset(path, engine="h5netcdf") as ds:  # times decode as CF times
        assert np.issubdtype(ds["step_time"].dtype, np.datetime64)
        again = tmp_path / "again.nc"
        ds.to_netcdf(again, engine="h5netcdf")
    for checked in (path, again):
        passed, score = cf_check(checked, tmp_path)
        assert passed and score["scored_points"] == score["possible_points"], score
        assert score["high_count"] == score["medium_count"] == score["low_count"] == 0
        print(f"\n{checked.name}: CF-1.8 strict, {score['scored_points']}/"
              f"{score['possible_points']} points")

    # the checker does fail a file with a unit udunits does not know
    bad = tmp_path / "bad.nc"
    broken = clln.load_run(run_id, out=out)
    broken["nudge"].attrs["units"] = "furlongs of zorp"
    broken.to_netcdf(bad, engine="h5netcdf")
    passed, score = cf_check(bad, tmp_path)
    assert not passed and "nudge" in json.dumps(score["high_priorities"])


def cf_check(path: Path, folder: Path) -> tuple[bool, dict]:
    """The IOOS compliance checker's CF-1.8 suite on a file, strict criteria:
    (passed, its JSON score of the file)."""
    import warnings

    with warnings.catch_warnings():  # its IOOS SOS plug-ins announce their deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        from compliance_checker.runner import CheckSuite, ComplianceChecker

        CheckSuite.load_all_available_checkers()
    report = folder / f"{path.stem}-cf.json"
    passed, errors = ComplianceChecker.run_checker([str(path)], ["cf:1.8"], 0, "strict",
                                                   output_filename=str(report),
                                                   output_format="json")
    assert not errors
    return bool(passed), json.loads(report.read_text())["cf:1.8"]


def test_export_needs_force_to_overwrite(run: tuple[Path, str], tmp_path: Path) -> None:
    import h5py

    out, run_id = run
    for name in ("a.h5", "a.nc"):
        path = tmp_path / name
        path.write_text("keep me")
        res = run_cli("export", run_id, path, "--out", out)
        assert res.returncode == 2 and "--force" in res.stderr and "Traceback" not in res.stderr
        assert path.read_text() == "keep me"
        res = run_cli("export", run_id, path, "--out", out, "--force")
        assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["steps/nudge"].attrs["units"] == "V"
        assert f["steps/t"].attrs["units"].startswith("seconds since 1970")
        assert "node_role" in f["network"] and "final_taps" not in f["state"]
        assert json.loads(f.attrs["meta"])["operator"] == "Ada"
