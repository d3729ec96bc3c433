"""Linear algebra of the Newton solver for nonlinear networks
(:class:`~clln.simulator.nonlinear.NonlinearNetworkSolver`): the LU libraries behind one
interface, the fill-reducing order and the fixed CSC pattern of a network's Jacobian, and
GMRES run for every sample of a batch at once.

LU libraries: ``superlu`` (scipy, natural order on the pre-ordered matrix, diagonal
pivots) and ``umfpack`` (SuiteSparse UMFPACK through cvxopt, whose symbolic analysis is
kept per block count).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from clln.controller.errors import NetworkError

try:  # UMFPACK through cvxopt: symbolic analysis and numeric factorization kept apart
    import cvxopt as _cvxopt
    import cvxopt.umfpack as _umfpack
except ImportError:  # pragma: no cover - exercised only where cvxopt is missing
    _cvxopt = None
    _umfpack = None

LuName = Literal["superlu", "umfpack"]


def available_lu() -> list[str]:
    """LU libraries usable here, the default first."""
    return ["superlu"] + (["umfpack"] if _umfpack is not None else [])


class SuperLUBlocks:
    """SuperLU on a pre-ordered matrix: natural order, diagonal pivots (no search)."""

    def factorize(self, matrix: sp.csc_matrix, key: int, *,
                  single: bool = False) -> spla.SuperLU | SinglePrecisionLU:
        """LU of ``matrix``; ``single``: in single precision, for a preconditioner (its
        solves read half the bytes: measured 15 % faster at 9,000 nodes and 30 % at
        44,000 for ten columns; relative error of a solve ~1e-5)."""
        try:
            if single:
                return SinglePrecisionLU(spla.splu(matrix.astype(np.float32), permc_spec="NATURAL",
                                                   diag_pivot_thresh=0.0, options={"SymmetricMode": True}))
            return spla.splu(matrix, permc_spec="NATURAL", diag_pivot_thresh=0.0,
                             options={"SymmetricMode": True})
        except RuntimeError as exc:
            raise NetworkError(f"the network's Jacobian cannot be factorized ({exc})") from None

    def solve(self, handle: spla.SuperLU | SinglePrecisionLU, rhs: np.ndarray) -> np.ndarray:
        return handle.solve(rhs)

    def work(self, handle: spla.SuperLU | SinglePrecisionLU) -> tuple[float, float]:
        """(factorization, one-column solve) floating-point operations of ``handle``,
        counted from its factors: sum_k 2 (|L_k| - 1)(|U_k| - 1) + |L_k| - 1 for the
        factorization (|L_k|: entries of column k of L, |U_k|: of row k of U, diagonals
        included), 2 (nnz(L) + nnz(U)) for a solve. Operation counts, not timings, so the
        refactorization schedule they set is the same on every run."""
        lu = handle.lu if isinstance(handle, SinglePrecisionLU) else handle
        lower, upper = lu.L.tocsc(), lu.U.tocsr()
        lk = np.diff(lower.indptr).astype(np.float64) - 1.0
        uk = np.diff(upper.indptr).astype(np.float64) - 1.0
        return float(np.sum(2.0 * lk * uk + lk)), 2.0 * float(lower.nnz + upper.nnz)

    def solve_rows(self, handle: spla.SuperLU | SinglePrecisionLU, rows: np.ndarray) -> np.ndarray:
        """A^-1 of each row of ``rows`` (k, n), in one multi-column solve (measured 2x
        faster than k single solves at 9,000 nodes, k = 10)."""
        return handle.solve(np.asfortranarray(rows.T)).T


class SinglePrecisionLU:
    """A SuperLU factorization in float32 that takes and returns float64 arrays."""

    __slots__ = ("lu",)

    def __init__(self, lu: spla.SuperLU) -> None:
        self.lu = lu

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        return self.lu.solve(np.asarray(rhs, dtype=np.float32, order="F")).astype(np.float64)


class UmfpackBlocks:
    """UMFPACK through cvxopt; one symbolic analysis per block count, kept."""

    def __init__(self) -> None:
        self._symbolic: dict[int, object] = {}

    def factorize(self, matrix: sp.csc_matrix, key: int, *, single: bool = False) -> tuple[object, object]:
        """Numeric LU of ``matrix`` (always double precision: ``single`` is ignored)."""
        n = matrix.shape[0]
        rows = matrix.indices.astype(np.int64)
        cols = np.repeat(np.arange(n, dtype=np.int64), np.diff(matrix.indptr))
        a = _cvxopt.spmatrix(_cvxopt.matrix(matrix.data), _cvxopt.matrix(rows),
                             _cvxopt.matrix(cols), (n, n))
        if key not in self._symbolic:
            if len(self._symbolic) > 16:
                self._symbolic.clear()
            self._symbolic[key] = _umfpack.symbolic(a)
        try:
            return a, _umfpack.numeric(a, self._symbolic[key])
        except ArithmeticError as exc:
            raise NetworkError(f"the network's Jacobian cannot be factorized ({exc})") from None

    def work(self, handle: tuple[object, object]) -> tuple[float, float]:
        """(factorization, one-column solve) operations: UMFPACK through cvxopt does not
        expose its factors, so a fixed ratio (a factorization as 30 solves, about what
        SuperLU's counts give on the Delaunay networks of 2e4 edges) stands in."""
        nnz = float(handle[0].size[0])  # type: ignore[attr-defined]  # cvxopt's spmatrix
        return 30.0 * nnz, nnz

    def solve(self, handle: tuple[object, object], rhs: np.ndarray) -> np.ndarray:
        x = _cvxopt.matrix(np.ascontiguousarray(rhs, dtype=float))
        _umfpack.solve(handle[0], handle[1], x)
        return np.array(x).ravel()

    def solve_rows(self, handle: tuple[object, object], rows: np.ndarray) -> np.ndarray:
        """A^-1 of each row of ``rows`` (k, n)."""
        return np.stack([self.solve(handle, row) for row in rows])


def lu_library(name: LuName) -> SuperLUBlocks | UmfpackBlocks:
    """The LU library ``name`` (one of :func:`available_lu`)."""
    if name not in available_lu():
        raise NetworkError(f"LU library {name!r} is not available; allowed: {', '.join(available_lu())}")
    return SuperLUBlocks() if name == "superlu" else UmfpackBlocks()


def fill_reducing_order(a: np.ndarray, b: np.ndarray, free: np.ndarray, n: int) -> np.ndarray:
    """Order of the free nodes (indices into ``free``) that keeps the LU factors sparse:
    SuperLU's minimum degree on J + J^T of one block, computed once per network."""
    nf = free.size
    if nf < 3:
        return np.arange(nf)
    position = np.full(n, -1, dtype=np.int64)
    position[free] = np.arange(nf)
    pa, pb = position[a], position[b]
    both = (pa >= 0) & (pb >= 0)
    rows = np.r_[pa[both], pb[both], np.arange(nf)]
    cols = np.r_[pb[both], pa[both], np.arange(nf)]
    degree = np.bincount(np.r_[pa[pa >= 0], pb[pb >= 0]], minlength=nf) + 1.0
    vals = np.r_[-np.ones(2 * int(both.sum())), degree]
    lap = sp.csc_matrix((vals, (rows, cols)), shape=(nf, nf))
    lu = spla.splu(lap, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                   options={"SymmetricMode": True})
    order = np.empty(nf, dtype=np.int64)
    order[lu.perm_c] = np.arange(nf)  # column i of the matrix moved to position perm_c[i]
    return order


class JacobianPattern:
    """The CSC pattern of one block of J (free nodes in solver order) and the sparse map
    ``assembly`` (nnz x 2m) from the stacked derivatives [dI/dV_a, dI/dV_b] to its values.

    Edge (a, b) adds +dI/dV_a at (a, a), +dI/dV_b at (a, b), -dI/dV_a at (b, a) and
    -dI/dV_b at (b, b) (row: the node whose current balance, column: the voltage).
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, position: np.ndarray, nf: int, m: int) -> None:
        pa, pb = position[a], position[b]
        edge = np.arange(m)
        # (row, col, derivative column in [d_va | d_vb], sign)
        parts = [(pa, pa, edge, 1.0), (pa, pb, edge + m, 1.0),
                 (pb, pa, edge, -1.0), (pb, pb, edge + m, -1.0)]
        rows, cols, src, sign = [], [], [], []
        for r, c, s, sg in parts:
            keep = (r >= 0) & (c >= 0)
            rows.append(r[keep])
            cols.append(c[keep])
            src.append(s[keep])
            sign.append(np.full(int(keep.sum()), sg))
        rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
        diag = np.arange(nf)  # every free node has a diagonal slot
        keys, slot = np.unique(np.r_[cols_a, diag] * max(nf, 1) + np.r_[rows_a, diag],
                               return_inverse=True)
        self.nnz = keys.size
        col_of, row_of = np.divmod(keys, max(nf, 1))
        self.row, self.col = row_of, col_of
        self.indices = row_of.astype(np.int32)
        self.indptr = np.searchsorted(col_of, np.arange(nf + 1)).astype(np.int32)
        self.diag_slot = slot[rows_a.size:]
        self.assembly = sp.csr_matrix(
            (np.concatenate(sign), (slot[:rows_a.size], np.concatenate(src))), shape=(self.nnz, 2 * m))
        self.assembly.sum_duplicates()
        self.assembly_t = self.assembly.T  # (2m x nnz), CSC: derivatives (B, 2m) @ it


class BlockGmres:
    """Right-preconditioned GMRES for J_b s_b = rhs_b, every sample b of a batch at once
    (one Arnoldi basis per sample, vectorized over samples; zero initial guess).

    Per iteration: one preconditioner call for all samples (``precondition`` maps (k, n)
    rows to M^-1 of each row), one product with the block-diagonal ``jacobians``
    (diag(J_1, ..., J_k)), classical Gram-Schmidt as two batched matrix-vector products
    per sample (not 2 (j + 1) passes of modified Gram-Schmidt), repeated where the
    projection cancelled more than three digits of the new vector (then a single pass
    could leave it non-orthogonal by more than ~1e-13; "twice is enough" after that;
    measured 8 % less linear-algebra time than always twice, at the same iterations),
    and Givens rotations of each
    sample's Hessenberg column, whose last entry of the rotated right-hand side is the
    sample's linear residual norm (no least-squares problem per iteration; one small
    triangular solve at the end). The basis and the rows the loop writes are kept between
    calls (no fresh pages to fault in at every Newton step).
    """

    def __init__(self) -> None:
        self._basis = np.empty((0, 0, 0))
        self._search = np.empty((0, 0, 0))
        self._rows = np.empty((0, 0))

    def _workspace(self, k: int, nf: int, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Basis (k, limit + 1, nf), search directions (limit, k, nf: each iteration's
        rows contiguous, as the block product takes them) and a (k, nf) row buffer for k
        samples (grown, never shrunk: the active samples vary from step to step)."""
        have = self._basis.shape
        if have[0] < k or have[1:] != (limit + 1, nf):
            self._basis = np.empty((max(k, have[0] if have[1:] == (limit + 1, nf) else 0), limit + 1, nf))
            self._search = np.empty((limit, self._basis.shape[0], nf))
            self._rows = np.empty((self._basis.shape[0], nf))
        return self._basis[:k], self._search[:, :k], self._rows[:k]

    def solve(self, jacobians: sp.spmatrix, rhs: np.ndarray,
              precondition: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
              rtol: float | np.ndarray, max_iter: int,
              first: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, iterations (k,), linear residual norms (k,)). A sample stops when its linear
        residual |rhs_b - J_b s_b| is at most ``rtol`` (scalar or (k,)) of |rhs_b| (its
        later iterations cost no preconditioner solve), all stop after ``max_iter``.
        ``precondition(rows, samples)`` returns M_b^-1 of each row for the samples
        (indices into the batch) still iterating. ``first``: M^-1 rhs when the caller has
        it already (saves one preconditioner solve)."""
        k, nf = rhs.shape
        limit = max(1, max_iter)
        basis, search, projection = self._workspace(k, nf, limit)
        beta = np.sqrt(np.einsum("kn,kn->k", rhs, rhs))
        safe = np.where(beta > 0, beta, 1.0)
        np.divide(rhs, safe[:, None], out=basis[:, 0])
        rot_c = np.ones((k, limit))
        rot_s = np.zeros((k, limit))
        tri = np.zeros((k, limit, limit))  # R of the rotated Hessenberg matrices
        g = np.zeros((k, limit + 1))  # rotated beta e_1
        g[:, 0] = beta
        bound = np.broadcast_to(rtol * beta, (k,))
        needed = np.zeros(k, dtype=np.int64)
        reached = np.zeros(k)
        active = np.ones(k, dtype=bool)
        used = 0
        for j in range(limit):
            rows = np.flatnonzero(active)
            current = search[j]
            if j == 0 and first is not None:
                np.divide(first, safe[:, None], out=current)
            elif rows.size == k:
                current[...] = precondition(basis[:, j], rows)
            else:  # stopped samples: a zero direction (their column of R is left alone)
                current[...] = 0.0
                current[rows] = precondition(basis[rows, j], rows)
            w = (jacobians @ current.reshape(-1)).reshape(k, nf)
            done = basis[:, :j + 1]  # (k, j+1, nf)
            h = np.zeros((k, j + 1))
            before = np.einsum("kn,kn->k", w, w)
            for _pass in range(2):  # classical Gram-Schmidt; again where it cancelled 3 digits
                part = np.matmul(done, w[:, :, None])[:, :, 0]
                np.matmul(part[:, None, :], done, out=projection[:, None, :])
                w -= projection
                h += part
                after = np.einsum("kn,kn->k", w, w)
                if np.all(after >= 1e-6 * before):
                    break
                before = after
            hn = np.sqrt(after)
            np.divide(w, np.where(hn > 0, hn, 1.0)[:, None], out=basis[:, j + 1])
            for i in range(j):  # earlier rotations on the new column
                top = rot_c[:, i] * h[:, i] + rot_s[:, i] * h[:, i + 1]
                h[:, i + 1] = rot_c[:, i] * h[:, i + 1] - rot_s[:, i] * h[:, i]
                h[:, i] = top
            diag = np.hypot(h[:, j], hn)
            zero = (diag == 0) | ~active
            rot_c[:, j] = np.where(zero, 1.0, h[:, j] / np.where(zero, 1.0, diag))
            rot_s[:, j] = np.where(zero, 0.0, hn / np.where(zero, 1.0, diag))
            tri[:, :j, j] = np.where(active[:, None], h[:, :j], 0.0)
            tri[:, j, j] = np.where(zero, 1.0, diag)  # breakdown or stopped: g is 0 there
            g[:, j + 1] = np.where(active, -rot_s[:, j] * g[:, j], 0.0)
            g[:, j] = np.where(active, rot_c[:, j] * g[:, j], 0.0)
            used = j + 1
            met = active & (np.abs(g[:, j + 1]) <= bound)
            needed[met], reached[met] = used, np.abs(g[met, j + 1])
            active &= ~met
            if not active.any():
                break
        needed[active], reached[active] = used, np.abs(g[active, used])
        y = np.linalg.solve(tri[:, :used, :used], g[:, :used, None])  # (k, used, 1)
        step = np.einsum("kj,jkn->kn", y[:, :, 0], search[:used])
        return step, needed, reached


def block_gmres(jacobians: sp.spmatrix, rhs: np.ndarray,
                precondition: Callable[[np.ndarray], np.ndarray], *, rtol: float | np.ndarray,
                max_iter: int, first: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """:class:`BlockGmres` once with one preconditioner for every sample and a fresh
    workspace; returns (s, iterations of the slowest sample)."""
    step, needed, _ = BlockGmres().solve(jacobians, rhs, lambda rows, _samples: precondition(rows),
                                         rtol=rtol, max_iter=max_iter, first=first)
    return step, int(needed.max())
