"""Export a run to HDF5 (h5py layout) or NetCDF (xarray), for analysis elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clln.controller.errors import UserError
from clln.controller.store import RunStore

FORMATS = {".h5": "hdf5", ".hdf5": "hdf5", ".nc": "netcdf"}


def export_run(store: RunStore, run: str, path: Path, *, force: bool = False) -> Path:
    """Write a run to ``path``; the suffix picks the format (.h5/.hdf5 or .nc). An existing
    file is replaced only with ``force``."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown export format '{path.suffix}'; allowed: .h5, .hdf5, .nc")
    if path.exists() and not force:
        raise UserError(f"{path}: the file exists; pass --force to overwrite it")
    rec = store.run(run)
    hist = store.history(run)
    info = rec["info"]
    attrs = {
        "run_id": rec["id"], "name": rec["name"] or "", "status": rec["status"],
        "created": rec["created"], "clln_version": rec["version"], "seed": int(rec["seed"]),
        "protocol": rec["protocol_text"], "backend": json.dumps(rec["backend"]),
        "info": json.dumps(info),
        "meta": json.dumps(info.get("meta") or {}),
        "provenance": json.dumps(info.get("provenance") or {}),
        "events": json.dumps(store.events(rec["id"])),
    }
    final = rec["final_state"] if rec["final_state"] is not None else np.full(info["n_edges"], np.nan)
    snapshots = hist.snapshots if hist.snapshots.size else np.zeros((0, info["n_edges"]))
    try:
        if fmt == "hdf5":
            _write_hdf5(path, attrs, rec, hist, final, snapshots, info)
        else:
            from clln.dataset import run_dataset

            run_dataset(store, run).to_netcdf(path, engine="h5netcdf")
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
        from clln.dataset import ROLE_CODES, _cost_units, node_role_codes

        net["node_role"] = node_role_codes(info)
        net["node_role"].attrs["flag_values"] = np.array(list(ROLE_CODES.values()), dtype=np.int8)
        net["node_role"].attrs["flag_meanings"] = " ".join(ROLE_CODES)
        net["output_nodes"] = np.asarray(info.get("output_nodes", []), dtype=np.int64)
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
        cost_units = _cost_units(info.get("task"))[0]
        for dset, units in ((steps["error"], cost_units), (tests["error"], cost_units),
                            (steps["nudge"], "V"), (tests["accuracy"], "1"),
                            (steps["t"], "seconds since 1970-01-01 00:00:00 UTC"),
                            (state["final"], "S")):
            dset.attrs["units"] = units
        snaps = f.create_group("snapshots")
        snaps["step"] = hist.snapshot_steps
        snaps["conductances"] = snapshots
        snaps["conductances"].attrs["units"] = "S"
