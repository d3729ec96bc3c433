"""Linear resistor-network physics with a fast sparse solver.

For a network with Dirichlet nodes D (sources and grounds) and free nodes F,
Kirchhoff's law is ``L_FF v_F = -L_FD v_D`` with ``L = B^T diag(g) B``.

The physics is linear, so every free state of a batch is a combination of one
*basis* solution per source (``phi_s``: source s at 1 V, all other Dirichlet
nodes at 0 V), and the clamped state adds one correction per clamped node
(``z_c = L_FF^-1 e_c``, the response to a unit current injected at c): holding
the clamped nodes C at ``v_C`` needs injections ``i = Z_CC^-1 (v_C - v^F_C)``,
where ``Z_CC`` (k x k) is the inverse of the Schur complement of the Laplacian
on C. A batch therefore costs one numeric factorization and one solve with
``n_sources + k`` right-hand sides, whatever its size; no per-sample loop.

The sparsity pattern of ``L_FF`` is fixed by the topology. Its values are
written into that fixed CSC pattern by one sparse matrix-vector product
(``assembly @ g``, built once), the symbolic analysis (fill-reducing ordering,
elimination tree) is done once per network, and only the numeric factorization
is redone when the conductances change. Memory is O(edges + nnz(factor)).

Factorizations (``available_solvers()``, best first; ``auto`` takes the first):

* ``cholmod`` — SuiteSparse CHOLMOD through scikit-sparse (needs Debian's
  ``libsuitesparse-dev``; ``pip install 'clln[cholmod]'``). Simplicial below
  ``SUPERNODAL_FROM`` free nodes, supernodal (BLAS) above.
* ``qdldl`` — QDLDL LDL^T with AMD ordering, a wheel, always installed.
* ``superlu`` — scipy's SuperLU, always available.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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

try:  # CHOLMOD (SuiteSparse) via scikit-sparse; needs the system library.
    import sksparse.cholmod as _cholmod
except ImportError:  # pragma: no cover - exercised only where CHOLMOD is missing
    _cholmod = None

SolverName = Literal["auto", "cholmod", "qdldl", "superlu"]
SOLVERS = ("cholmod", "qdldl", "superlu")

#: Free-node count from which CHOLMOD's supernodal factorization beats the simplicial
#: one here (measured: simplicial 75 vs supernodal 100 ms at 1e5 nodes, 3.6 vs 1.5 s
#: at 1e6).
SUPERNODAL_FROM = 200_000


def available_solvers() -> list[str]:
    """Sparse factorizations usable here, best first."""
    found = {"cholmod": _cholmod is not None, "qdldl": _qdldl is not None, "superlu": True}
    return [name for name in SOLVERS if found[name]]


# -- factorizations: one small class per library, same three members -------------


class _Cholmod:
    """CHOLMOD LL^T; reads the lower triangle. Symbolic analysis on the first call."""

    triangle = "lower"

    def __init__(self, n: int) -> None:
        self.mode = "supernodal" if n >= SUPERNODAL_FROM else "simplicial"
        self._factor: Any = None  # the library's factor object

    def factorize(self, matrix: sp.csc_matrix) -> None:
        try:
            if self._factor is None:
                self._factor = _cholmod.analyze(matrix, mode=self.mode)
            self._factor.cholesky_inplace(matrix)
        except _cholmod.CholmodError as exc:
            raise NetworkError(f"the network's Laplacian cannot be factorized ({exc})") from None

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        return np.asfortranarray(self._factor(rhs))


class _Qdldl:
    """QDLDL LDL^T; reads the upper triangle. Solves one column at a time."""

    triangle = "upper"

    def __init__(self, n: int) -> None:
        self._factor: Any = None  # the library's factor object

    def factorize(self, matrix: sp.csc_matrix) -> None:
        if self._factor is None:
            self._factor = _qdldl.Solver(matrix, upper=True)
        else:
            self._factor.update(matrix, upper=True)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        out = np.empty_like(rhs, order="F")
        for col in range(rhs.shape[1]):
            out[:, col] = self._factor.solve(rhs[:, col])
        return out


class _SuperLU:
    """scipy's SuperLU on the full matrix, with the settings that suit an SPD matrix."""

    triangle = "full"

    def __init__(self, n: int) -> None:
        self._factor: spla.SuperLU | None = None

    def factorize(self, matrix: sp.csc_matrix) -> None:
        try:
            self._factor = spla.splu(
                matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                options={"SymmetricMode": True},
            )
        except RuntimeError as exc:  # "Factor is exactly singular"
            raise NetworkError(f"the network's Laplacian cannot be factorized ({exc})") from None

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        assert self._factor is not None
        return np.asfortranarray(self._factor.solve(rhs))


_FACTORIZATIONS: dict[str, type[_Cholmod | _Qdldl | _SuperLU]] = {
    "cholmod": _Cholmod, "qdldl": _Qdldl, "superlu": _SuperLU}


@dataclass(frozen=True, eq=False)
class StateBasis:
    """Node-voltage basis of one conductance state.

    Attributes
    ----------
    basis : (n, n_sources + k) C-ordered (gathers over edges read whole rows), read-only;
        the first n_sources columns are the source responses phi_s (volts per volt),
        the last k the clamp responses z_c (volts per ampere).
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
    solver : ``auto`` (the first of :func:`available_solvers`), ``cholmod``, ``qdldl``
        or ``superlu``.
    """

    def __init__(self, network: Network, solver: SolverName = "auto") -> None:
        self.network = network
        n = network.n_nodes
        self.sources, self.grounds, self.clamps = boundary_nodes(network)
        fixed = np.r_[self.sources, self.grounds]
        if solver == "auto":
            solver = available_solvers()[0]  # type: ignore[assignment]
        if solver not in SOLVERS:
            raise NetworkError(f"unknown solver {solver!r}; allowed: auto, {', '.join(SOLVERS)}")
        if solver not in available_solvers():
            hint = {"cholmod": "apt-get install libsuitesparse-dev && pip install 'clln[cholmod]'",
                    "qdldl": "pip install qdldl"}[solver]
            raise NetworkError(f"solver {solver!r} is not installed ({hint})")
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
        self._factorization = _FACTORIZATIONS[solver](nf)
        self._pattern = _LaplacianPattern(network.edges, position, nf,
                                          self._factorization.triangle)

        # Right-hand sides of the source columns: -L_FD e_s, from edges joining a free
        # node to a source.
        a, b = network.edges[:, 0], network.edges[:, 1]
        pa, pb = position[a], position[b]
        edge_ids = np.arange(network.n_edges)
        src_col = np.full(n, -1, dtype=np.int64)
        src_col[self.sources] = np.arange(self.sources.size)
        one_free_a = (pa >= 0) & (src_col[b] >= 0)
        one_free_b = (pb >= 0) & (src_col[a] >= 0)
        self._rhs_row = np.r_[pa[one_free_a], pb[one_free_b]]
        self._rhs_col = np.r_[src_col[b[one_free_a]], src_col[a[one_free_b]]]
        self._rhs_edge = np.r_[edge_ids[one_free_a], edge_ids[one_free_b]]
        self._state: StateBasis | None = None

    @property
    def factorization(self) -> _Cholmod | _Qdldl | _SuperLU:
        """The numeric factorization: ``factorize(laplacian_ff(g))`` then ``solve(rhs)``
        with rhs (n_free, r); for benchmarks that time the bare library."""
        return self._factorization

    # -- assembly ------------------------------------------------------------

    def laplacian_ff(self, conductances: np.ndarray) -> sp.csc_matrix:
        """L_FF(g) in the solver's fixed CSC pattern: its upper or lower triangle, or
        all of it (``triangle`` of the factorization)."""
        return self._pattern.matrix(np.asarray(conductances, dtype=float))

    def upper_laplacian(self, conductances: np.ndarray) -> sp.csc_matrix:
        """Upper triangle of L_FF(g), CSC."""
        matrix = self.laplacian_ff(conductances)
        if self._factorization.triangle == "upper":
            return matrix
        return sp.triu(matrix.T if self._factorization.triangle == "lower" else matrix,
                       format="csc")

    # -- states --------------------------------------------------------------

    def update(self, conductances: np.ndarray) -> StateBasis:
        """Refactorize for new conductances (S, shape (m,)) and return the state basis."""
        g = np.asarray(conductances, dtype=float)
        if g.shape != (self.network.n_edges,):
            raise ValueError(f"conductances must have shape ({self.network.n_edges},), got {g.shape}")
        ok = np.isfinite(g) & (g > 0)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise NetworkError(
                f"edge conductances must be finite and > 0 S; edges {bad[:5].tolist()} are not"
            )
        ns, k, nf = self.sources.size, self.clamps.size, self.n_free
        basis = np.zeros((self.network.n_nodes, ns + k))  # C order: a node's row is contiguous
        if nf and ns + k:
            self._factorization.factorize(self._pattern.matrix(g))
            rhs = np.zeros((nf, ns + k), order="F")
            if ns:
                np.add.at(rhs, (self._rhs_row, self._rhs_col), g[self._rhs_edge])
            if k:
                rhs[self._position[self.clamps], ns + np.arange(k)] = 1.0
            free_part = self._factorization.solve(rhs)
            if not np.isfinite(free_part).all():
                raise NetworkError("the network's Laplacian is singular: a part of it floats")
            basis[self.free] = free_part
        if ns:
            basis[self.sources, np.arange(ns)] = 1.0
        basis.flags.writeable = False
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
        k = self.clamps.size
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


class _LaplacianPattern:
    """The fixed CSC pattern of L_FF and the sparse map from conductances to its values.

    ``assembly`` (nnz x m) holds +1 where edge j adds to a diagonal entry and -1 where
    it is an off-diagonal entry, so the values are ``assembly @ g`` (summed in a fixed
    order: deterministic). ``triangle`` is ``upper``, ``lower`` or ``full``.
    """

    def __init__(self, edges: np.ndarray, position: np.ndarray, nf: int, triangle: str) -> None:
        pa, pb = position[edges[:, 0]], position[edges[:, 1]]
        edge_ids = np.arange(edges.shape[0])
        both = (pa >= 0) & (pb >= 0)
        lo, hi = np.minimum(pa, pb)[both], np.maximum(pa, pb)[both]
        off_rows, off_cols = {"upper": (lo, hi), "lower": (hi, lo),
                              "full": (np.r_[lo, hi], np.r_[hi, lo])}[triangle]
        n_off_copies = 2 if triangle == "full" else 1
        rows = np.r_[pa[pa >= 0], pb[pb >= 0], off_rows]
        cols = np.r_[pa[pa >= 0], pb[pb >= 0], off_cols]
        entry_edge = np.r_[edge_ids[pa >= 0], edge_ids[pb >= 0],
                           np.tile(edge_ids[both], n_off_copies)]
        n_diag = int((pa >= 0).sum() + (pb >= 0).sum())
        entry_sign = np.r_[np.ones(n_diag), -np.ones(entry_edge.size - n_diag)]
        keys, slot = np.unique(cols * max(nf, 1) + rows, return_inverse=True)
        self.nnz = keys.size
        col_of, row_of = np.divmod(keys, max(nf, 1))
        self.indices = row_of.astype(np.int32)
        self.indptr = np.searchsorted(col_of, np.arange(nf + 1)).astype(np.int32)
        self.shape = (nf, nf)
        self.assembly = sp.csr_matrix((entry_sign, (slot, entry_edge)),
                                      shape=(self.nnz, edges.shape[0]))
        self.assembly.sum_duplicates()
        self.assembly.sort_indices()

    def matrix(self, conductances: np.ndarray) -> sp.csc_matrix:
        """L_FF(g) in the fixed pattern; a new matrix sharing the pattern arrays."""
        matrix = sp.csc_matrix((self.assembly @ conductances, self.indices, self.indptr),
                               shape=self.shape, copy=False)
        matrix.has_sorted_indices = True
        return matrix


def boundary_nodes(network: Network) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sources, grounds, clamps) node arrays of a network whose every connected part
    reaches a source or ground; NetworkError otherwise."""
    roles = network.roles
    sources = np.asarray(roles.sources, dtype=np.int64)
    grounds = np.asarray(roles.grounds, dtype=np.int64)
    fixed = np.r_[sources, grounds]
    if fixed.size == 0:
        raise NetworkError("the network has no source or ground node: its voltages float")
    _check_anchored(network, fixed)
    return sources, grounds, np.asarray(roles.clamps, dtype=np.int64)


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
