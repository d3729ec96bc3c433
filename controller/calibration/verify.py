"""Verification of a calibration: tomography in fresh tap states compared with its tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clln.controller.calibration.check import EdgeCheck, check_edges
from clln.controller.calibration.fileformat import Calibration
from clln.controller.calibration.targets import CalibrationTarget, Progress, ResistanceMeter


@dataclass(frozen=True, eq=False)
class Verification:
    """Whether a calibration still holds.

    Attributes
    ----------
    check : the tomography check.
    offset_drift : (n,) grounded-input readings now minus the calibrated offsets, V.
    offset_limit : V, largest acceptable |offset drift|.
    holds : no edge flagged and every offset within the limit.
    """

    check: EdgeCheck
    offset_drift: np.ndarray
    offset_limit: float

    @property
    def holds(self) -> bool:
        return not self.check.flags and bool(np.all(np.abs(self.offset_drift) <= self.offset_limit))


def verify(target: CalibrationTarget, calibration: Calibration, *, meter: ResistanceMeter | None = None,
           states: int = 4, rows: tuple[int, int] = (32, 16), threshold: float = 0.03,
           grounded_repeats: int = 32, offset_limit: float = 5e-4, rng: np.random.Generator,
           progress: Progress | None = None) -> Verification:
    """Re-measure the AI offsets and a sample of tap states (tomography) and compare them
    with ``calibration``."""
    grounded = np.asarray(target.read_grounded(grounded_repeats), dtype=float)
    drift = grounded.mean(axis=0) - calibration.channels.ai_offset
    result = check_edges(target, calibration, meter=meter, states=states, rows=rows,
                         threshold=threshold, rng=rng, progress=progress)
    counts = dict(result.counts)
    counts["acquisitions"] += 1
    counts["grounded_readings"] += grounded_repeats
    result = EdgeCheck(result.taps, result.estimate, result.expected, result.rel_error, result.flags,
                       result.threshold, result.scale, result.gap, counts)
    return Verification(result, drift, offset_limit)

