"""Calibration numerics: Kirchhoff's current law stacked over boundary conditions, network
tomography (its null vector), effective resistances, the AO channel fit and the per-edge
line fit and tap table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.interpolate import CubicSpline
from scipy.sparse.csgraph import connected_components

from clln.controller.calibration.fileformat import ChannelCalibration
from clln.controller.network import Network


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
    r: np.ndarray = np.linalg.qr(rows, mode="r")  # type: ignore[assignment]  # mode "r" returns R alone
    return r


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
        v: np.ndarray = np.zeros(k)
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
