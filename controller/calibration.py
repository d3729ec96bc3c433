"""Calibration of edge hardware: DAQ channels, per-edge tap -> conductance tables, and
in-situ network tomography.

The procedures drive a bench only through two small interfaces defined here,
:class:`CalibrationTarget` (raw DAQ acquisitions, grounded-input readings, batched tap
writes; ``drivers.hardware.HardwareBackend`` implements it, limits checked before
anything is written) and :class:`ResistanceMeter` (an SMU's 4-wire resistance between
two nodes of the network), so they run unchanged on the emulated bench and on a real one.

Physics
-------
Every node voltage is read, but no current is: the sources are voltage outputs. With
node voltages ``v`` (n,) under one boundary condition, Kirchhoff's current law at
every node that is not held by an output or the ground is

    sum_j B_ji g_j (B v)_j = 0        for every free node i,                 (KCL)

with ``B`` the (m, n) incidence matrix and ``g`` (m,) the conductances: *linear and
homogeneous in g* given the measured voltages. Stacking (KCL) over many boundary
conditions gives ``A g = 0``; ``g`` is the null vector of ``A`` (the right singular
vector of its smallest singular value), which fixes the conductances up to one common
scale.

One tap state is not enough on a bench whose outputs drive few nodes: on the 16-edge
reference bench (sources 0 and 2, clamps 3 and 5, ground 7) the stacked (KCL) of the
clamped and the floating boundary conditions has rank 14 of 16, so a second
direction besides the scale leaves every measured voltage unchanged. Linking tap
states resolves it: an edge at the same tap in two states has the same conductance
in both, so the unknowns are the distinct (edge, tap) pairs and the states share
them. The calibration steps half of the edges through the tap levels while the other
half rest at a reference tap, then the other way round; the joint null space is then
one-dimensional (the design is checked for it: the ratio of the two smallest singular
values is reported and must be large).

The scale comes from something known in ohms: an SMU's 4-wire two-point resistance
between two nodes (the driven nodes held at 0 V, clamps open), which the relative
conductances predict up to the scale, when the bench has one (``scale = "smu"``);
otherwise the datasheet: the mean tap-0 resistance over the calibrated edges is set to
its nominal value, r_series + r_wiper (``scale = "prior"``; with a 1 % series resistor
and +-25 ohm wipers, the mean of 16 edges is known to about 0.4 %).

DAQ channels: an AI reading is ``(1 + a_k) v_k + c_k``. The offsets ``c_k`` are read
with the inputs grounded. The gains ``a_k`` stay the DAQ's factory calibration (75 ppm
class): only an external voltage reference could fix them absolutely, and the network
itself fixes them poorly (a gain error on a node's channel is nearly the same, in
(KCL), as a change of its edges' conductances; on the emulated pot-bench a joint fit
resolved them no better than their spread). A gain common to every channel leaves
(KCL) unchanged, so the conductances do not depend on it. AO channel k drives node d_k,
read by its (offset-corrected) AI channel: the node sits at
``(1 + alpha_k) x_k + beta_k - Z_k I_k`` for command x_k, with I_k the current the
output delivers (from the measured voltages and the conductances) and Z_k its output
impedance; the three are fitted per channel.

Per edge, the measured resistances R(D) at the tap levels are fitted with
R(D) = R0 + D Rstep (weights 1/R^2, i.e. relative errors); the residuals, smooth
(integral nonlinearity), are interpolated over every tap by a cubic spline and kept
as the residual table, so the calibrated table is 1 / (R0 + D Rstep + residual(D)).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
from scipy.interpolate import CubicSpline
from scipy.sparse.csgraph import connected_components

from clln.controller.backend import SteppedEdges
from clln.controller.errors import CllnError, ProtocolError, UserError
from clln.controller.files import read_user_text
from clln.controller.network import Network

FORMAT_VERSION = 1
Progress = Callable[[int, int, str], None]
"""progress(done, total, what): called as a long procedure advances."""


class CalibrationWarning(UserWarning):
    """A calibration file is old, or was made for another bench."""


# -- what the procedures drive --------------------------------------------------------


@runtime_checkable
class CalibrationTarget(Protocol):
    """What a calibration needs from a bench (raw, uncorrected access).

    Node order and AO order (sources then clamps) are those of ``network``.
    """

    @property
    def network(self) -> Network:
        ...

    def drive_limit(self) -> float:
        """Largest amplitude (V) such that any AO pattern within +-amplitude passes the
        bench's limits (node voltage and worst-case edge current)."""
        ...

    def acquire_raw(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        """Hold each row of ``ao`` (B, n_ao) V, commanded as is (no channel correction);
        return the raw readings (B, n) V in node order and their timestamps (B,) s.
        Limits are checked before anything is written."""
        ...

    def read_grounded(self, repeats: int) -> np.ndarray:
        """(repeats, n) raw readings, V, of every node's AI channel with its input
        grounded (the channel's offset plus noise)."""
        ...

    def write_taps(self, taps: np.ndarray) -> None:
        """Write every edge's tap (m,) at once, verified by read-back."""
        ...

    def read_taps(self) -> np.ndarray:
        """(m,) the taps last written."""
        ...

    def safe(self) -> None:
        """Every output to 0 V, clamps open."""
        ...


@runtime_checkable
class ResistanceMeter(Protocol):
    """A 4-wire two-point resistance between two nodes of the network, taken with every
    output at 0 V and the clamps open (sources and grounds held at 0 V, every other node
    floating), e.g. an SMU on a fixture.

    Attributes
    ----------
    nodes : the two nodes the meter's force and sense leads join.
    """

    nodes: tuple[int, int]

    def measure(self) -> float:
        """Resistance in ohms."""
        ...


# -- data ------------------------------------------------------------------------------


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
    return np.where(np.isnan(a), None, a).tolist()


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
            "fits": self.fits.to_dict(), "summary": _jsonable(self.summary),
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- numerics ----------------------------------------------------------------------------


def kcl_matrix(volts: np.ndarray, edges: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Rows of (KCL): ``A[(b, i), j] = B_ji (B v_b)_j`` for every boundary condition b and
    free node i, so that ``A @ g`` are the currents (A) leaving the free nodes.

    Parameters
    ----------
    volts : (B, n) node voltages, V.
    edges : (m, 2) node pairs.
    free : (f,) free nodes.

    Returns
    -------
    (B * f, m) array, V; row b * f + k belongs to boundary condition b, node free[k].
    """
    a, b = edges[:, 0], edges[:, 1]
    drops = volts[:, a] - volts[:, b]  # (B, m)
    free = np.asarray(free, dtype=np.int64)
    sign = (a[None, :] == free[:, None]).astype(float) - (b[None, :] == free[:, None])  # (f, m)
    return (drops[:, None, :] * sign[None, :, :]).reshape(-1, edges.shape[0])


def _compress(rows: np.ndarray) -> np.ndarray:
    """An upper-triangular R with R^T R = rows^T rows (same least-squares geometry)."""
    if rows.shape[0] <= rows.shape[1]:
        return rows
    return np.linalg.qr(rows, mode="r")


def effective_resistance(n_nodes: int, edges: np.ndarray, g: np.ndarray, held: Sequence[int],
                         a: int, b: int) -> float:
    """Two-point resistance (ohm) between nodes a and b of the network with conductances
    ``g`` (m,) S, the nodes ``held`` at 0 V (they sink current), every other node floating.

    Edges with g <= 0 are left out (open); parts of the network connected neither to
    a, b nor to a held node drop out, so open edges never make the solve singular.
    Returns inf when no current path joins a and b.
    """
    g = np.asarray(g, dtype=float)
    keep = g > 0
    ground = n_nodes  # every held node merged into this one
    held_mask = np.zeros(n_nodes + 1, dtype=bool)
    held_mask[list(held)] = True
    ends = np.where(held_mask[edges[keep]], ground, edges[keep])
    w = g[keep]
    inner = ends[:, 0] != ends[:, 1]  # edges between two held nodes carry nothing to a, b
    ends, w = ends[inner], w[inner]
    held_set = set(int(h) for h in held)
    size = n_nodes + 1
    adj = sp.coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(size, size))
    _, label = connected_components(adj, directed=False)
    a_, b_ = (ground if a in held_set else a), (ground if b in held_set else b)
    if a_ == b_:
        return 0.0
    if label[a_] != label[b_]:
        return math.inf
    nodes = np.flatnonzero(label == label[a_])
    grounded = ground in nodes
    index = -np.ones(size, dtype=np.int64)
    index[nodes] = np.arange(nodes.size)
    k = nodes.size
    lap = np.zeros((k, k))
    ia, ib = index[ends[:, 0]], index[ends[:, 1]]
    inside = (ia >= 0) & (ib >= 0)
    np.add.at(lap, (ia[inside], ia[inside]), w[inside])
    np.add.at(lap, (ib[inside], ib[inside]), w[inside])
    np.add.at(lap, (ia[inside], ib[inside]), -w[inside])
    np.add.at(lap, (ib[inside], ia[inside]), -w[inside])
    rhs = np.zeros(k)
    rhs[index[a_]] += 1.0
    rhs[index[b_]] -= 1.0
    if grounded:  # the ground node is at 0 V: drop its row and column
        gi = index[ground]
        sel = np.arange(k) != gi
        v = np.zeros(k)
        v[sel] = np.linalg.solve(lap[np.ix_(sel, sel)], rhs[sel])
    else:  # a floating part: currents balance, potential fixed up to a constant
        v = np.linalg.lstsq(lap, rhs, rcond=None)[0]
    return float(v[index[a_]] - v[index[b_]])


@dataclass
class Batch:
    """One DAQ acquisition of a survey.

    Attributes
    ----------
    state : index of the tap state it was taken in.
    ao : (B, n_ao) AO commands, V.
    raw : (B, n) raw readings in node order, V.
    clamped : whether the clamps were engaged.
    """

    state: int
    ao: np.ndarray
    raw: np.ndarray
    clamped: bool


@dataclass
class Survey:
    """Everything one measurement campaign collected.

    Attributes
    ----------
    taps : (S, m) the tap states.
    batches : the acquisitions.
    meter : (state, ohm) resistance-meter readings.
    grounded : (R, n) grounded-input readings, V, or None.
    counts : acquisitions, boundary conditions, tap writes, meter readings.
    """

    taps: np.ndarray
    batches: list[Batch]
    meter: list[tuple[int, float]] = field(default_factory=list)
    grounded: np.ndarray | None = None
    counts: dict[str, int] = field(default_factory=dict)


def free_nodes(network: Network, clamped: bool) -> np.ndarray:
    """Nodes where (KCL) holds: neither driven nor grounded."""
    roles = network.roles
    held = set(roles.sources) | set(roles.grounds) | (set(roles.clamps) if clamped else set())
    return np.array([i for i in range(network.n_nodes) if i not in held], dtype=np.int64)


def held_nodes(network: Network) -> list[int]:
    """Nodes at 0 V while the resistance meter reads (outputs zeroed, clamps open)."""
    return sorted(set(network.roles.sources) | set(network.roles.grounds))


@dataclass(frozen=True, eq=False)
class Tomography:
    """Conductances solved from a survey.

    Attributes
    ----------
    pairs : (U, 2) the distinct (edge, tap) unknowns.
    index : (S, m) unknown index of every edge in every state.
    values : (U,) relative conductances (unit scale; nan where unobservable).
    observable : (U,) bool, False where no current was seen through the unknown.
    singular : the two smallest singular values over the largest (fit residual and gap).
    """

    pairs: np.ndarray
    index: np.ndarray
    values: np.ndarray
    observable: np.ndarray
    singular: tuple[float, float]

    def states(self, scale: float | np.ndarray = 1.0) -> np.ndarray:
        """(S, m) conductances of every edge in every state, times ``scale``."""
        return self.values[self.index] * np.asarray(scale).reshape(-1, 1)

    @property
    def gap(self) -> float:
        """Second-smallest over smallest singular value: >> 1 when the solution is unique."""
        return self.singular[1] / max(self.singular[0], 1e-300)


def solve_tomography(network: Network, survey: Survey, channels: ChannelCalibration, *,
                     volt_floor: float = 2e-3) -> Tomography:
    """Every (edge, tap) conductance of a survey at once, up to one common scale.

    Each acquisition's (KCL) rows are compressed to a triangular factor (same
    least-squares geometry), placed at the columns of its state's (edge, tap) unknowns,
    and the stacked system's null vector is found by SVD with unit-norm columns.

    Parameters
    ----------
    network : topology and node roles.
    survey : the acquisitions and their tap states.
    channels : corrections applied to the raw readings.
    volt_floor : an unknown whose rms voltage drop stays below this in every batch
        (V) carries no observable current (e.g. it is in series with an open edge)
        and is reported unobservable.
    """
    edges = network.edges
    m = network.n_edges
    pairs, inverse = np.unique(
        np.stack([np.broadcast_to(np.arange(m), survey.taps.shape), survey.taps], axis=-1).reshape(-1, 2),
        axis=0, return_inverse=True)
    index = inverse.reshape(survey.taps.shape)
    n_unknown = pairs.shape[0]
    free = {c: free_nodes(network, c) for c in (False, True)}
    volts = [channels.volts(b.raw) for b in survey.batches]
    # observability: rms drop over each batch, the largest over the batches of an unknown
    seen = np.zeros(n_unknown)
    for batch, v in zip(survey.batches, volts):
        rms = np.sqrt(np.mean((v[:, edges[:, 0]] - v[:, edges[:, 1]]) ** 2, axis=0))
        np.maximum.at(seen, index[batch.state], rms)
    observable = seen >= volt_floor
    n_obs = int(observable.sum())
    column = -np.ones(n_unknown, dtype=np.int64)
    column[observable] = np.arange(n_obs)
    blocks = []
    for batch, v in zip(survey.batches, volts):
        rows = _compress(kcl_matrix(v, edges, free[batch.clamped]))
        cols = column[index[batch.state]]
        full = np.zeros((rows.shape[0], n_obs))
        ok = cols >= 0
        full[:, cols[ok]] += rows[:, ok]
        blocks.append(full)
    big = np.vstack(blocks)
    scale = np.linalg.norm(big, axis=0)
    scale[scale == 0] = 1.0
    _, sv, vt = np.linalg.svd(big / scale, full_matrices=False)
    x = vt[-1] / scale
    x = x * (1.0 if x.sum() >= 0 else -1.0)
    sv = sv / sv[0]
    values = np.full(n_unknown, np.nan)
    values[observable] = x
    singular = (float(sv[-1]), float(sv[-2]) if sv.size > 1 else math.inf)
    return Tomography(pairs, index, values, observable, singular)


def _dense_laplacian(n: int, edges: np.ndarray, g: np.ndarray) -> np.ndarray:
    lap = np.zeros((n, n))
    a, b = edges[:, 0], edges[:, 1]
    np.add.at(lap, (a, a), g)
    np.add.at(lap, (b, b), g)
    np.add.at(lap, (a, b), -g)
    np.add.at(lap, (b, a), -g)
    return lap


def fit_ao(network: Network, survey: Survey, channels: ChannelCalibration,
           conductances: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AO gains, offsets and output impedances from the driven nodes' AI channels.

    AO channel k, commanded x, holds its node d_k at ``(1 + gain) x + offset - Z I``,
    where I is the current it delivers into the network, ``(L v)_{d_k}`` from the
    measured voltages and the conductances of the state; the three are fitted by least
    squares over every acquisition that drives the channel. The AI channels are the
    reference (their gain is the DAQ's factory calibration).

    Parameters
    ----------
    conductances : (S, m) conductances of every state, S.

    Returns
    -------
    (gain (n_ao,), offset (n_ao,) V, impedance (n_ao,) ohm).
    """
    roles = network.roles
    n = network.n_nodes
    driven = list(roles.sources) + list(roles.clamps)
    gain, offset, impedance = np.zeros(len(driven)), np.zeros(len(driven)), np.zeros(len(driven))
    laps = [_dense_laplacian(n, network.edges, np.nan_to_num(g)) for g in conductances]
    for k, node in enumerate(driven):
        x, y, cur = [], [], []
        for batch in survey.batches:
            if k >= len(roles.sources) and not batch.clamped:
                continue  # a clamp output is disconnected while the clamps are open
            v = channels.volts(batch.raw)
            x.append(batch.ao[:, k])
            y.append(v[:, node])
            cur.append(v @ laps[batch.state][node])
        if not x:
            continue
        xs, ys, cs = np.concatenate(x), np.concatenate(y), np.concatenate(cur)
        design = np.c_[xs, np.ones_like(xs), -cs]
        (slope, intercept, z), *_ = np.linalg.lstsq(design, ys, rcond=None)
        gain[k], offset[k], impedance[k] = slope - 1.0, intercept, z
    return gain, offset, impedance


def fit_line(taps: np.ndarray, resistance: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Weighted least squares R = R0 + D Rstep with weights 1/R^2 (relative errors).

    Parameters
    ----------
    taps : (K,) taps D.
    resistance : (K,) measured R(D), ohm.

    Returns
    -------
    (R0 ohm, Rstep ohm per tap, (K,) residuals R - line, ohm).
    """
    d = np.asarray(taps, dtype=float)
    r = np.asarray(resistance, dtype=float)
    w = 1.0 / r
    design = np.c_[np.ones_like(d), d] * w[:, None]
    (r0, rstep), *_ = np.linalg.lstsq(design, r * w, rcond=None)
    return float(r0), float(rstep), r - (r0 + rstep * d)


def edge_table(r0: float, rstep: float, taps: np.ndarray, residuals: np.ndarray,
               n_taps: int) -> tuple[np.ndarray, np.ndarray]:
    """The resistance over every tap: line plus the residuals interpolated by a cubic
    spline through the measured taps (linear extrapolation beyond them), made monotone
    in the line's direction.

    Returns
    -------
    (residual table (n_taps,) ohm, resistance (n_taps,) ohm).
    """
    d = np.arange(n_taps, dtype=float)
    order = np.argsort(taps)
    t, res = np.asarray(taps, dtype=float)[order], np.asarray(residuals, dtype=float)[order]
    if t.size >= 4:
        spline = CubicSpline(t, res, bc_type="not-a-knot", extrapolate=True)
        table = spline(d)
        outside = (d < t[0]) | (d > t[-1])
        table[outside] = np.interp(d[outside], t, res)
    else:
        table = np.interp(d, t, res)
    resistance = r0 + rstep * d + table
    resistance = np.maximum.accumulate(resistance) if rstep >= 0 else np.minimum.accumulate(resistance)
    return table, resistance


# -- measurement designs ------------------------------------------------------------------


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
    center = float(target.drive_center()) if hasattr(target, "drive_center") else 0.0
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


# -- the tomography check -------------------------------------------------------------------


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


# -- the calibration --------------------------------------------------------------------


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


# -- verification ----------------------------------------------------------------------------


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


__all__ = [
    "Batch", "Calibration", "CalibrationRun", "CalibrationTarget", "CalibrationWarning",
    "ChannelCalibration", "EdgeCheck", "EdgeFits", "ResistanceMeter", "Survey",
    "Tomography", "Verification", "calibrate", "calibration_problems", "calibration_states",
    "check_edges", "check_states", "classify", "edge_table", "effective_resistance", "fit_ao",
    "fit_line", "kcl_matrix", "load_calibration", "meter_scales", "solve_tomography", "survey",
    "tap_levels", "verify",
]
