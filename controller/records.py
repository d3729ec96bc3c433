"""What the run store returns: a run's record and status, its history, and the array
encoding of its blobs."""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import numpy as np


class RunStatus(StrEnum):
    """A run's status, stored as its string value (``runs.status``)."""

    RUNNING = "running"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"  # stopped on request or by the user; resumable
    PAUSED = "paused"  # after a hardware or bench fault; resumable
    FAILED = "failed"


PROCESS_GONE = "interrupted (process gone)"
"""What :meth:`RunStore.shown_status` shows for a run marked running whose process is gone."""


@dataclass(frozen=True, eq=False)
class RunRecord:
    """Everything recorded about a run except its per-step history (:meth:`RunStore.run`).

    Item access by field name (``rec["status"]``, ``rec.get("info")``) is kept for
    readers written against the dict this used to be, with the dict's values (the
    status as a plain string).

    Attributes
    ----------
    id, created (ISO 8601, UTC), status, name : identity of the run.
    protocol_path, protocol_text : the protocol as given and its full text.
    version : clln version that recorded it; seed : the protocol seed used.
    backend, info : the backend's description and the network/task facts (JSON dicts).
    steps_planned, steps_done : step budget and steps recorded.
    initial_state, final_state, final_taps : edge states (arrays), None when not recorded.
    wall_time : s, None before the run ends; message : why it stopped, when it says.
    """

    id: str
    created: str
    status: RunStatus
    name: str | None
    protocol_path: str | None
    protocol_text: str
    version: str
    seed: int
    backend: dict[str, Any]
    info: dict[str, Any]
    steps_planned: int
    steps_done: int
    initial_state: np.ndarray | None
    final_state: np.ndarray | None
    final_taps: np.ndarray | None
    wall_time: float | None
    message: str | None

    def __getitem__(self, key: str) -> Any:
        """The field as the dict had it: ``rec["status"]`` is the plain string."""
        if key not in RECORD_FIELDS:
            raise KeyError(key)
        value = self.__dict__[key]
        return str(value) if key == "status" else value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in RECORD_FIELDS else default

    def keys(self) -> list[str]:
        return list(RECORD_FIELDS)


RECORD_FIELDS = tuple(f.name for f in fields(RunRecord))


def to_blob(array: np.ndarray | None) -> bytes | None:
    """Serialise an array as ``.npy`` bytes (None stays None)."""
    if array is None:
        return None
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def from_blob(blob: bytes | None) -> np.ndarray | None:
    """Inverse of :func:`to_blob`."""
    if blob is None:
        return None
    return np.load(io.BytesIO(blob), allow_pickle=False)


@dataclass(frozen=True)
class RunHistory:
    """Per-step and test records of a run, as arrays."""

    steps: np.ndarray
    error: np.ndarray
    nudge: np.ndarray
    update_norm: np.ndarray
    n_clipped: np.ndarray
    t: np.ndarray
    test_steps: np.ndarray
    test_error: np.ndarray
    test_accuracy: np.ndarray
    snapshot_steps: np.ndarray
    snapshots: np.ndarray
