"""Ranges that keep the physics finite, and finite checks at the hardware seam.

Every value a protocol or bench file can set is bounded to what a bench can be: a
voltage within +-1 kV, a conductance within 1e-12..1e3 S, a learning rate that cannot
overflow a double in one step. A value outside its range stops the file with one
line saying the range and why; a NaN or an infinity never reaches ``measure`` or
``adjust`` (nor the AO or tap commands behind them).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field

from clln.controller.errors import UserError

INT64_MAX = 2**63 - 1


class NonFiniteError(UserError):
    """A NaN or infinite value was about to be sent to a backend; nothing was sent."""


class DivergedError(UserError):
    """Training produced a non-finite value; the run stops as failed."""


def _checker(lo: float, hi: float, unit: str, why: str) -> Any:
    def check(value: Any) -> Any:
        if not lo <= value <= hi:
            unit_ = f" {unit}" if unit else ""
            raise ValueError(f"must be within {lo:g}..{hi:g}{unit_}: {why} (got {value!r})")
        return value
    return AfterValidator(check)


def bounded_float(lo: float, hi: float, unit: str, why: str) -> Any:
    """A strict float in [lo, hi]; the error line gives the range, the unit and ``why``."""
    return Annotated[float, Field(strict=True), _checker(lo, hi, unit, why)]


def bounded_int(lo: int, hi: int, unit: str, why: str) -> Any:
    """A strict integer in [lo, hi] (``hi`` at most 2**63 - 1, what SQLite and numpy hold)."""
    return Annotated[int, Field(strict=True), _checker(lo, hi, unit, why)]


def require_finite(values: Any, what: str) -> np.ndarray:
    """``values`` as an array; NonFiniteError naming ``what`` and the first bad entry
    when any is NaN or infinite."""
    array = np.asarray(values)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        flat = np.flatnonzero(~np.isfinite(array))
        raise NonFiniteError(f"{what}: entry {int(flat[0])} is {array.flat[flat[0]]!r} "
                             f"({flat.size} non-finite); nothing was sent")
    return array
