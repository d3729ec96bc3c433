"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a nested dict of JSON values and numpy arrays: the batch sampler's
random state, the backend's state (``state_dict()``: actuator state, and for the
simulator its noise generator and clock), and the bias-suppression scheme's state.
It is written in the same run-store transaction as its step's records, so the store
never holds a step without its checkpoint or the reverse.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from clln.controller.capabilities import Checkpointable, require

if TYPE_CHECKING:
    from clln.controller.insitu import InSituTrainer
    from clln.controller.trainer import Trainer

_ARRAY = "__ndarray__"


def pack_state(state: dict[str, Any]) -> bytes:
    """Serialise a nested dict of JSON values and arrays (``.npz`` bytes, no pickle)."""
    arrays: dict[str, np.ndarray] = {}

    def strip(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {_ARRAY: key}
        if isinstance(value, dict):
            return {str(k): strip(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    text = json.dumps(strip(state))
    buf = io.BytesIO()
    arrays = {"__json__": np.frombuffer(text.encode(), dtype=np.uint8), **arrays}
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return buf.getvalue()


def unpack_state(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack_state`."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    state = json.loads(arrays.pop("__json__").tobytes().decode())

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_ARRAY}:
                return arrays[value[_ARRAY]]
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return fill(state)


def trainer_state(trainer: Trainer | InSituTrainer) -> dict[str, Any]:
    """The state of a trainer and what it drives, for a checkpoint. The backend must
    declare :class:`~clln.controller.capabilities.Checkpointable` (CapabilityError
    otherwise): a checkpoint is never written without the backend's state."""
    backend = require(trainer.backend, Checkpointable, what="a checkpoint")
    scheme, backoff, reversal = trainer.scheme, trainer.backoff, trainer.reversal
    return {
        "batch_rng": trainer.rng.bit_generator.state,
        "backend": backend.state_dict(),
        "scheme": None if scheme is None else scheme.state_dict(),
        **({"backoff": backoff.state_dict()} if backoff is not None else {}),
        **({"reversal": reversal.state_dict()} if reversal is not None else {}),
    }


def restore_trainer(trainer: Trainer | InSituTrainer, state: dict[str, Any]) -> None:
    """Put a freshly built trainer (same protocol and seed) back into a checkpointed state.
    A checkpoint written without a backend state (``"backend": None``, before every
    backend declared its state) restores the rest."""
    trainer.rng.bit_generator.state = state["batch_rng"]
    if state.get("backend") is not None:
        require(trainer.backend, Checkpointable, what="resuming from a checkpoint").load_state_dict(
            state["backend"])
    scheme, backoff, reversal = trainer.scheme, trainer.backoff, trainer.reversal
    if state.get("scheme") is not None and scheme is not None:
        scheme.load_state_dict(state["scheme"])
    if state.get("backoff") is not None and backoff is not None:
        backoff.load_state_dict(state["backoff"])
    if state.get("reversal") is not None and reversal is not None:
        reversal.load_state_dict(state["reversal"])
