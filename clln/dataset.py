"""A run as an xarray Dataset: every recorded array with CF-style attributes (units,
long_name, standard_name where the CF table has one) and the whole provenance.

``load_run(id)`` is what ``qcodes.load_by_id`` is for QCoDeS users; the NetCDF export is
this Dataset written to disk (CF-1.8 conventions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from clln.controller.store import RunStore

#: Node role codes of ``node_role`` (CF flag_values / flag_meanings).
ROLE_CODES = {"internal": 0, "source": 1, "ground": 2, "clamp": 3}
EPOCH = "seconds since 1970-01-01 00:00:00 UTC"


def _cost_units(task: str | None) -> tuple[str, str]:
    """(units, long_name suffix) of the task's cost: MSE in V^2, cosine distance unitless."""
    if task == "classification":
        return "1", "mean cosine distance"
    return "V2", "mean squared error of the output voltages"


def node_role_codes(info: dict[str, Any]) -> np.ndarray:
    """(n_nodes,) role code of each node (see :data:`ROLE_CODES`)."""
    roles = np.zeros(int(info["n_nodes"]), dtype=np.int8)
    for key, role in (("sources", "source"), ("grounds", "ground"), ("clamps", "clamp")):
        roles[np.asarray(info.get(key, []), dtype=np.int64)] = ROLE_CODES[role]
    return roles


def run_dataset(store: RunStore, run: str) -> Any:
    """The Dataset of one run of ``store`` (see the module docstring)."""
    import xarray as xr

    rec = store.run(run)
    hist = store.history(run)
    info = rec["info"]
    n_edges = int(info["n_edges"])
    stepped = rec["final_taps"] is not None or info.get("rule") == "stepped"
    state_units = "1" if stepped and np.asarray(rec["initial_state"]).dtype.kind in "iu" else "S"
    cost_units, cost_name = _cost_units(info.get("task"))
    snapshots = hist.snapshots if hist.snapshots.size else np.zeros((0, n_edges))
    final = rec["final_state"] if rec["final_state"] is not None else np.full(n_edges, np.nan)

    def var(dims: Any, data: Any, long_name: str, units: str | None = None, **extra: Any) -> Any:
        attrs = {"long_name": long_name, **extra}
        if units is not None:
            attrs["units"] = units
        return (dims, data, attrs)

    data: dict[str, Any] = {
        "error": var("step", hist.error, f"train batch cost ({cost_name})", cost_units),
        "nudge": var("step", hist.nudge, "rms nudge of the clamped nodes", "V"),
        "update_norm": var("step", hist.update_norm, "norm of the applied update",
                           "1" if stepped else "S",
                           comment="taps for stepped edges, siemens for continuous edges"),
        "n_clipped": var("step", hist.n_clipped, "edges whose update was clipped", "1"),
        "step_time": var("step", hist.t, "time the step was recorded", EPOCH,
                         standard_name="time", calendar="standard"),
        "test_error": var("test_step", hist.test_error, f"test set cost ({cost_name})", cost_units),
        "test_accuracy": var("test_step", hist.test_accuracy,
                             "test set winner-take-all accuracy (classification)", "1"),
        "conductance": var(("snapshot_step", "edge"), snapshots, "edge conductance", "S"),
        "initial_state": var("edge", np.asarray(rec["initial_state"]),
                             "edge state at step 0 (conductance, or taps for stepped edges)",
                             state_units),
        "final_conductance": var("edge", np.asarray(final, dtype=float), "final edge conductance",
                                 "S"),
        "edge_nodes": var(("edge", "end"), np.asarray(info["edges"], dtype=np.int64).reshape(-1, 2),
                          "nodes joined by the edge", "1"),
        "node_role": var("node", node_role_codes(info), "role of the node",
                         flag_values=np.array(list(ROLE_CODES.values()), dtype=np.int8),
                         flag_meanings=" ".join(ROLE_CODES)),
        "output_nodes": var("output", np.asarray(info.get("output_nodes", []), dtype=np.int64),
                            "nodes read as the task's outputs", "1"),
    }
    if rec["final_taps"] is not None:
        data["final_taps"] = var("edge", np.asarray(rec["final_taps"]), "final potentiometer taps",
                                 "1")
    if info.get("positions") is not None:
        pos = np.asarray(info["positions"], dtype=float)
        data["node_position"] = var(("node", "axis"), pos, "node position in the layout", "1")
    events = store.events(rec["id"])
    attrs = {
        "Conventions": "CF-1.8",
        "title": f"clln run {rec['id']} ({rec['name'] or ''})",
        "source": f"clln {rec['version']}",
        "history": f"{rec['created']} recorded by clln {rec['version']}",
        "run_id": rec["id"], "name": rec["name"] or "", "status": rec["status"],
        "message": rec["message"] or "", "created": rec["created"],
        "clln_version": rec["version"], "seed": int(rec["seed"]),
        "steps_planned": int(rec["steps_planned"]), "steps_done": int(rec["steps_done"]),
        "wall_time_s": float("nan") if rec["wall_time"] is None else float(rec["wall_time"]),
        "protocol": rec["protocol_text"], "protocol_path": rec["protocol_path"] or "",
        "backend": json.dumps(rec["backend"]), "info": json.dumps(info),
        "meta": json.dumps(info.get("meta") or {}),
        "provenance": json.dumps(info.get("provenance") or {}),
        "events": json.dumps(events),
    }
    coords = {
        "step": ("step", hist.steps, {"long_name": "training step", "units": "1"}),
        "test_step": ("test_step", hist.test_steps,
                      {"long_name": "step of the test evaluation (0: before training)",
                       "units": "1"}),
        "snapshot_step": ("snapshot_step", hist.snapshot_steps,
                          {"long_name": "step of the conductance snapshot", "units": "1"}),
        "edge": ("edge", np.arange(n_edges), {"long_name": "edge index", "units": "1"}),
        "node": ("node", np.arange(int(info["n_nodes"])), {"long_name": "node index", "units": "1"}),
    }
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    for name in list(ds.variables):  # netCDF classic types (CF 2.2): no 64-bit integers
        if ds[name].dtype == np.int64:
            ds[name] = ds[name].astype(np.int32)
    return ds


def load_run(run: str = "latest", out: str | Path = "runs") -> Any:
    """A run of the run store at ``out`` as an xarray Dataset (id, unique prefix or
    ``latest``), with units and the whole provenance.

    Examples
    --------
    >>> ds = clln.load_run("latest", out="runs")          # doctest: +SKIP
    >>> ds.test_error.plot(xscale="log", yscale="log")    # doctest: +SKIP
    """
    from clln.controller.errors import UserError

    out = Path(out)
    if not (out / "runs.sqlite").exists():
        raise UserError(f"{out}: no run store here (train first, or pass out=...)")
    with RunStore(out) as store:
        ds = run_dataset(store, run)
    return ds
