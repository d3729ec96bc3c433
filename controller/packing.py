"""Contact networks of jammed packings of bidisperse soft disks (2-D).

The seed papers train resistor networks whose topology is the contact network of a
jammed packing: N disks, half of radius r and half of radius 1.4 r, in a unit
square (hard walls) or a periodic unit cell, compressed past jamming and relaxed to
a minimum of the harmonic soft-disk energy

    U = 1/2 sum_{pairs in contact} (sigma_ij - d_ij)^2  [+ the same for wall overlaps]

(sigma_ij = r_i + r_j, d_ij the centre distance; lengths in units of the box side).
Every overlapping pair is an edge. Rattlers (disks with fewer than d + 1 = 3
contacts) are removed repeatedly, then every part but the largest connected one.

The packing fraction is chosen by bisection so that the mean coordination
Z = 2 m / n of the network after rattler removal is close to a target; each trial
starts from the previous relaxed state (rescaled), so the search costs a few
minimisations. Minimisation: L-BFGS (``scipy.optimize.minimize``) on positions,
neighbour pairs from a ``scipy.spatial.cKDTree`` (periodic ``boxsize`` for a
periodic cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from clln.controller.errors import NetworkError
from clln.controller.network import Network

RADIUS_RATIO = 1.4
"""Large-to-small disk radius ratio of the bidisperse 50:50 mixture."""

COORDINATION_RANGE = (4.0, 5.6)
"""Allowed target mean coordination: isostatic (4 in 2-D) up to a dense packing."""

_MIN_CONTACTS = 3  # d + 1 in two dimensions


@dataclass(frozen=True)
class Packing:
    """A relaxed packing and its contact network.

    Attributes
    ----------
    network : contact network without rattlers; positions (n, 2) in [0, 1)^2.
    packing_fraction : area fraction of all N disks (rattlers included).
    coordination : mean coordination Z = 2 m / n of the network.
    radii : (n,) radii of the disks kept, box units.
    kept : (n,) index of each network node among the N original disks.
    energy : harmonic energy at the minimum, box units squared.
    disk_positions : (N, 2) centres of all N disks, rattlers included.
    """

    network: Network
    packing_fraction: float
    coordination: float
    radii: np.ndarray
    kept: np.ndarray
    energy: float
    disk_positions: np.ndarray


class _SoftDisks:
    """Harmonic soft-disk energy and gradient for fixed radii (box side 1)."""

    def __init__(self, radii: np.ndarray, periodic: bool) -> None:
        self.radii = radii
        self.periodic = periodic
        self.cutoff = 2.0 * float(radii.max())

    def pairs(self, x: np.ndarray) -> np.ndarray:
        """(p, 2) candidate pairs closer than twice the largest radius."""
        if self.periodic:
            tree = cKDTree(np.mod(x, 1.0), boxsize=1.0)
        else:
            tree = cKDTree(x)
        return tree.query_pairs(self.cutoff, output_type="ndarray")

    def separations(self, x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """(p, 2) vectors x_i - x_j (minimum image in a periodic cell)."""
        delta = x[pairs[:, 0]] - x[pairs[:, 1]]
        if self.periodic:
            delta -= np.round(delta)
        return delta

    def energy_gradient(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        x = flat.reshape(-1, 2)
        grad = np.zeros_like(x)
        pairs = self.pairs(x)
        energy = 0.0
        if pairs.size:
            delta = self.separations(x, pairs)
            dist = np.maximum(np.sqrt(np.sum(delta * delta, axis=1)), 1e-12)
            sigma = self.radii[pairs[:, 0]] + self.radii[pairs[:, 1]]
            overlap = sigma - dist
            touch = overlap > 0
            if np.any(touch):
                ov, d, dv, pr = overlap[touch], dist[touch], delta[touch], pairs[touch]
                energy += 0.5 * float(np.sum(ov * ov))
                force = (ov / d)[:, None] * dv  # -dU/dx_i on i
                np.add.at(grad, pr[:, 0], -force)
                np.add.at(grad, pr[:, 1], force)
        if not self.periodic:
            r = self.radii[:, None]
            low = np.maximum(r - x, 0.0)
            high = np.maximum(x + r - 1.0, 0.0)
            energy += 0.5 * float(np.sum(low * low) + np.sum(high * high))
            grad += high - low
        return energy, grad.ravel()

    def relax(self, x: np.ndarray, *, fine: bool = True) -> tuple[np.ndarray, float]:
        """Positions (N, 2) at the nearest energy minimum, and the energy there.

        ``fine=False`` stops earlier (relative energy change 1e-11): enough to count
        contacts while searching the packing fraction.
        """
        tol = {"gtol": 1e-13, "ftol": 1e-16} if fine else {"gtol": 1e-11, "ftol": 1e-11}
        res = scipy.optimize.minimize(
            self.energy_gradient, x.ravel(), jac=True, method="L-BFGS-B",
            options={"maxiter": 20_000, "maxcor": 20, **tol},
        )
        x = res.x.reshape(-1, 2)
        if self.periodic:
            x = np.mod(x, 1.0)
        return x, float(res.fun)

    def contacts(self, x: np.ndarray) -> np.ndarray:
        """(m, 2) overlapping pairs (i < j)."""
        pairs = self.pairs(x)
        if not pairs.size:
            return np.zeros((0, 2), dtype=np.int64)
        delta = self.separations(x, pairs)
        dist = np.sqrt(np.sum(delta * delta, axis=1))
        sigma = self.radii[pairs[:, 0]] + self.radii[pairs[:, 1]]
        # Contacts whose overlap is lost in the minimiser's tolerance are not contacts.
        touch = (sigma - dist) > 1e-9 * sigma
        return np.sort(pairs[touch], axis=1).astype(np.int64)


def _radii(n_disks: int, phi: float) -> np.ndarray:
    """(N,) radii of a 50:50 mixture (ratio RADIUS_RATIO) filling area fraction phi."""
    large = np.arange(n_disks) % 2 == 1
    ratio = np.where(large, RADIUS_RATIO, 1.0)
    small = np.sqrt(phi / (np.pi * np.sum(ratio**2)))
    return small * ratio


def _prune(n_disks: int, contacts: np.ndarray) -> np.ndarray:
    """Indices of the disks kept: rattlers removed repeatedly, then the largest part."""
    alive = np.ones(n_disks, dtype=bool)
    edges = contacts
    while True:
        degree = np.bincount(edges.ravel(), minlength=n_disks)
        drop = alive & (degree < _MIN_CONTACTS)
        if not drop.any():
            break
        alive &= ~drop
        edges = edges[alive[edges[:, 0]] & alive[edges[:, 1]]]
    if not edges.size:
        return np.zeros(0, dtype=np.int64)
    adj = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_disks,) * 2)
    _, labels = connected_components(adj, directed=False)
    sizes = np.bincount(labels[alive], minlength=labels.max() + 1)
    return np.flatnonzero(alive & (labels == np.argmax(sizes)))


def _network(x: np.ndarray, contacts: np.ndarray, kept: np.ndarray) -> Network:
    index = np.full(x.shape[0], -1, dtype=np.int64)
    index[kept] = np.arange(kept.size)
    edges = index[contacts]
    edges = edges[(edges >= 0).all(axis=1)]
    return Network(int(kept.size), edges, positions=x[kept])


def jammed_packing(
    n_disks: int,
    rng: np.random.Generator,
    *,
    coordination: float = 4.5,
    periodic: bool = False,
    tolerance: float = 0.05,
    max_trials: int = 14,
) -> Packing:
    """Relax N bidisperse soft disks to a jammed packing with mean coordination near a target.

    Parameters
    ----------
    n_disks : number of disks N before rattler removal (the network has a few % fewer
        nodes).
    rng : random generator for the initial positions (the packing is deterministic
        given it).
    coordination : target mean coordination Z = 2 m / n of the network, in
        ``COORDINATION_RANGE``.
    periodic : periodic unit cell (edges may wrap around) instead of hard walls.
    tolerance : stop when |Z - target| is below this.
    max_trials : at most this many minimisations in the bisection on the packing fraction.

    Returns
    -------
    Packing : the network (positions in the unit square) and its statistics.
    """
    lo_z, hi_z = COORDINATION_RANGE
    if not lo_z <= coordination <= hi_z:
        raise NetworkError(
            f"jammed packing: coordination {coordination} is outside {lo_z}..{hi_z}"
        )
    if n_disks < 16:
        raise NetworkError(f"jammed packing: needs at least 16 disks, got {n_disks}")
    x = rng.random((n_disks, 2))
    bracket = [0.80, 0.98]  # packing fractions below / above the target coordination
    phi = 0.86
    tried: list[tuple[float, float]] = []  # (phi, Z)
    best: tuple[float, float, np.ndarray] | None = None  # (|Z - target|, phi, centres)
    for _ in range(max_trials):
        disks = _SoftDisks(_radii(n_disks, phi), periodic)
        x, _ = disks.relax(x, fine=False)  # warm start: the previous centres, new radii
        contacts = disks.contacts(x)
        kept = _prune(n_disks, contacts)
        z = 2.0 * _network(x, contacts, kept).n_edges / kept.size if kept.size >= 3 else 0.0
        if z > 0 and (best is None or abs(z - coordination) < best[0]):
            best = (abs(z - coordination), phi, x)
        if z > 0 and abs(z - coordination) <= tolerance:
            break
        bracket[0 if z < coordination else 1] = phi
        tried.append((phi, z))
        phi = _next_fraction(tried, bracket, coordination)
    if best is None:
        raise NetworkError(f"jammed packing: {n_disks} disks did not jam; use more disks")
    # polish the chosen packing to a tight minimum before reading its contacts
    _, phi, x = best
    radii = _radii(n_disks, phi)
    disks = _SoftDisks(radii, periodic)
    x, energy = disks.relax(x, fine=True)
    contacts = disks.contacts(x)
    kept = _prune(n_disks, contacts)
    if kept.size < 3:
        raise NetworkError(f"jammed packing: {n_disks} disks did not jam; use more disks")
    net = _network(x, contacts, kept)
    return Packing(net, phi, 2.0 * net.n_edges / net.n_nodes, radii[kept], kept, energy, x)


def _next_fraction(tried: list[tuple[float, float]], bracket: list[float], target: float) -> float:
    """Next packing fraction: secant step on Z(phi) from the last two trials when it stays
    inside the bracket, else a step of the typical slope dZ/dphi ~ 7, else bisection."""
    lo, hi = bracket
    phi, z = tried[-1]
    guess = phi + (target - z) / 7.0 if z > 0 else 0.5 * (lo + hi)
    if len(tried) >= 2:
        phi0, z0 = tried[-2]
        if z != z0 and z > 0 and z0 > 0:
            guess = phi + (target - z) * (phi - phi0) / (z - z0)
    margin = 0.05 * (hi - lo)
    if not lo + margin < guess < hi - margin:
        guess = 0.5 * (lo + hi)
    return float(guess)


def jammed(
    n_disks: int, rng: np.random.Generator, *, coordination: float = 4.5, periodic: bool = False
) -> Network:
    """Contact network of a jammed bidisperse soft-disk packing (see :func:`jammed_packing`)."""
    return jammed_packing(n_disks, rng, coordination=coordination, periodic=periodic).network
