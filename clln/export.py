"""Export a run to HDF5 (h5py layout) or NetCDF (xarray), for analysis elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clln.controller.errors import UserError
from clln.controller.store import RunStore

FORMATS = {".h5": "hdf5", ".hdf5": "hdf5", ".nc": "netcdf"}


def export_run(store: RunStore, run: str, path: Path) -> Path:
    """Write a run to ``path``; the suffix picks the format (.h5/.hdf5 or .nc)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown export format '{path.suffix}'; allowed: .h5, .hdf5, .nc")
    rec = store.run(run)
    hist = store.history(run)
    info = rec["info"]
    attrs = {
        "run_id": rec["id"], "name": rec["name"] or "", "status": rec["status"],
        "created": rec["created"], "clln_version": rec["version"], "seed": int(rec["seed"]),
        "protocol": rec["protocol_text"], "backend": json.dumps(rec["backend"]),
        "info": json.dumps(info),
    }
    final = rec["final_state"] if rec["final_state"] is not None else np.full(info["n_edges"], np.nan)
    snapshots = hist.snapshots if hist.snapshots.size else np.zeros((0, info["n_edges"]))
    try:
        if fmt == "hdf5":
            _write_hdf5(path, attrs, rec, hist, final, snapshots, info)
        else:
            _write_netcdf(path, attrs, rec, hist, final, snapshots, info)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc})") from None
    return path


def _write_hdf5(path, attrs, rec, hist, final, snapshots, info) -> None:  # type: ignore[no-untyped-def]
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
        net = f.create_group("network")
        net["edges"] = np.asarray(info["edges"], dtype=np.int64)
        if info.get("positions") is not None:
            net["positions"] = np.asarray(info["positions"])
        for role in ("sources", "grounds", "clamps"):
            net[role] = np.asarray(info[role], dtype=np.int64)
        state = f.create_group("state")
        state["initial"] = np.asarray(rec["initial_state"])
        state["final"] = final
        if rec["final_taps"] is not None:
            state["final_taps"] = rec["final_taps"]
        steps = f.create_group("steps")
        for name in ("steps", "error", "nudge", "update_norm", "n_clipped", "t"):
            steps[name if name != "steps" else "step"] = getattr(hist, name)
        tests = f.create_group("tests")
        tests["step"], tests["error"], tests["accuracy"] = (
            hist.test_steps, hist.test_error, hist.test_accuracy)
        snaps = f.create_group("snapshots")
        snaps["step"] = hist.snapshot_steps
        snaps["conductances"] = snapshots
        snaps["conductances"].attrs["units"] = "S"


def _write_netcdf(path, attrs, rec, hist, final, snapshots, info) -> None:  # type: ignore[no-untyped-def]
    import xarray as xr

    ds = xr.Dataset(
        {
            "error": ("step", hist.error, {"long_name": "train batch cost"}),
            "nudge": ("step", hist.nudge, {"units": "V"}),
            "update_norm": ("step", hist.update_norm),
            "n_clipped": ("step", hist.n_clipped),
            "test_error": ("test_step", hist.test_error),
            "test_accuracy": ("test_step", hist.test_accuracy),
            "conductance": (("snapshot_step", "edge"), snapshots, {"units": "S"}),
            "initial_state": ("edge", np.asarray(rec["initial_state"], dtype=float)),
            "final_conductance": ("edge", final, {"units": "S"}),
            "edge_nodes": (("edge", "end"), np.asarray(info["edges"], dtype=np.int64)),
        },
        coords={"step": hist.steps, "test_step": hist.test_steps,
                "snapshot_step": hist.snapshot_steps, "edge": np.arange(info["n_edges"])},
        attrs=attrs,
    )
    ds.to_netcdf(path, engine="h5netcdf")
