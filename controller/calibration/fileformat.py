"""The calibration file: channel corrections, per-edge fits and tap tables, saved as JSON
(format version :data:`FORMAT_VERSION`), and the checks made when a bench loads one."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from clln.controller.backend import SteppedEdges
from clln.controller.errors import ProtocolError
from clln.controller.files import read_user_text
from clln.controller.jsonvalues import json_ready

FORMAT_VERSION = 1


class CalibrationWarning(UserWarning):
    """A calibration file is old, or was made for another bench."""


def _array(value: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if shape is not None and arr.shape != shape:
        raise ProtocolError(f"calibration: {name} has shape {arr.shape}, expected {shape}")
    return arr


@dataclass(frozen=True, eq=False)
class ChannelCalibration:
    """DAQ channel errors.

    An AI reading of true voltage v is ``(1 + ai_gain) v + ai_offset``; an AO channel
    commanded to x puts out ``(1 + ao_gain) x + ao_offset`` behind ``ao_impedance``.

    Attributes
    ----------
    ai_offset, ai_gain : (n,) per node's AI channel; volts, dimensionless.
    ao_offset, ao_gain : (n_ao,) per AO channel (sources then clamps); volts, dimensionless.
    ao_impedance : (n_ao,) output impedance, ohm (reported; not corrected: the drop
        depends on the load).
    """

    ai_offset: np.ndarray
    ai_gain: np.ndarray
    ao_offset: np.ndarray
    ao_gain: np.ndarray
    ao_impedance: np.ndarray | None = None

    @classmethod
    def identity(cls, n: int, n_ao: int) -> ChannelCalibration:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n_ao), np.zeros(n_ao), np.zeros(n_ao))

    def volts(self, raw: np.ndarray) -> np.ndarray:
        """(B, n) true voltages from raw readings (B, n), V."""
        return (np.asarray(raw, dtype=float) - self.ai_offset) / (1.0 + self.ai_gain)

    def commands(self, volts: np.ndarray) -> np.ndarray:
        """(B, n_ao) AO commands that put out ``volts`` (B, n_ao), V."""
        return (np.asarray(volts, dtype=float) - self.ao_offset) / (1.0 + self.ao_gain)

    def to_dict(self) -> dict[str, list[float]]:
        out = {k: getattr(self, k).tolist() for k in ("ai_offset", "ai_gain", "ao_offset", "ao_gain")}
        out["ao_impedance"] = (np.zeros_like(self.ao_gain) if self.ao_impedance is None
                               else self.ao_impedance).tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], n: int, n_ao: int) -> ChannelCalibration:
        return cls(_array(d["ai_offset"], "channels.ai_offset", (n,)),
                   _array(d["ai_gain"], "channels.ai_gain", (n,)),
                   _array(d["ao_offset"], "channels.ao_offset", (n_ao,)),
                   _array(d["ao_gain"], "channels.ao_gain", (n_ao,)),
                   _array(d.get("ao_impedance", [0.0] * n_ao), "channels.ao_impedance", (n_ao,)))


@dataclass(frozen=True, eq=False)
class EdgeFits:
    """Per-edge fits R(D) = R0 + D Rstep + residual(D).

    Attributes
    ----------
    measured : (m,) bool, True where the edge was stepped through the tap levels.
    taps : (m, K) tap levels measured (-1 where not measured).
    resistance : (m, K) measured resistance at those taps, ohm (nan where not measured).
    r0, rstep : (m,) fitted line, ohm and ohm per tap.
    residual : (m, n_taps) residual table over every tap, ohm.
    fit_rms : (m,) rms of the measured resistances' relative deviation from the line.
    """

    measured: np.ndarray
    taps: np.ndarray
    resistance: np.ndarray
    r0: np.ndarray
    rstep: np.ndarray
    residual: np.ndarray
    fit_rms: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"measured": self.measured.tolist(), "taps": self.taps.tolist(),
                "resistance": _nullable(self.resistance), "r0": _nullable(self.r0),
                "rstep": _nullable(self.rstep), "residual": self.residual.tolist(),
                "fit_rms": _nullable(self.fit_rms)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], m: int, n_taps: int) -> EdgeFits:
        res = _unnull(d["resistance"])
        taps = np.asarray(d["taps"], dtype=np.int64)
        if taps.shape[0] != m or res.shape != taps.shape:
            raise ProtocolError(f"calibration: fits.taps/resistance do not have {m} rows of equal shape")
        return cls(np.asarray(d["measured"], dtype=bool), taps, res,
                   _array(_unnull(d["r0"]), "fits.r0", (m,)), _array(_unnull(d["rstep"]), "fits.rstep", (m,)),
                   _array(d["residual"], "fits.residual", (m, n_taps)),
                   _array(_unnull(d["fit_rms"]), "fits.fit_rms", (m,)))


def _nullable(a: np.ndarray) -> Any:
    """Nested lists with nan as None (JSON has no nan)."""
    return np.where(np.isnan(a), np.array(None, dtype=object), a).tolist()


def _unnull(value: Any) -> np.ndarray:
    return np.array(value, dtype=object).astype(float)  # None -> nan


@dataclass(frozen=True, eq=False)
class Calibration:
    """A bench's calibration: what ``HardwareBackend`` uses to turn conductance targets
    into taps and to correct its DAQ channels.

    Attributes
    ----------
    id : unique id (UTC time stamp and a random suffix).
    created : ISO 8601 UTC time of the measurement.
    bench : bench name.
    bench_sha256 : SHA-256 of the bench file's text at calibration time (provenance).
    hardware_sha256 : hash of the bench's hardware description (what ties the
        calibration to a bench; see ``clln.benchfile.hardware_hash``).
    table : (m, n_taps) calibrated conductance per edge and tap, S.
    channels : DAQ channel gains and offsets.
    fits : per-edge fits and residuals.
    flags : edge -> fault seen (``open``, ``short``, ``stuck``, ``mismatch``, ``unobservable``).
    scale : how the absolute scale was fixed: ``smu`` or ``prior``.
    summary : numbers of the run (acquisitions, writes, times, tomography check).
    clln_version : package version that made it.
    """

    id: str
    created: str
    bench: str
    bench_sha256: str
    hardware_sha256: str
    table: np.ndarray
    channels: ChannelCalibration
    fits: EdgeFits
    flags: dict[int, str] = field(default_factory=dict)
    scale: str = "prior"
    summary: dict[str, Any] = field(default_factory=dict)
    clln_version: str = ""
    format: int = FORMAT_VERSION

    @property
    def edges(self) -> SteppedEdges:
        return SteppedEdges(self.table)

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)

    def describe(self) -> dict[str, Any]:
        """What a run records about the calibration it used."""
        return {"id": self.id, "created": self.created, "hardware_sha256": self.hardware_sha256,
                "scale": self.scale, "flags": {str(k): v for k, v in self.flags.items()}}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "kind": "clln-calibration", "id": self.id, "created": self.created,
            "bench": self.bench, "bench_sha256": self.bench_sha256,
            "hardware_sha256": self.hardware_sha256, "clln_version": self.clln_version,
            "scale": self.scale, "flags": {str(k): v for k, v in self.flags.items()},
            "table": self.table.tolist(), "channels": self.channels.to_dict(),
            "fits": self.fits.to_dict(), "summary": json_ready(self.summary),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<calibration>") -> Calibration:
        if not isinstance(d, dict) or d.get("kind") != "clln-calibration":
            raise ProtocolError(f"{source}: not a clln calibration file")
        version = d.get("format")
        if version != FORMAT_VERSION:
            raise ProtocolError(f"{source}: format: version {version!r} is not supported; "
                                f"allowed: {FORMAT_VERSION}")
        try:
            table = np.asarray(d["table"], dtype=float)
            if table.ndim != 2 or not np.all(np.isfinite(table)) or np.any(table <= 0):
                raise ProtocolError(f"{source}: table must be an (edges, taps) array of positive "
                                    "conductances")
            m, n_taps = table.shape
            n = len(d["channels"]["ai_offset"])
            n_ao = len(d["channels"]["ao_offset"])
            return cls(
                id=str(d["id"]), created=str(d["created"]), bench=str(d["bench"]),
                bench_sha256=str(d["bench_sha256"]), hardware_sha256=str(d["hardware_sha256"]),
                table=table, channels=ChannelCalibration.from_dict(d["channels"], n, n_ao),
                fits=EdgeFits.from_dict(d["fits"], m, n_taps),
                flags={int(k): str(v) for k, v in d.get("flags", {}).items()},
                scale=str(d.get("scale", "prior")), summary=dict(d.get("summary", {})),
                clln_version=str(d.get("clln_version", "")), format=int(version),
            )
        except KeyError as exc:
            raise ProtocolError(f"{source}: required key {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{source}: malformed calibration ({exc})") from None

    def save(self, path: str | Path) -> Path:
        """Write the calibration as JSON (atomically: a temporary file, then a rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        os.replace(tmp, path)
        return path


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file; a missing or malformed file is a one-line ProtocolError."""
    path = Path(path)
    try:
        data = json.loads(read_user_text(path, "calibration"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{path}: cannot read calibration file ({str(exc)[:120]})") from None
    return Calibration.from_dict(data, str(path))


def calibration_problems(cal: Calibration, hardware_sha256: str, *, now: datetime | None = None,
                         max_age_days: float = 30.0) -> list[str]:
    """Why a calibration may not describe the bench any more: made for another bench
    (hash mismatch), or older than ``max_age_days``. Empty when it fits."""
    problems = []
    if cal.hardware_sha256 != hardware_sha256:
        problems.append(f"calibration {cal.id} was made for another bench description "
                        f"(hardware hash {cal.hardware_sha256[:12]}, this bench "
                        f"{hardware_sha256[:12]}); re-run clln calibrate")
    now = now or datetime.now(UTC)
    age = (now - cal.created_at).total_seconds() / 86400.0
    if age > max_age_days:
        problems.append(f"calibration {cal.id} is {age:.0f} days old (more than {max_age_days:g}); "
                        f"re-run clln calibrate, or check it with clln calibrate --verify")
    return problems


def new_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


