"""The tomography check: estimate every edge's conductance in a few random tap states and
flag edges that disagree with their table (stuck, open, shorted)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from clln.controller.calibration.designs import check_states, meter_scales, survey_restoring
from clln.controller.calibration.fileformat import Calibration
from clln.controller.calibration.numerics import solve_tomography
from clln.controller.calibration.targets import CalibrationTarget, Progress, ResistanceMeter


@dataclass(frozen=True, eq=False)
class EdgeCheck:
    """Tomography of the network compared with a calibration.

    Attributes
    ----------
    taps : (S, m) tap states measured.
    estimate : (S, m) conductances from tomography, S (nan where unobservable).
    expected : (S, m) the calibration's conductances at those taps, S.
    rel_error : (S, m) estimate / expected - 1.
    flags : edge -> ``open`` | ``short`` | ``stuck`` | ``mismatch`` | ``unobservable``.
    threshold : relative disagreement beyond which an edge is flagged.
    scale : ``smu`` or ``calibration`` (median ratio to the calibration).
    gap : second-smallest over smallest singular value of the tomography.
    counts : acquisitions, boundary conditions, tap writes, meter readings.
    """

    taps: np.ndarray
    estimate: np.ndarray
    expected: np.ndarray
    rel_error: np.ndarray
    flags: dict[int, str]
    threshold: float
    scale: str
    gap: float
    counts: dict[str, int]

    @property
    def rms_error(self) -> float:
        """rms relative error over the edges not flagged, every state."""
        ok = [j for j in range(self.taps.shape[1]) if j not in self.flags]
        err = self.rel_error[:, ok]
        return float(np.sqrt(np.nanmean(err**2))) if err.size else math.nan

    @property
    def max_error(self) -> float:
        ok = [j for j in range(self.taps.shape[1]) if j not in self.flags]
        err = self.rel_error[:, ok]
        return float(np.nanmax(np.abs(err))) if err.size else math.nan

    def summary(self) -> dict[str, Any]:
        return {"states": int(self.taps.shape[0]), "scale": self.scale, "gap": self.gap,
                "rms_error": self.rms_error, "max_error": self.max_error,
                "threshold": self.threshold, "flags": {str(k): v for k, v in self.flags.items()},
                **self.counts}


def classify(taps: np.ndarray, estimate: np.ndarray, expected: np.ndarray, table: np.ndarray,
             threshold: float) -> dict[int, str]:
    """Flag edges whose tomography disagrees with the calibration.

    Parameters
    ----------
    taps, estimate, expected : (S, m) states, S, S.
    table : (m, n_taps) the calibration, S.
    threshold : relative disagreement that flags an edge.

    Returns
    -------
    edge -> ``unobservable`` (no current seen), ``open`` (below 5 % of expected in every
    state), ``short`` (above twice the table's largest conductance), ``stuck`` (its taps
    changed, its conductance did not follow: less than a quarter of the expected change),
    ``mismatch`` (otherwise beyond the threshold).
    """
    flags: dict[int, str] = {}
    for j in range(taps.shape[1]):
        est, exp = estimate[:, j], expected[:, j]
        if np.any(np.isnan(est)):
            flags[j] = "unobservable"
            continue
        if np.all(est < 0.05 * exp):
            flags[j] = "open"
            continue
        if np.any(est > 2.0 * table[j].max()):
            flags[j] = "short"
            continue
        rel = est / exp - 1.0
        if np.max(np.abs(rel)) <= threshold:
            continue
        stuck = False
        for s in range(taps.shape[0]):
            for t in range(s + 1, taps.shape[0]):
                moved = abs(math.log(exp[t] / exp[s]))
                if taps[s, j] != taps[t, j] and moved >= 0.15:
                    followed = abs(math.log(max(est[t], 1e-300) / max(est[s], 1e-300)))
                    stuck = stuck or followed < 0.25 * moved
        flags[j] = "stuck" if stuck else "mismatch"
    return flags


def check_edges(target: CalibrationTarget, calibration: Calibration, *, meter: ResistanceMeter | None = None,
                states: int = 4, rows: tuple[int, int] = (32, 16), threshold: float = 0.03,
                rng: np.random.Generator, progress: Progress | None = None,
                progress_offset: int = 0, progress_total: int | None = None) -> EdgeCheck:
    """In-situ tomography at a few linked tap states, compared with ``calibration``.

    The conductances come from the node voltages alone (up to scale); the scale is the
    resistance meter's when there is one, else the median ratio to the calibration
    over every edge and state (robust to a few faulty edges). The taps are restored
    afterwards.
    """
    net = target.network
    table = calibration.table
    m, n_taps = table.shape
    taps = check_states(m, n_taps, states=states, rng=rng)
    data = survey_restoring(target, taps, rows=rows, rng=rng, meter=meter, progress=progress,
                            progress_offset=progress_offset, progress_total=progress_total)
    counts = dict(data.counts)
    tomo = solve_tomography(net, data, calibration.channels)
    expected = table[np.arange(m)[None, :], taps]
    scale_kind = "calibration"
    if meter is not None:
        scales = meter_scales(net, tomo, data.meter, meter.nodes)
        if np.any(np.isfinite(scales)):
            scale = float(np.nanmean(scales))
            scale_kind = "smu"
    if scale_kind == "calibration":
        rel = tomo.states() / expected
        scale = float(1.0 / np.exp(np.nanmedian(np.log(np.where(rel > 0, rel, np.nan)))))
    estimate = tomo.states(scale)
    flags = classify(taps, estimate, expected, table, threshold)
    return EdgeCheck(taps, estimate, expected, estimate / expected - 1.0, flags, threshold,
                     scale_kind, tomo.gap, counts)
