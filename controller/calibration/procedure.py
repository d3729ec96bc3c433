"""The calibration procedure: DAQ channel offsets, tomography over the design's tap states,
the scale, the per-edge fits and the calibrated tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from clln.controller.backend import SteppedEdges
from clln.controller.calibration.check import EdgeCheck, check_edges
from clln.controller.calibration.designs import (
    DRIVE_FRACTION,
    calibration_states,
    meter_scales,
    survey_restoring,
    tap_levels,
)
from clln.controller.calibration.fileformat import Calibration, ChannelCalibration, EdgeFits, new_id
from clln.controller.calibration.numerics import (
    Survey,
    Tomography,
    edge_table,
    fit_ao,
    fit_line,
    solve_tomography,
)
from clln.controller.calibration.targets import CalibrationTarget, Progress, ResistanceMeter
from clln.controller.errors import CllnError, UserError


@dataclass(frozen=True, eq=False)
class CalibrationRun:
    """A calibration and how it was obtained.

    Attributes
    ----------
    calibration : the result.
    check : the in-situ tomography check against it.
    survey : the calibration survey (raw data).
    tomography : its solution.
    scale_readings : (k,) per meter reading, the scale it implies (S per unit), or empty.
    """

    calibration: Calibration
    check: EdgeCheck | None
    survey: Survey
    tomography: Tomography
    scale_readings: np.ndarray


def calibrate(
    target: CalibrationTarget,
    *,
    nominal: SteppedEdges,
    meter: ResistanceMeter | None = None,
    edges: Sequence[int] | None = None,
    previous: SteppedEdges | None = None,
    levels: int = 17,
    rows: tuple[int, int] = (32, 16),
    grounded_repeats: int = 64,
    check: int = 4,
    threshold: float = 0.03,
    rng: np.random.Generator,
    meta: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> CalibrationRun:
    """Calibrate the DAQ channels and the edges' tap tables, then check every edge by
    tomography.

    Parameters
    ----------
    target : the bench (raw access).
    nominal : datasheet tap tables (for the ``prior`` scale and fault thresholds).
    meter : an SMU reading two-point resistance, or None (scale from the datasheet).
    edges : edges to calibrate (default all); the others keep ``previous`` (or nominal).
    previous : tables for the edges not calibrated now.
    levels : tap levels per calibrated edge.
    rows : boundary conditions per clamped and floating acquisition.
    grounded_repeats : grounded-input readings for the AI offsets.
    check : tap states of the tomography check afterwards (0: no check).
    threshold : relative disagreement that flags an edge in the check.
    rng : random generator (designs and boundary conditions).
    meta : ``bench``, ``bench_sha256``, ``hardware_sha256``, ``clln_version``.
    progress : progress callback.

    Raises
    ------
    CllnError
        When the tomography cannot separate the conductances (singular design).
    """
    net = target.network
    m, n = net.n_edges, net.n_nodes
    n_taps = nominal.n_taps
    n_ao = len(net.roles.sources) + len(net.roles.clamps)
    if edges is not None:
        bad = [int(j) for j in edges if not 0 <= int(j) < m]
        if bad:
            raise UserError(f"--edges: {bad} are not edges of this bench (0..{m - 1})")
    states, _ = calibration_states(m, n_taps, levels=levels, edges=edges, rng=rng)
    total = len(states) + (check if check else 0)
    data = survey_restoring(target, states, rows=rows, rng=rng, meter=meter,
                            grounded_repeats=grounded_repeats, progress=progress, progress_total=total)
    # 1. AI offsets from the grounded inputs
    offsets = data.grounded.mean(axis=0) if data.grounded is not None else np.zeros(n)
    noise = (float(np.std(data.grounded - offsets, ddof=1)) if data.grounded is not None
             and data.grounded.shape[0] > 1 else math.nan)
    channels = ChannelCalibration(offsets, np.zeros(n), np.zeros(n_ao), np.zeros(n_ao))
    # 2. conductances (relative)
    tomo = solve_tomography(net, data, channels)
    if tomo.gap < 5.0:
        raise CllnError(
            f"tomography cannot separate the edges' conductances (singular values "
            f"{tomo.singular[0]:.2g}, {tomo.singular[1]:.2g} of the largest): calibrate more "
            f"edges at once, or add boundary conditions")
    # 3. per-edge resistance at the measured taps (relative scale)
    moving = np.arange(m) if edges is None else np.unique(np.asarray(edges, dtype=np.int64))
    measured = np.zeros(m, dtype=bool)
    measured[moving] = True
    k_max = max(int(np.sum(tomo.pairs[:, 0] == j)) for j in range(m))
    taps_meas = -np.ones((m, k_max), dtype=np.int64)
    rel_res = np.full((m, k_max), np.nan)
    for j in range(m):
        rows_j = np.flatnonzero(tomo.pairs[:, 0] == j)
        taps_meas[j, :rows_j.size] = tomo.pairs[rows_j, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel_res[j, :rows_j.size] = 1.0 / tomo.values[rows_j]
    # 4. the scale
    r0_nominal = np.where(nominal.direction < 0, 1.0 / nominal.table[:, 0], 1.0 / nominal.table[:, -1])
    # datasheet Rstep / R0 (per tap)
    nominal_slope = float(np.median(np.abs(np.diff(1.0 / nominal.table, axis=1)) * nominal.table.max(axis=1)[:, None]))
    lines: dict[int, tuple[float, float, np.ndarray]] = {}
    for j in moving:
        ok = np.isfinite(rel_res[j]) & (rel_res[j] > 0)
        if ok.sum() >= 2:
            lines[int(j)] = fit_line(taps_meas[j, ok], rel_res[j, ok])
    scale_readings = np.zeros(0)
    if meter is not None and data.meter:
        scale_readings = meter_scales(net, tomo, data.meter, meter.nodes)
    if scale_readings.size and np.any(np.isfinite(scale_readings)):
        scale_kind, k = "smu", float(np.nanmean(scale_readings))
    else:
        # edges whose line looks like a potentiometer's (scale-free: Rstep / R0 at least a
        # quarter of the datasheet's, R0 within 20x of the median) fix the scale
        median_r0 = float(np.median([r0 for r0, _, _ in lines.values()])) if lines else math.nan
        healthy = [j for j, (r0, rstep, _) in lines.items()
                   if r0 > 0 and abs(rstep) / r0 > 0.25 * nominal_slope and r0 < 20.0 * median_r0]
        scale_kind = "prior"
        k = (float(np.mean([lines[j][0] for j in healthy])) / float(np.mean(r0_nominal[healthy]))
             if healthy else math.nan)
        if not math.isfinite(k) or k <= 0:
            raise CllnError("cannot fix the conductance scale: no edge gave a potentiometer-like "
                            "line; connect an SMU ([smu] in the bench file)")
    # 5. AO channels against the AI
    ao_gain, ao_offset, ao_impedance = fit_ao(net, data, channels, tomo.states(k))
    channels = ChannelCalibration(offsets, np.zeros(n), ao_offset, ao_gain, ao_impedance)
    # 6. fits, tables and flags
    flags: dict[int, str] = {}
    base = (previous if previous is not None else nominal).table.copy()
    table = base.copy()
    r0s, rsteps = np.full(m, np.nan), np.full(m, np.nan)
    residual = np.zeros((m, n_taps))
    fit_rms = np.full(m, np.nan)
    resistance = rel_res / k
    nominal_step = float(np.median(np.abs(np.diff(1.0 / nominal.table, axis=1))))
    r_max_nominal = float(np.max(1.0 / nominal.table))
    for j in moving:
        ok = np.isfinite(resistance[j]) & (resistance[j] > 0)
        if ok.sum() < 2:
            flags[int(j)] = "unobservable"
            continue
        d, r = taps_meas[j, ok], resistance[j, ok]
        if np.all(r > 20.0 * r_max_nominal):
            flags[int(j)] = "open"
        r0, rstep, res = fit_line(d, r)
        r0s[j], rsteps[j] = r0, rstep
        fit_rms[j] = float(np.sqrt(np.mean((res / r) ** 2)))
        residual[j], full = edge_table(r0, rstep, d, res, n_taps)
        if int(j) not in flags:
            if np.median(r) < 0.5 * float(np.min(r0_nominal)):
                flags[int(j)] = "short"
            elif abs(rstep) < 0.25 * nominal_step:
                flags[int(j)] = "stuck"
        if np.all(full > 0) and np.all(np.isfinite(full)):
            table[j] = 1.0 / full
    fits = EdgeFits(measured, taps_meas, resistance, r0s, rsteps, residual, fit_rms)
    now = datetime.now(UTC)
    meta = meta or {}
    summary: dict[str, Any] = {
        **data.counts, "tap_states": int(len(states)), "levels": int(tap_levels(n_taps, levels).size),
        "amplitude_v": DRIVE_FRACTION * target.drive_limit(), "gap": tomo.gap, "ai_noise_v": noise,
        "scale_spread": (float(np.nanstd(scale_readings) / np.nanmean(scale_readings))
                         if scale_readings.size > 1 else None),
        "fit_rms_median": float(np.nanmedian(fit_rms[moving])) if moving.size else None,
    }
    cal = Calibration(
        id=new_id(now), created=now.isoformat(), bench=meta.get("bench", ""),
        bench_sha256=meta.get("bench_sha256", ""), hardware_sha256=meta.get("hardware_sha256", ""),
        table=table, channels=channels, fits=fits, flags=flags, scale=scale_kind, summary=summary,
        clln_version=meta.get("clln_version", ""))
    result = None
    if check:
        result = check_edges(target, cal, meter=meter, states=check, rows=rows, threshold=threshold,
                             rng=rng, progress=progress, progress_offset=len(states),
                             progress_total=total)
        merged = {**result.flags, **flags}
        summary = {**summary, "check": result.summary()}
        for key, value in result.counts.items():
            summary[key] = summary.get(key, 0) + value
        cal = Calibration(cal.id, cal.created, cal.bench, cal.bench_sha256, cal.hardware_sha256,
                          cal.table, cal.channels, cal.fits, merged, cal.scale, summary, cal.clln_version)
    return CalibrationRun(cal, result, data, tomo, scale_readings)
