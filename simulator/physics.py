"""Linear resistor-network physics with a fast sparse solver.

For a network with Dirichlet nodes D (sources and grounds) and free nodes F,
Kirchhoff's law is ``L_FF v_F = -L_FD v_D`` with ``L = B^T diag(g) B``.

The physics is linear, so every free state of a batch is a combination of one
*basis* solution per source (``phi_s``: source s at 1 V, all other Dirichlet
nodes at 0 V), and the clamped state adds one correction per clamped node
(``z_c = L_FF^-1 e_c``, the response to a unit current injected at c): holding
the clamped nodes C at ``v_C`` needs injections ``i = Z_CC^-1 (v_C - v^F_C)``,
where ``Z_CC`` (k x k) is the inverse of the Schur complement of the Laplacian
on C. A batch therefore costs one numeric factorization and ``n_sources + k``
triangular solves, whatever its size.

The sparsity pattern of ``L_FF`` is fixed by the topology; its values are
scattered into a fixed CSC pattern with ``numpy.bincount`` and only the numeric
factorization is redone when the conductances change (QDLDL keeps its
symbolic analysis; SuperLU is the fallback when QDLDL is not installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from clln.controller.errors import NetworkError
from clln.controller.network import Network

try:  # QDLDL: LDL^T with AMD ordering, symbolic analysis reused by ``update``.
    import qdldl as _qdldl
except ImportError:  # pragma: no cover - exercised only where qdldl is missing
    _qdldl = None

SolverName = Literal["auto", "qdldl", "superlu"]


def available_solvers() -> list[str]:
    """Sparse factorizations usable here, best first."""
    return (["qdldl"] if _qdldl is not None else []) + ["superlu"]


@dataclass(frozen=True, eq=False)
class StateBasis:
    """Node-voltage basis of one conductance state.

    Attributes
    ----------
    basis : (n, n_sources + k) Fortran-ordered; the first n_sources columns are the
        source responses phi_s (volts per volt), the last k the clamp responses
        z_c (volts per ampere).
    z_cc_factor : Cholesky factor of Z_CC (k x k), for clamp injections.
    n_sources : number of source columns.
    """

    basis: np.ndarray
    z_cc_factor: tuple[np.ndarray, bool] | None
    n_sources: int

    @property
    def sources(self) -> np.ndarray:
        return self.basis[:, : self.n_sources]

    def clamp_injections(self, delta: np.ndarray) -> np.ndarray:
        """(B, k) injected currents (A) that move the clamped nodes by delta (B, k) volts."""
        if self.z_cc_factor is None:
            raise NetworkError("this network has no clamped nodes")
        return scipy.linalg.cho_solve(self.z_cc_factor, delta.T).T


class LinearNetworkSolver:
    """Solves one network's Kirchhoff equations for changing conductances.

    Parameters
    ----------
    network : topology with roles (sources, grounds, clamps).
    solver : ``auto`` (QDLDL if installed, else SuperLU), ``qdldl`` or ``superlu``.
    """

    def __init__(self, network: Network, solver: SolverName = "auto") -> None:
        self.network = network
        roles = network.roles
        n = network.n_nodes
        self.sources = np.asarray(roles.sources, dtype=np.int64)
        self.grounds = np.asarray(roles.grounds, dtype=np.int64)
        self.clamps = np.asarray(roles.clamps, dtype=np.int64)
        fixed = np.r_[self.sources, self.grounds]
        if fixed.size == 0:
            raise NetworkError("the network has no source or ground node: its voltages float")
        _check_anchored(network, fixed)
        if solver == "auto":
            solver = "qdldl" if _qdldl is not None else "superlu"
        if solver == "qdldl" and _qdldl is None:
            raise NetworkError("solver 'qdldl' is not installed (pip install qdldl)")
        if solver not in ("qdldl", "superlu"):
            raise NetworkError(f"unknown solver {solver!r}; allowed: auto, qdldl, superlu")
        self.solver_name: str = solver

        is_free = np.ones(n, dtype=bool)
        is_free[fixed] = False
        self.free = np.flatnonzero(is_free)
        self.n_free = nf = self.free.size
        position = np.full(n, -1, dtype=np.int64)
        position[self.free] = np.arange(nf)
        self._position = position
        if self.clamps.size and np.any(position[self.clamps] < 0):
            raise NetworkError("a clamped node is also a source or ground")

        a, b = network.edges[:, 0], network.edges[:, 1]
        pa, pb = position[a], position[b]
        edge_ids = np.arange(network.n_edges)
        # Upper-triangular entries of L_FF: (row, col, edge, sign).
        both = (pa >= 0) & (pb >= 0)
        rows = np.r_[pa[pa >= 0], pb[pb >= 0], np.minimum(pa, pb)[both]]
        cols = np.r_[pa[pa >= 0], pb[pb >= 0], np.maximum(pa, pb)[both]]
        self._entry_edge = np.r_[edge_ids[pa >= 0], edge_ids[pb >= 0], edge_ids[both]]
        self._entry_sign = np.r_[np.ones(int((pa >= 0).sum()) + int((pb >= 0).sum())),
                                 -np.ones(int(both.sum()))]
        keys, self._entry_slot = np.unique(cols * nf + rows, return_inverse=True)
        self._nnz = keys.size
        col_of, row_of = np.divmod(keys, nf)
        self._indices = row_of.astype(np.int32)
        self._indptr = np.searchsorted(col_of, np.arange(nf + 1)).astype(np.int32)
        # Right-hand sides of the source columns: -L_FD e_s, from edges joining a free
        # node to a source.
        src_col = np.full(n, -1, dtype=np.int64)
        src_col[self.sources] = np.arange(self.sources.size)
        one_free_a = (pa >= 0) & (src_col[b] >= 0)
        one_free_b = (pb >= 0) & (src_col[a] >= 0)
        self._rhs_row = np.r_[pa[one_free_a], pb[one_free_b]]
        self._rhs_col = np.r_[src_col[b[one_free_a]], src_col[a[one_free_b]]]
        self._rhs_edge = np.r_[edge_ids[one_free_a], edge_ids[one_free_b]]
        self._factor: object | None = None
        self._state: StateBasis | None = None

    # -- assembly ------------------------------------------------------------

    def upper_laplacian(self, conductances: np.ndarray) -> sp.csc_matrix:
        """Upper triangle of L_FF(g) in its fixed CSC pattern."""
        data = np.bincount(
            self._entry_slot, weights=conductances[self._entry_edge] * self._entry_sign,
            minlength=self._nnz,
        )
        nf = self.n_free
        return sp.csc_matrix((data, self._indices, self._indptr), shape=(nf, nf))

    def _factorize(self, conductances: np.ndarray) -> None:
        upper = self.upper_laplacian(conductances)
        if self.solver_name == "qdldl":
            if self._factor is None:
                self._factor = _qdldl.Solver(upper, upper=True)
            else:
                self._factor.update(upper, upper=True)  # type: ignore[attr-defined]
        else:
            full = (upper + sp.triu(upper, k=1, format="csc").T).tocsc()
            self._factor = spla.splu(
                full, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                options={"SymmetricMode": True},
            )

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        if self.solver_name == "qdldl":
            out = np.empty_like(rhs)
            for col in range(rhs.shape[1]):
                out[:, col] = self._factor.solve(rhs[:, col])  # type: ignore[attr-defined]
            return out
        return self._factor.solve(rhs)  # type: ignore[attr-defined]

    # -- states --------------------------------------------------------------

    def update(self, conductances: np.ndarray) -> StateBasis:
        """Refactorize for new conductances (S, shape (m,)) and return the state basis."""
        g = np.asarray(conductances, dtype=float)
        if g.shape != (self.network.n_edges,):
            raise ValueError(f"conductances must have shape ({self.network.n_edges},), got {g.shape}")
        if not np.all(np.isfinite(g)) or np.any(g <= 0):
            bad = np.flatnonzero(~(np.isfinite(g) & (g > 0)))
            raise NetworkError(
                f"edge conductances must be finite and > 0 S; edges {bad[:5].tolist()} are not"
            )
        self._factorize(g)
        ns, k, nf = self.sources.size, self.clamps.size, self.n_free
        rhs = np.zeros((nf, ns + k), order="F")
        if ns:
            np.add.at(rhs, (self._rhs_row, self._rhs_col), g[self._rhs_edge])
        if k:
            rhs[self._position[self.clamps], ns + np.arange(k)] = 1.0
        free_part = self._solve(rhs)
        if not np.all(np.isfinite(free_part)):
            raise NetworkError("the network's Laplacian is singular: a part of it floats")
        basis = np.zeros((self.network.n_nodes, ns + k), order="F")
        basis[self.free] = free_part
        if ns:
            basis[self.sources, np.arange(ns)] = 1.0
        factor = None
        if k:
            z_cc = basis[self.clamps, ns:]
            try:
                factor = scipy.linalg.cho_factor(0.5 * (z_cc + z_cc.T))
            except np.linalg.LinAlgError:
                raise NetworkError("clamped nodes are not independent (Z_CC is singular)") from None
        self._state = StateBasis(basis=basis, z_cc_factor=factor, n_sources=ns)
        return self._state

    @property
    def state(self) -> StateBasis:
        if self._state is None:
            raise RuntimeError("call update(conductances) first")
        return self._state

    def free_coefficients(self, sources: np.ndarray) -> np.ndarray:
        """(B, n_sources + k) coefficients of the free state on the state basis."""
        ns, k = self.sources.size, self.clamps.size
        return np.hstack([sources, np.zeros((sources.shape[0], k))])

    def clamped_coefficients(self, sources: np.ndarray, clamps: np.ndarray) -> np.ndarray:
        """(B, n_sources + k) coefficients of the clamped state (clamped nodes at ``clamps``)."""
        st = self.state
        free_at_clamps = sources @ st.sources[self.clamps].T
        return np.hstack([sources, st.clamp_injections(clamps - free_at_clamps)])

    def solve_dense(self, conductances: np.ndarray, sources: np.ndarray,
                    clamps: np.ndarray | None = None) -> np.ndarray:
        """(B, n) node voltages, for callers that want plain arrays."""
        st = self.update(conductances)
        coeff = (self.free_coefficients(sources) if clamps is None
                 else self.clamped_coefficients(sources, clamps))
        return coeff @ st.basis.T


def _check_anchored(network: Network, fixed: np.ndarray) -> None:
    """Raise NetworkError if a connected part has no source or ground node."""
    count, labels = network.components()
    anchored = np.zeros(count, dtype=bool)
    anchored[labels[fixed]] = True
    if not anchored.all():
        floating = np.flatnonzero(~anchored[labels])
        raise NetworkError(
            f"{count - int(anchored.sum())} part(s) of the network are not connected to any "
            f"source or ground and float (nodes {floating[:8].tolist()}"
            f"{'...' if floating.size > 8 else ''})"
        )
