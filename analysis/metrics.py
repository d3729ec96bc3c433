"""The numbers that sum up a recorded run: its error floor, and the summary ``clln show``
prints and a sweep's results table holds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from clln.controller.store import RunStore


def error_floor(test_error: np.ndarray) -> float | None:
    """Median test error over the last quarter of the evaluations (at least 3 of them);
    None with fewer than 4 evaluations or a non-finite median."""
    if test_error.size < 4:
        return None
    tail = test_error[-max(3, test_error.size // 4):]
    value = float(np.median(tail))
    return value if math.isfinite(value) else None


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def run_summary(store: RunStore, run: str) -> dict[str, Any]:
    """The facts ``clln show`` reports about ``run``, as JSON-ready values (a non-finite
    error is None)."""
    rec = store.run(run)
    hist = store.history(run)
    test_acc = hist.test_accuracy[-1] if hist.test_accuracy.size else None
    return {
        "id": rec["id"],
        "name": rec["name"],
        "status": store.shown_status(rec["id"], rec["status"]),
        "created": rec["created"],
        "steps": int(rec["steps_done"]),
        "steps_planned": int(rec["steps_planned"]),
        "seed": int(rec["seed"]),
        "initial_train_error": _finite(hist.error[0]) if hist.error.size else None,
        "final_train_error": _finite(hist.error[-1]) if hist.error.size else None,
        "initial_test_error": _finite(hist.test_error[0]) if hist.test_error.size else None,
        "final_test_error": _finite(hist.test_error[-1]) if hist.test_error.size else None,
        "final_test_accuracy": _finite(test_acc) if test_acc is not None else None,
        "test_error_floor": error_floor(hist.test_error),
        "wall_time_s": _finite(rec["wall_time"]),
        "backend": rec["backend"],
        "clln_version": rec["version"],
        "protocol_path": rec["protocol_path"],
        "protocol": rec["protocol_text"],
        "message": rec["message"],
        "scheme": rec["info"].get("scheme"),
        "meta": rec["info"].get("meta"),
        "provenance": rec["info"].get("provenance"),
        "sweep": rec["info"].get("sweep"),
        "final_conductances": None if rec["final_state"] is None else np.asarray(rec["final_state"]).tolist(),
    }
