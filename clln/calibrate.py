"""Composition of ``clln calibrate``: open the bench (real or emulated) and its SMU, run
the calibration or its verification (``clln.controller.calibration``), write the
calibration file and a PNG report beside the bench file."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import clln
from clln.benchfile import Bench, bench_hash, hardware_hash, load_bench
from clln.benchrun import BenchSession, bench_calibration, nominal_edges, open_bench
from clln.controller.calibration import (
    Calibration,
    CalibrationRun,
    EdgeCheck,
    Progress,
    Verification,
    calibrate,
    load_calibration,
    verify,
)
from clln.controller.errors import UserError
from clln.simulator.bench import EdgeFaults


def calibration_file(bench_path: Path, cal: Calibration) -> Path:
    """Where a calibration is stored: beside its bench file, named after both."""
    return bench_path.parent / f"{bench_path.stem}.cal-{cal.id}.json"


def parse_edges(text: str | None, m: int) -> list[int] | None:
    """``"0,3,5-7"`` -> [0, 3, 5, 6, 7]; None -> None (every edge)."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-", 1))
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise UserError(f"--edges {text!r}: expected edge numbers and ranges, e.g. 0,3,5-7") from None
    bad = [j for j in out if not 0 <= j < m]
    if bad or not out:
        raise UserError(f"--edges {text!r}: edges must be in 0..{m - 1}")
    return sorted(set(out))


@dataclass
class BenchCost:
    """What a calibration cost on the bench.

    Attributes
    ----------
    acquisitions : DAQ acquisitions (batched boundary conditions, grounded readings).
    boundary_conditions : rows of those acquisitions.
    tap_writes : batched SET_ALL writes (each verified by a GET_ALL read-back).
    serial_frames : frames the host sent to the potentiometer controller.
    meter_readings : SMU readings.
    bench_seconds : emulated bench time (simulated DAQ clock, SMU readings, serial
        bytes at the baud rate) on the emulator; wall time on hardware.
    daq_seconds, serial_seconds : the parts of ``bench_seconds`` (emulator only).
    wall_seconds : host wall time.
    """

    acquisitions: int = 0
    boundary_conditions: int = 0
    tap_writes: int = 0
    serial_frames: int = 0
    meter_readings: int = 0
    bench_seconds: float = 0.0
    daq_seconds: float | None = None
    serial_seconds: float | None = None
    wall_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CalibrateOutcome:
    """Result of ``clln calibrate``."""

    bench: Bench
    calibration: Calibration
    run: CalibrationRun | None = None
    verification: Verification | None = None
    path: Path | None = None
    report: Path | None = None
    cost: BenchCost = field(default_factory=BenchCost)


class BenchCounter:
    """Counts bench cost around a procedure on an open session."""

    def __init__(self, session: BenchSession, bench: Bench) -> None:
        self.session, self.bench = session, bench
        self.t0 = time.monotonic()
        emu = session.emulator
        self.clock0 = emu.model.clock.now if emu is not None else 0.0
        self.bytes0 = emu.serial_bytes() if emu is not None else 0
        self.frames0 = session.backend.potbank.frames_sent  # type: ignore[attr-defined]

    def cost(self, counts: dict[str, Any]) -> BenchCost:
        emu = self.session.emulator
        wall = time.monotonic() - self.t0
        cost = BenchCost(
            acquisitions=int(counts.get("acquisitions", 0)),
            boundary_conditions=int(counts.get("boundary_conditions", 0)),
            tap_writes=int(counts.get("tap_writes", 0)),
            serial_frames=self.session.backend.potbank.frames_sent - self.frames0,  # type: ignore[attr-defined]
            meter_readings=int(counts.get("meter_readings", 0)),
            wall_seconds=wall, bench_seconds=wall)
        if emu is not None:
            cost.daq_seconds = emu.model.clock.now - self.clock0
            cost.serial_seconds = (emu.serial_bytes() - self.bytes0) * 10.0 / self.bench.serial.baudrate
            cost.bench_seconds = cost.daq_seconds + cost.serial_seconds
        return cost


def run_calibrate(
    bench_path: Path, *, emulate: bool = False, edges: str | None = None, verify_only: bool = False,
    calibration_path: Path | None = None, faults: Sequence[str] = (), seed: int = 0, noise_seed: int = 0,
    levels: int = 17, check: int = 4, threshold: float = 0.03, progress: Progress | None = None,
    write: bool = True, visa_library: str | None = None,
) -> CalibrateOutcome:
    """Calibrate a bench (or verify its calibration) and write the files.

    Parameters
    ----------
    bench_path : bench file.
    emulate : run against the emulated bench.
    edges : edges to calibrate (``"0,3,5-7"``); the others keep the current calibration.
    verify_only : re-measure a sample and compare with the current calibration.
    calibration_path : the calibration to verify or to complete (default: the bench
        file's ``calibration`` key).
    faults : edge faults injected into the emulated bench (``stuck:EDGE[:TAP]``,
        ``open:EDGE``, ``short:EDGE``).
    seed : seed of the measurement design and boundary conditions.
    noise_seed : seed of the emulated bench's measurement noise.
    levels, check, threshold : see :func:`clln.controller.calibration.calibrate`.
    write : write the calibration file and the report.
    visa_library : the VISA library that opens the SMU (--visa-library): a backend or a
        library path; default ``$CLLN_VISA_LIBRARY``, else the bench file's backend.
    """
    bench, text = load_bench(bench_path)
    m, n_taps = len(bench.edges), bench.pots.taps
    edge_list = parse_edges(edges, m)
    edge_faults = EdgeFaults.parse(list(faults), m, n_taps) if faults else None
    if edge_faults and not emulate:
        raise UserError("--fault injects faults into the emulated bench: it needs --emulate")
    current = (load_calibration(calibration_path) if calibration_path is not None
               else bench_calibration(bench, bench_path))
    if verify_only and current is None:
        raise UserError(f"{bench_path}: no calibration to verify: set calibration = \"FILE\" in the "
                        f"bench file, or pass --calibration FILE")
    rng = np.random.default_rng(seed)
    session = open_bench(bench, text, target="emulate" if emulate else "hardware",
                         noise_seed=noise_seed, edge_faults=edge_faults,
                         calibration=current if verify_only else None, visa_library=visa_library)
    try:
        meter = session.open_meter(bench, visa_library=visa_library)
        counter = BenchCounter(session, bench)
        backend: Any = session.backend
        if verify_only:
            assert current is not None
            result = verify(backend, current, meter=meter, states=check, threshold=threshold, rng=rng,
                            progress=progress)
            outcome = CalibrateOutcome(bench, current, verification=result,
                                       cost=counter.cost(result.check.counts))
        else:
            meta = {"bench": bench.name, "bench_sha256": bench_hash(text),
                    "hardware_sha256": hardware_hash(bench), "clln_version": clln.__version__}
            run = calibrate(backend, nominal=nominal_edges(bench), meter=meter, edges=edge_list,
                            previous=None if current is None else current.edges, levels=levels,
                            check=check, threshold=threshold, rng=rng, meta=meta, progress=progress)
            cost = counter.cost(run.calibration.summary)
            cal = run.calibration
            cal = Calibration(cal.id, cal.created, cal.bench, cal.bench_sha256, cal.hardware_sha256,
                              cal.table, cal.channels, cal.fits, cal.flags, cal.scale,
                              {**cal.summary, "cost": cost.as_dict(), "emulated": emulate,
                               "seed": seed, "edges": edge_list,
                               "edge_faults": None if edge_faults is None else edge_faults.describe()},
                              cal.clln_version)
            outcome = CalibrateOutcome(bench, cal, run=CalibrationRun(cal, run.check, run.survey,
                                                                      run.tomography, run.scale_readings),
                                       cost=cost)
    finally:
        session.close()
    if write:
        if outcome.run is not None:
            outcome.path = outcome.calibration.save(calibration_file(bench_path, outcome.calibration))
            outcome.report = calibration_report(outcome, outcome.path.with_suffix(".png"))
        else:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            outcome.report = calibration_report(
                outcome, bench_path.parent / f"{bench_path.stem}.verify-{stamp}.png")
    return outcome


# -- the report ----------------------------------------------------------------------------


def _scatter(ax: Any, check: EdgeCheck, title: str) -> None:
    exp, est = check.expected * 1e3, check.estimate * 1e3
    good = [j for j in range(exp.shape[1]) if j not in check.flags]
    ax.plot(exp[:, good].ravel(), est[:, good].ravel(), "o", ms=4, color="tab:blue",
            label="edges within threshold")
    for j, what in check.flags.items():
        ax.plot(exp[:, j], np.nan_to_num(est[:, j]), "s", ms=6, label=f"edge {j}: {what}")
    lo, hi = float(np.nanmin(exp)) * 0.8, float(np.nanmax(exp)) * 1.2
    line = np.array([lo, hi])
    ax.plot(line, line, "k-", lw=0.8)
    ax.fill_between(line, line * (1 - check.threshold), line * (1 + check.threshold), color="0.85",
                    label=f"+-{check.threshold:.0%}")
    ax.set_xlabel("calibration (mS)")
    ax.set_ylabel("tomography (mS)")
    ax.set_title(f"{title}: unflagged edges within rms {check.rms_error:.2%}, max "
                 f"{check.max_error:.2%} (scale: {check.scale})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")


def calibration_report(outcome: CalibrateOutcome, path: Path) -> Path:
    """PNG: per-edge fits and residuals, tomography vs calibration, DAQ channels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = outcome.calibration
    cost = outcome.cost
    foot = (f"{cost.acquisitions} DAQ acquisitions ({cost.boundary_conditions} boundary conditions), "
            f"{cost.tap_writes} tap writes ({cost.serial_frames} serial frames), "
            f"{cost.meter_readings} SMU readings, bench time {cost.bench_seconds:.1f} s")
    if outcome.verification is not None:
        v = outcome.verification
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        _scatter(axes[0], v.check, "verification")
        axes[1].bar(np.arange(v.offset_drift.size), v.offset_drift * 1e6)
        axes[1].axhline(v.offset_limit * 1e6, color="r", lw=0.8)
        axes[1].axhline(-v.offset_limit * 1e6, color="r", lw=0.8)
        axes[1].set_xlabel("node (AI channel)")
        axes[1].set_ylabel("offset drift (uV)")
        axes[1].set_title("AI offsets now minus calibrated", fontsize=9)
        fig.suptitle(f"{outcome.bench.name}: calibration {cal.id} "
                     f"{'holds' if v.holds else 'does NOT hold'}\n{foot}", fontsize=10)
    else:
        fits = cal.fits
        fig, axes = plt.subplots(2, 2, figsize=(13, 9))
        ax = axes[0, 0]
        d = np.arange(cal.table.shape[1])
        for j in np.flatnonzero(fits.measured):
            ok = fits.taps[j] >= 0
            (line,) = ax.plot(fits.taps[j, ok], fits.resistance[j, ok] / 1e3, "o", ms=3)
            if np.isfinite(fits.r0[j]):
                ax.plot(d, (fits.r0[j] + fits.rstep[j] * d) / 1e3, "-", lw=0.7, color=line.get_color())
        ax.set_xlabel("tap D")
        ax.set_ylabel("R (kOhm)")
        ax.set_title("measured R(D) and fits R0 + D Rstep, per edge", fontsize=9)
        ax = axes[0, 1]
        for j in np.flatnonzero(fits.measured):
            ok = fits.taps[j] >= 0
            if np.isfinite(fits.r0[j]):
                line = fits.r0[j] + fits.rstep[j] * fits.taps[j, ok]
                ax.plot(fits.taps[j, ok], fits.resistance[j, ok] - line, "o-", ms=2, lw=0.6,
                        label=f"{j}")
        ax.set_xlabel("tap D")
        ax.set_ylabel("R - line (ohm)")
        ax.set_title(f"fit residuals (kept as the residual table); median rms "
                     f"{np.nanmedian(fits.fit_rms[fits.measured]):.2%} of R", fontsize=9)
        ax.legend(fontsize=6, ncol=4, title="edge", title_fontsize=7)
        if outcome.run is not None and outcome.run.check is not None:
            _scatter(axes[1, 0], outcome.run.check, "tomography check")
        else:
            axes[1, 0].set_axis_off()
        ax = axes[1, 1]
        ch = cal.channels
        n = ch.ai_offset.size
        ax.bar(np.arange(n) - 0.2, ch.ai_offset * 1e6, width=0.4, label="AI offset (uV)")
        ax.bar(np.arange(ch.ao_offset.size) + 0.2, ch.ao_offset * 1e6, width=0.4,
               label="AO offset (uV), by AO channel")
        ax.set_xlabel("AI channel (node) / AO channel")
        ax.set_ylabel("uV")
        gains = ", ".join(f"{g * 1e6:+.0f}" for g in ch.ao_gain)
        ax.set_title(f"DAQ channels; AO gains (ppm): {gains}", fontsize=9)
        ax.legend(fontsize=7)
        flags = ", ".join(f"{j} {w}" for j, w in sorted(cal.flags.items())) or "none"
        fig.suptitle(f"{outcome.bench.name}: calibration {cal.id} (scale: {cal.scale}); "
                     f"flagged edges: {flags}\n{foot}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
