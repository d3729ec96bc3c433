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
from typing import Any

import numpy as np

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
    np.savez(buf, __json__=np.frombuffer(text.encode(), dtype=np.uint8), **arrays)
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


def trainer_state(trainer: Any) -> dict[str, Any]:
    """The state of a Trainer and what it drives, for a checkpoint."""
    backend = trainer.backend
    scheme = getattr(trainer, "scheme", None)
    return {
        "batch_rng": trainer.rng.bit_generator.state,
        "backend": backend.state_dict() if hasattr(backend, "state_dict") else None,
        "scheme": scheme.state_dict() if scheme is not None and hasattr(scheme, "state_dict") else None,
        **({"backoff": trainer.backoff.state_dict()} if getattr(trainer, "backoff", None) else {}),
        **({"reversal": trainer.reversal.state_dict()} if getattr(trainer, "reversal", None) else {}),
    }


def restore_trainer(trainer: Any, state: dict[str, Any]) -> None:
    """Put a freshly built Trainer (same protocol and seed) back into a checkpointed state."""
    trainer.rng.bit_generator.state = state["batch_rng"]
    if state.get("backend") is not None:
        trainer.backend.load_state_dict(state["backend"])
    scheme = getattr(trainer, "scheme", None)
    if state.get("scheme") is not None and scheme is not None:
        scheme.load_state_dict(state["scheme"])
    if state.get("backoff") is not None and getattr(trainer, "backoff", None) is not None:
        trainer.backoff.load_state_dict(state["backoff"])
    if state.get("reversal") is not None and getattr(trainer, "reversal", None) is not None:
        trainer.reversal.load_state_dict(state["reversal"])
