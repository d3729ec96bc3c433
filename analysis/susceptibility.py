"""Physical Hessian and edge susceptibilities (seed 001, docs/science.md, "Susceptibility").

Conventions
-----------
The physical Hessian is the Laplacian ``L = B^T diag(g) B`` (n x n, siemens)
bordered by the *held* nodes ``D``, whose voltage is fixed at 0 V for the response::

    H = [[L,   E ],        E = [e_d for d in D]   (n x h, dimensionless)
         [E^T, 0 ]]        (n + h) x (n + h)

Two choices of D (``hessian_boundary(network, convention)``):

* ``ground`` (default; seed 001 eq. 2, docs/science.md): D = the ground node(s). The
  inputs are thought of as currents injected at the sources, which are free nodes.
* ``dirichlet``: D = sources and grounds, the nodes a voltage-driven bench actually
  holds. With it the free state is ``H [v; mu] = [0; v_D]`` and the cost Hessian
  decomposes exactly as in seed eq. 12 for voltage inputs (clln.analysis.cost always
  differentiates the bench's physics, i.e. uses this D).

Susceptibility vector of edge j: ``s_j = H^-1 bhat_j`` with ``bhat_j = [b_j; 0]``
(row j of B padded with h zeros). Its two parts are physical responses:

* node part (n,), V/A: ``G b_j``, the node voltages when 1 A is injected at a_j and
  drawn at b_j with the held nodes at 0 V (G: the inverse of L on the other nodes,
  zero rows and columns at D). By reciprocity entry i is also the voltage drop
  across edge j when 1 A is injected at node i.
* border part (h,), A/A: ``(B phi_d)_j``, the drop across edge j when held node d is
  at 1 V and the other held nodes at 0 V (phi_d, the harmonic measure of d); zero
  for a single held node.

``|s_j|^2 = |G b_j|^2 + sum_d (B phi_d)_j^2 = sum_k (bhat_j . u_k)^2 / lambda_k^2``
over the eigenpairs of H (eq. 20); the units of the two parts differ, as in the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from clln.controller.errors import NetworkError
from clln.controller.network import Network

try:  # LDL^T with AMD ordering: the fastest factorization of a grounded Laplacian here.
    import qdldl as _qdldl
except ImportError:  # pragma: no cover - qdldl is a declared dependency
    _qdldl = None

EXACT_MAX_NODES = 5000
"""Largest network whose susceptibility norms are computed exactly by default."""

DENSE_MODES_MAX_NODES = 3000
"""Largest network whose physical Hessian is diagonalised densely."""


CONVENTIONS = ("ground", "dirichlet")


def hessian_boundary(network: Network, convention: str = "ground") -> np.ndarray:
    """(h,) the nodes bordering the physical Hessian.

    ``ground``: the grounds (seed 001); ``dirichlet``: the sources, then the grounds
    (every node a voltage-driven bench holds in the free state).
    """
    if convention == "ground":
        held = np.asarray(network.roles.grounds, dtype=np.int64)
    elif convention == "dirichlet":
        held = np.r_[network.roles.sources, network.roles.grounds].astype(np.int64)
    else:
        raise ValueError(f"unknown convention {convention!r}; allowed: {', '.join(CONVENTIONS)}")
    if held.size == 0:
        raise NetworkError(
            f"the network has no {'ground' if convention == 'ground' else 'source or ground'} "
            "node: its physical Hessian is singular"
        )
    return held


class GroundedGreen:
    """Factorization of the Laplacian with the held nodes at 0 V.

    Parameters
    ----------
    network : topology.
    conductances : (m,) edge conductances, S.
    held : (h,) held nodes; ``hessian_boundary(network)`` (the grounds) when omitted.
    """

    def __init__(self, network: Network, conductances: np.ndarray,
                 held: np.ndarray | None = None) -> None:
        g = np.asarray(conductances, dtype=float)
        if g.shape != (network.n_edges,):
            raise ValueError(f"conductances must have shape ({network.n_edges},), got {g.shape}")
        if not np.all(np.isfinite(g) & (g > 0)):
            raise NetworkError("edge conductances must be finite and > 0 S")
        self.network = network
        self.conductances = g
        self.held = hessian_boundary(network) if held is None else np.asarray(held, dtype=np.int64)
        n = network.n_nodes
        is_free = np.ones(n, dtype=bool)
        is_free[self.held] = False
        self.free = np.flatnonzero(is_free)
        self.laplacian = network.laplacian(g).tocsc()
        l_ff = self.laplacian[self.free][:, self.free].tocsc()
        self._l_fd = self.laplacian[self.free][:, self.held].tocsc()
        count, labels = network.components()
        anchored = np.zeros(count, dtype=bool)
        anchored[labels[self.held]] = True
        if not anchored.all():
            raise NetworkError("a part of the network has no held node and floats")
        if _qdldl is not None and self.free.size:
            self._factor = _qdldl.Solver(sp.triu(l_ff, format="csc"), upper=True)
            self._solve_free = self._solve_qdldl
        else:
            self._factor = spla.splu(l_ff, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                                     options={"SymmetricMode": True})
            self._solve_free = self._factor.solve

    @property
    def n_nodes(self) -> int:
        return self.network.n_nodes

    def _solve_qdldl(self, rhs: np.ndarray) -> np.ndarray:
        out = np.empty_like(rhs)
        for col in range(rhs.shape[1]):
            out[:, col] = self._factor.solve(rhs[:, col])
        return out

    def solve(self, currents: np.ndarray) -> np.ndarray:
        """Node voltages (n, k), V, for injected currents (n, k), A; held nodes at 0 V.

        Currents injected at held nodes flow straight into their sources and do nothing.
        """
        currents = np.asarray(currents, dtype=float).reshape(self.n_nodes, -1)
        out = np.zeros_like(currents)
        if self.free.size:
            out[self.free] = self._solve_free(np.ascontiguousarray(currents[self.free]))
        return out

    def solve_free(self, currents_free: np.ndarray) -> np.ndarray:
        """Like :meth:`solve` for currents given on the free nodes only, (n_free, k) -> (n_free, k)."""
        return self._solve_free(np.ascontiguousarray(currents_free, dtype=float))

    def harmonic(self) -> np.ndarray:
        """(n, h) phi_d: node voltages with held node d at 1 V and the others at 0 V, V/V."""
        h = self.held.size
        phi = np.zeros((self.n_nodes, h))
        phi[self.held, np.arange(h)] = 1.0
        if self.free.size:
            phi[self.free] = self._solve_free(-self._l_fd.toarray())
        return phi


def bordered_laplacian(network: Network, conductances: np.ndarray,
                       held: np.ndarray | None = None) -> sp.csr_matrix:
    """Physical Hessian H = [[L, E], [E^T, 0]], (n + h, n + h) sparse (S and dimensionless)."""
    held = hessian_boundary(network) if held is None else np.asarray(held, dtype=np.int64)
    n, h = network.n_nodes, held.size
    border = sp.csr_matrix((np.ones(h), (held, np.arange(h))), shape=(n, h))
    return sp.bmat([[network.laplacian(conductances), border], [border.T, None]],
                   format="csr")


def extended_incidence(network: Network, held: np.ndarray | None = None) -> sp.csr_matrix:
    """(m, n + h) rows bhat_j = [b_j, 0]: the incidence matrix padded for the border."""
    held = hessian_boundary(network) if held is None else np.asarray(held, dtype=np.int64)
    return sp.hstack([network.incidence, sp.csr_matrix((network.n_edges, held.size))],
                     format="csr")


def susceptibility_vectors(green: GroundedGreen, edges: np.ndarray | None = None) -> np.ndarray:
    """Susceptibility vectors s_j = H^-1 bhat_j as columns, (n + h, k).

    Rows 0..n-1 are the node part (V/A), the last h rows the border part (A/A).

    Parameters
    ----------
    green : factorization of the network at its conductances.
    edges : (k,) edge indices; all edges when omitted.
    """
    net = green.network
    idx = np.arange(net.n_edges) if edges is None else np.asarray(edges, dtype=np.int64)
    rhs = net.incidence[idx].T.toarray()  # (n, k) dipoles
    node_part = green.solve(rhs)
    border = (net.incidence[idx] @ green.harmonic()).T  # (h, k)
    return np.vstack([node_part, border])


@dataclass(frozen=True, eq=False)
class SusceptibilityNorms:
    """Scalar susceptibilities |s_j| of every edge.

    Attributes
    ----------
    norms : (m,) |s_j| (mixed units, see the module docstring).
    stderr : (m,) standard error of each norm (zeros when exact).
    method : ``exact`` or ``randomized``.
    probes : number of random probe solves (0 when exact).
    node_part : (m,) |G b_j|, V/A.
    border_part : (m,) |(B phi_d)_j|_d, A/A.
    """

    norms: np.ndarray
    stderr: np.ndarray
    method: str
    probes: int
    node_part: np.ndarray
    border_part: np.ndarray


def susceptibility_norms(
    green: GroundedGreen,
    *,
    method: str = "auto",
    probes: int = 64,
    rng: np.random.Generator | None = None,
    block: int = 256,
) -> SusceptibilityNorms:
    """|s_j| for every edge, exactly or by a randomized estimator with error bars.

    Exact: ``|G b_j|^2 = sum_i (B G e_i)_j^2``, one solve per free node, taken in
    blocks of ``block`` columns (memory O(m block)).

    Randomized (Hutchinson's estimator of the diagonal of ``A = B G^2 B^T``):
    ``|G b_j|^2 = E_z[(b_j . G z)^2]`` for Rademacher vectors z (E[z z^T] = I), so
    ``|G b_j|^2 ~ mean_p (B G z_p)_j^2`` over ``probes`` vectors, one solve each,
    whatever n. ``stderr`` is the sample standard error of that mean, carried to the
    norm (relative error ~ sqrt(2 / probes) / 2 on |s_j| at worst). Low-rank
    deflation (diag++) and graph-colouring probes were tried and did worse here: the
    dipole response G b_j decays only like 1/r in two dimensions, so neither a few
    soft modes nor a neighbourhood capture it.

    Parameters
    ----------
    green : factorization of the network at its conductances.
    method : ``exact``, ``randomized`` or ``auto`` (exact up to EXACT_MAX_NODES nodes).
    probes : random vectors (one solve each) of the randomized estimator (at least 2).
    rng : random generator of the probes (default: seed 0, so results repeat).
    block : columns per block in the exact computation.
    """
    if method == "auto":
        method = "exact" if green.n_nodes <= EXACT_MAX_NODES else "randomized"
    if method not in ("exact", "randomized"):
        raise ValueError(f"unknown method {method!r}; allowed: auto, exact, randomized")
    net = green.network
    incidence_free = net.incidence[:, green.free].tocsc()  # (m, n_free)
    border = net.incidence @ green.harmonic()
    border_sq = np.sum(border * border, axis=1)
    nf = green.free.size
    if method == "exact":
        node_sq = np.zeros(net.n_edges)
        for start in range(0, nf, block):
            cols = np.arange(start, min(start + block, nf))
            unit = np.zeros((nf, cols.size))
            unit[cols, np.arange(cols.size)] = 1.0
            y = incidence_free @ green.solve_free(unit)
            node_sq += np.sum(y * y, axis=1)
        node_var = np.zeros(net.n_edges)
        used = 0
    else:
        if probes < 2:
            raise ValueError(f"the randomized estimator needs at least 2 probes, got {probes}")
        rng = np.random.default_rng(0) if rng is None else rng
        node_sq = np.zeros(net.n_edges)
        node_sq2 = np.zeros(net.n_edges)
        for start in range(0, probes, block):
            count = min(block, probes - start)
            y = incidence_free @ green.solve_free(rng.choice([-1.0, 1.0], size=(nf, count)))
            samples = y * y
            node_sq += samples.sum(axis=1)
            node_sq2 += (samples * samples).sum(axis=1)
        node_sq /= probes
        node_var = np.maximum(node_sq2 / probes - node_sq**2, 0.0) / (probes - 1)
        used = probes
    node_sq = np.maximum(node_sq, 0.0)
    total = node_sq + border_sq
    norms = np.sqrt(total)
    stderr = np.sqrt(node_var) / (2.0 * np.maximum(norms, np.finfo(float).tiny))
    return SusceptibilityNorms(norms, stderr, method, used, np.sqrt(node_sq), np.sqrt(border_sq))


@dataclass(frozen=True, eq=False)
class HessianModes:
    """Eigenpairs of the physical Hessian, softest (smallest |lambda|) first.

    Attributes
    ----------
    eigenvalues : (n + h,) lambda_k (S for node-like modes; H is indefinite: the
        border adds h negative eigenvalues).
    eigenvectors : (n + h, n + h) orthonormal columns u_k.
    overlaps : (m, n + h) bhat_j . u_k.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    overlaps: np.ndarray

    def partial_susceptibility(self, counts: np.ndarray | list[int]) -> np.ndarray:
        """(len(counts), m) |s_j^(k)|: the eigen-sum (eq. 24) over the k softest modes."""
        counts = np.asarray(counts, dtype=np.int64)
        out = np.empty((counts.size, self.overlaps.shape[0]))
        for row, k in enumerate(counts):
            terms = self.overlaps[:, :k] / self.eigenvalues[:k]
            out[row] = np.sqrt(np.sum(terms * terms, axis=1))
        return out

    def network_fraction(self) -> np.ndarray:
        """(N,) |S^(k)|_F / |S|_F for k = 1..N: the share of the whole network's
        susceptibility (Frobenius norm over all edges) carried by the k softest modes."""
        per_mode = np.sum(self.overlaps**2, axis=0) / self.eigenvalues**2
        cumulative = np.cumsum(per_mode)
        return np.sqrt(cumulative / cumulative[-1])

    def susceptibility(self) -> np.ndarray:
        """(m,) |s_j| from the full eigen-sum (eq. 20)."""
        return np.sqrt(np.sum((self.overlaps / self.eigenvalues) ** 2, axis=1))


def hessian_modes(network: Network, conductances: np.ndarray,
                  held: np.ndarray | None = None) -> HessianModes:
    """Dense eigendecomposition of the physical Hessian (n up to a few thousand)."""
    if network.n_nodes > DENSE_MODES_MAX_NODES:
        raise NetworkError(
            f"dense eigenmodes of a {network.n_nodes}-node network are too large; "
            f"at most {DENSE_MODES_MAX_NODES} nodes"
        )
    hess = bordered_laplacian(network, conductances, held).toarray()
    vals, vecs = np.linalg.eigh(hess)
    order = np.argsort(np.abs(vals), kind="stable")
    vals, vecs = vals[order], vecs[:, order]
    overlaps = extended_incidence(network, held) @ vecs
    return HessianModes(vals, vecs, np.asarray(overlaps))


def modes_for_fraction(curve: np.ndarray, fraction: float = 0.9) -> int:
    """Fewest softest modes k with ``curve[k - 1] >= fraction``, for a non-decreasing
    (N,) curve such as :meth:`HessianModes.network_fraction` or one edge's
    ``|s_j^(k)| / |s_j|``."""
    reached = np.asarray(curve) >= fraction
    return int(np.argmax(reached) + 1) if reached.any() else int(len(curve))


def relative_conductance(network: Network, conductances: np.ndarray) -> np.ndarray:
    """(m,) g_j divided by the mean conductance of the edges sharing a node with j.

    NaN for an edge with no neighbouring edge.
    """
    g = np.asarray(conductances, dtype=float)
    a, b = network.edges[:, 0], network.edges[:, 1]
    node_sum = np.bincount(network.edges.ravel(), weights=np.repeat(g, 2),
                           minlength=network.n_nodes)
    degree = network.degrees()
    count = degree[a] + degree[b] - 2
    total = node_sum[a] + node_sum[b] - 2 * g
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, g / (total / np.maximum(count, 1)), np.nan)
