"""Measurement designs: the tap states a calibration steps through, the check's random
states, and the survey of boundary conditions measured in each state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from clln.controller.calibration.numerics import (
    Batch,
    Survey,
    Tomography,
    effective_resistance,
    held_nodes,
)
from clln.controller.calibration.targets import (
    CalibrationTarget,
    CentersDrive,
    Progress,
    ResistanceMeter,
)
from clln.controller.network import Network


def tap_levels(n_taps: int, levels: int) -> np.ndarray:
    """``levels`` taps evenly over 0..n_taps-1, ends included."""
    return np.unique(np.round(np.linspace(0, n_taps - 1, min(levels, n_taps))).astype(np.int64))


def calibration_states(m: int, n_taps: int, *, levels: int = 17, edges: Sequence[int] | None = None,
                       rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Tap states of a calibration: the moving edges, split in two random halves, step
    through ``levels`` tap levels half by half (in each state the edges of the moving half
    sit at different levels, a Latin arrangement), while every other edge rests at the
    middle level; states share the resting (edge, tap) pairs, which links them.

    Returns
    -------
    (states (S, m) taps, the two halves).
    """
    lv = tap_levels(n_taps, levels)
    k = lv.size
    ref = k // 2
    moving = np.arange(m) if edges is None else np.unique(np.asarray(edges, dtype=np.int64))
    order = rng.permutation(moving)
    halves = [np.sort(order[0::2]), np.sort(order[1::2])]
    halves = [h for h in halves if h.size]
    states = []
    for half in halves:
        stride = max(1, k // half.size)
        for c in range(k):
            level = np.full(m, ref)
            level[half] = (c + stride * np.arange(half.size)) % k
            states.append(lv[level])
    return np.array(states, dtype=np.int64), halves


def check_states(m: int, n_taps: int, *, states: int = 4, rng: np.random.Generator) -> np.ndarray:
    """Tap states of a tomography check: a random state, then one half of the edges
    re-drawn, then the other half, alternately; every re-drawn tap moves by at least a
    quarter of the range. Consecutive states share half of the edges.

    Returns
    -------
    (states, m) taps.
    """
    order = rng.permutation(m)
    halves = [np.sort(order[0::2]), np.sort(order[1::2])]
    lo, hi = n_taps // 16, n_taps - 1 - n_taps // 16
    current = rng.integers(lo, hi + 1, size=m)
    out = [current.copy()]
    for s in range(1, max(states, 2)):
        half = halves[(s - 1) % 2]
        for j in half:
            while True:
                t = int(rng.integers(lo, hi + 1))
                if abs(t - current[j]) >= n_taps // 4:
                    break
            current[j] = t
        out.append(current.copy())
    return np.array(out, dtype=np.int64)


DRIVE_FRACTION = 0.9  # calibration boundary voltages stay within this share of the limits


def survey_restoring(target: CalibrationTarget, taps: np.ndarray, **kwargs: Any) -> Survey:
    """:func:`survey` at DRIVE_FRACTION of the bench's drive limit, then the taps the bench had
    before are written back (counted) and the bench made safe, whatever happens."""
    before = np.asarray(target.read_taps()).copy()
    try:
        data = survey(target, taps, amplitude=DRIVE_FRACTION * target.drive_limit(), **kwargs)
    finally:
        target.write_taps(before)
        target.safe()
    data.counts["tap_writes"] += 1
    return data


def survey(target: CalibrationTarget, taps: np.ndarray, *, amplitude: float, rows: tuple[int, int],
           rng: np.random.Generator, meter: ResistanceMeter | None = None,
           grounded_repeats: int = 0, progress: Progress | None = None,
           progress_offset: int = 0, progress_total: int | None = None) -> Survey:
    """Measure every tap state: one batched write of all taps, one clamped and one
    floating acquisition of random boundary conditions within +-amplitude, and a meter
    reading with the outputs at 0 V.

    Parameters
    ----------
    taps : (S, m) tap states.
    amplitude : V, largest |AO command|.
    rows : boundary conditions per (clamped, floating) acquisition.
    grounded_repeats : grounded-input readings taken first (0: none).
    """
    net = target.network
    roles = net.roles
    n_src, n_clamp = len(roles.sources), len(roles.clamps)
    # Patterns center +- amplitude: a bench whose parts take no negative voltage (e.g. an
    # MCP4131's terminals) centers its window above 0 V (HardwareBackend.drive_window).
    center = float(target.drive_center()) if isinstance(target, CentersDrive) else 0.0
    counts = {"acquisitions": 0, "boundary_conditions": 0, "tap_writes": 0, "meter_readings": 0,
              "grounded_readings": 0}
    total = progress_total if progress_total is not None else len(taps)
    grounded = None
    if grounded_repeats:
        grounded = target.read_grounded(grounded_repeats)
        counts["acquisitions"] += 1
        counts["grounded_readings"] += grounded_repeats
    batches: list[Batch] = []
    readings: list[tuple[int, float]] = []
    for s, state in enumerate(taps):
        target.write_taps(state)
        counts["tap_writes"] += 1
        plans = []
        if n_clamp and rows[0]:
            plans.append((True, center + rng.uniform(-amplitude, amplitude, (rows[0], n_src + n_clamp))))
        if rows[1]:
            ao = np.zeros((rows[1], n_src + n_clamp))
            ao[:, :n_src] = center + rng.uniform(-amplitude, amplitude, (rows[1], n_src))
            plans.append((False, ao))
        for clamped, ao in plans:
            raw, _ = target.acquire_raw(ao, clamps_engaged=clamped)
            batches.append(Batch(s, ao, np.asarray(raw, dtype=float), clamped))
            counts["acquisitions"] += 1
            counts["boundary_conditions"] += ao.shape[0]
        if meter is not None:
            target.safe()
            readings.append((s, float(meter.measure())))
            counts["meter_readings"] += 1
        if progress is not None:
            progress(progress_offset + s + 1, total, "tap states")
    target.safe()
    return Survey(np.asarray(taps, dtype=np.int64), batches, readings, grounded, counts)


def meter_scales(network: Network, tomo: Tomography, readings: list[tuple[int, float]],
                 nodes: tuple[int, int]) -> np.ndarray:
    """Per reading, the factor turning the relative conductances of its state into
    siemens: R_rel / R_measured (the two-point resistance scales as 1/scale)."""
    held = held_nodes(network)
    out = []
    for state, ohms in readings:
        g = np.nan_to_num(tomo.states()[state], nan=0.0)
        r_rel = effective_resistance(network.n_nodes, network.edges, np.maximum(g, 0.0), held, *nodes)
        out.append(r_rel / ohms if math.isfinite(r_rel) and ohms > 0 else np.nan)
    return np.array(out)
