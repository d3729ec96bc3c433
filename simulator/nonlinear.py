"""Kirchhoff's current law on networks of nonlinear edges, by Newton's method.

Unknowns are the voltages of the free nodes F (every node but the sources and
grounds; in a clamped state the clamped nodes are held too). For a batch of B samples
the residual is the current leaving each free node,

    r_b = B^T I(v_b)        (A),   I_j = I(v_a, v_b, V_G,j) of edge j = (a, b),

and its Jacobian J_b = dr_b / dv_F is sparse with the pattern of the network's
Laplacian but not symmetric (dI/dV_a != -dI/dV_b for a transistor). The models of
:mod:`clln.simulator.devices` are monotone, so every J_b is a column-diagonally-dominant
Z-matrix and LU needs no pivoting.

A batch is solved as block-diagonal systems, diag(J_1, ..., J_B), ``blocks_per_lu``
samples per library call (all physics and assembly vectorized over the batch); only the
samples that have not converged take part. The
symbolic work is done once per network: the fill-reducing ordering (minimum degree on
J + J^T) numbers the free nodes, and the CSC pattern of one block and the map from the
edges' derivatives to its entries are fixed; each iteration writes new values into that
pattern (one sparse product) and refactorizes.

Newton's step is limited to ``max_step`` volts and backtracked (halved) while the
residual norm grows. A sample that still fails is retried by source continuation (the
boundary voltages ramped from zero); if that fails too, :class:`ConvergenceError` names
the sample and its residual.

LU libraries (``lu=``): ``superlu`` (scipy, natural order on the pre-ordered matrix,
diagonal pivots) and ``umfpack`` (SuiteSparse UMFPACK through cvxopt, whose symbolic
analysis is kept per block count); see ``benchmarks/nonlinear_speed.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from clln.controller.errors import BenchFault, NetworkError, ProtocolError
from clln.controller.network import Network
from clln.simulator.devices import EdgeModel
from clln.simulator.physics import boundary_nodes

try:  # UMFPACK through cvxopt: symbolic analysis and numeric factorization kept apart
    import cvxopt as _cvxopt
    import cvxopt.umfpack as _umfpack
except ImportError:  # pragma: no cover - exercised only where cvxopt is missing
    _cvxopt = None
    _umfpack = None

LuName = Literal["superlu", "umfpack"]
LinearName = Literal["auto", "lu", "krylov"]


class ConvergenceError(BenchFault):
    """Newton's method did not converge for a sample (a fault of the simulated bench
    mid-run: the run pauses and stays resumable)."""

    def __init__(self, message: str, sample: int, residual: float) -> None:
        super().__init__(message)
        self.sample = sample
        self.residual = residual


def available_lu() -> list[str]:
    """LU libraries usable here, the default first."""
    return ["superlu"] + (["umfpack"] if _umfpack is not None else [])


@dataclass(frozen=True, eq=False)
class NewtonResult:
    """Solved node voltages of a batch.

    Attributes
    ----------
    voltages : (B, n) node voltages, V.
    iterations : (B,) Newton iterations (LU solves) each sample needed.
    residual : (B,) final max |KCL residual| at the free nodes, A.
    """

    voltages: np.ndarray
    iterations: np.ndarray
    residual: np.ndarray


class _SuperLUBlocks:
    """SuperLU on a pre-ordered matrix: natural order, diagonal pivots (no search)."""

    def factorize(self, matrix: sp.csc_matrix, key: int) -> spla.SuperLU:
        try:
            return spla.splu(matrix, permc_spec="NATURAL", diag_pivot_thresh=0.0,
                             options={"SymmetricMode": True})
        except RuntimeError as exc:
            raise NetworkError(f"the network's Jacobian cannot be factorized ({exc})") from None

    def solve(self, handle: spla.SuperLU, rhs: np.ndarray) -> np.ndarray:
        return handle.solve(rhs)


class _UmfpackBlocks:
    """UMFPACK through cvxopt; one symbolic analysis per block count, kept."""

    def __init__(self) -> None:
        self._symbolic: dict[int, object] = {}

    def factorize(self, matrix: sp.csc_matrix, key: int) -> tuple[object, object]:
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

    def solve(self, handle: tuple[object, object], rhs: np.ndarray) -> np.ndarray:
        x = _cvxopt.matrix(np.ascontiguousarray(rhs, dtype=float))
        _umfpack.solve(handle[0], handle[1], x)
        return np.array(x).ravel()


class NonlinearNetworkSolver:
    """Solves Kirchhoff's law of one network of nonlinear edges for batches of samples.

    Parameters
    ----------
    network : topology with roles (sources, grounds, clamps).
    model : the edge device (:mod:`clln.simulator.devices`).
    lu : LU library, ``superlu`` or ``umfpack``.
    tol : convergence: the last Newton step moved no node by more than ``tol`` volts.
    max_iter : Newton iterations before continuation is tried.
    max_step : largest change of any node voltage in one Newton step, V.
    fixed_conductance : optional (m,) conductance (S) in parallel with each edge (e.g.
        fixed resistors: an edge whose device never conducts plus this).
    device_mask : optional (m,) bool, False for edges without a device (pure resistors
        of ``fixed_conductance``).
    blocks_per_lu : samples per block-diagonal LU (None: the whole batch in one). SuperLU's
        time grows faster than the block count (measured at 1,778 nodes: 1.3 ms for one
        block, 2.7 ms for 2, 10 ms for 5, 50 ms for 10), so small groups are faster;
        see ``benchmarks/nonlinear_speed.py``.
    chord_ratio : a sample keeps its factors while each Newton step is at most this
        fraction of the previous one (0, the default: refactorize every iteration, plain
        Newton). Measured in training at 2e4 edges, chord steps (0.05) needed 5-7
        iterations instead of 3-4 and saved little LU time.
    linear : how each Newton step's linear systems are solved. ``lu``: every sample's
        Jacobian factorized (``blocks_per_lu``, ``chord_ratio``). ``krylov``: one LU shared
        by the batch (the mean of the samples' Jacobians, kept across calls) as the
        preconditioner of GMRES on each sample's own Jacobian, run for all samples at
        once; refactorized when GMRES needs more than ``refactor_iterations`` iterations.
        Samples it does not converge fall back to ``lu``. ``auto``: ``krylov`` from
        ``krylov_min_nodes`` free nodes on, ``lu`` below (where one LU costs little).
    krylov_rtol : GMRES stops when each sample's linear residual is below this fraction
        of its Newton residual (an inexact Newton step; convergence is still judged by
        ``tol`` on the step).
    krylov_max_iter : GMRES iterations per Newton step at most.
    """

    def __init__(self, network: Network, model: EdgeModel, *, lu: LuName = "superlu",
                 tol: float = 1e-10, max_iter: int = 40, max_step: float = 0.5,
                 fixed_conductance: np.ndarray | None = None, device_mask: np.ndarray | None = None,
                 blocks_per_lu: int | None = 1,
                 chord_ratio: float = 0.0, linear: LinearName = "auto",
                 krylov_min_nodes: int = 1000, krylov_rtol: float = 1e-5,
                 krylov_max_iter: int = 30, refactor_iterations: int = 12) -> None:
        if lu not in available_lu():
            raise NetworkError(f"LU library {lu!r} is not available; allowed: {', '.join(available_lu())}")
        self.network = network
        self.model = model
        self.tol = tol
        self.max_iter = max_iter
        self.max_step = max_step
        self.lu_name = lu
        self.blocks_per_lu = blocks_per_lu
        self.chord_ratio = chord_ratio
        if linear not in ("auto", "lu", "krylov"):
            raise NetworkError(f"linear solver {linear!r} unknown; allowed: auto, lu, krylov")
        self.linear = linear
        self.krylov_min_nodes = krylov_min_nodes
        self.krylov_rtol = krylov_rtol
        self.krylov_max_iter = krylov_max_iter
        self.refactor_iterations = refactor_iterations
        self._shared: dict[bool, object] = {}  # shared preconditioner per clamped flag
        self._shared_stale: dict[bool, bool] = {}
        self.krylov_iterations = 0  # GMRES iterations (preconditioner solves), all samples
        self.refactorizations = 0  # shared LUs computed
        self._lu = _SuperLUBlocks() if lu == "superlu" else _UmfpackBlocks()
        n, m = network.n_nodes, network.n_edges
        self.sources, self.grounds, self.clamps = boundary_nodes(network)
        fixed = np.r_[self.sources, self.grounds]
        self.fixed_conductance = (np.zeros(m) if fixed_conductance is None
                                  else np.asarray(fixed_conductance, dtype=float))
        self.device_mask = None if device_mask is None else np.asarray(device_mask, dtype=bool)
        self._devices = None if device_mask is None else np.flatnonzero(self.device_mask)
        is_free = np.ones(n, dtype=bool)
        is_free[fixed] = False
        free = np.flatnonzero(is_free)
        self.n_free = nf = free.size
        a, b = network.edges[:, 0], network.edges[:, 1]
        self._a, self._b = a, b
        self.incidence_t = network.incidence.T.tocsr()  # (n, m): r = B^T I
        order = _fill_reducing_order(a, b, free, n)
        position = np.full(n, -1, dtype=np.int64)
        position[free[order]] = np.arange(nf)
        self.position = position
        self.free_nodes = np.empty(nf, dtype=np.int64)  # free node at each unknown
        self.free_nodes[position[free]] = free
        self._pattern = _JacobianPattern(a, b, position, nf, m)
        if self.clamps.size and np.any(position[self.clamps] < 0):
            raise NetworkError("a clamped node is also a source or ground")
        clamp_pos = position[self.clamps]
        pat = self._pattern
        self._clamp_entries = np.isin(pat.row, clamp_pos) | np.isin(pat.col, clamp_pos)
        self._clamp_diag = pat.diag_slot[clamp_pos] if clamp_pos.size else np.zeros(0, np.int64)
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.lu_seconds = 0.0  # CPU seconds in the linear algebra: LUs, solves, GMRES
        self.lu_calls = 0

    # -- physics -------------------------------------------------------------

    def edge_state(self, voltages: np.ndarray, gates: np.ndarray):  # noqa: ANN201
        """Edge currents and derivatives (:class:`~clln.simulator.devices.EdgeCurrents`)
        for node voltages (B, n) and gate voltages (m,)."""
        va = voltages[:, self._a]
        vb = voltages[:, self._b]
        if self.device_mask is None:
            out = self.model.currents(va, vb, gates[None, :])
        else:  # the model sees its device edges only (per-device parameters line up)
            dev = self._devices
            part = self.model.currents(va[:, dev], vb[:, dev], gates[None, dev])
            full = [np.zeros_like(va) for _ in range(4)]
            for arr, got in zip(full, (part.current, part.d_va, part.d_vb, part.d_vg)):
                arr[:, dev] = got
            out = type(part)(*full)
        if np.any(self.fixed_conductance):
            g = self.fixed_conductance
            out = type(out)(out.current + g * (va - vb), out.d_va + g, out.d_vb - g, out.d_vg)
        return out

    def residual(self, voltages: np.ndarray, gates: np.ndarray) -> np.ndarray:
        """(B, n) current leaving each node through its edges, A (nonzero at driven nodes)."""
        current = self.edge_state(voltages, gates).current
        return np.asarray((self.incidence_t @ current.T).T)

    def jacobian(self, voltages: np.ndarray, gates: np.ndarray, *, clamped: bool = False) -> list[sp.csc_matrix]:
        """d r_F / d v_F of each sample, in the solver's node order (``free_nodes``)."""
        values = self._values(self.edge_state(voltages, gates), clamped)
        pat = self._pattern
        return [sp.csc_matrix((row, pat.indices, pat.indptr), shape=(self.n_free,) * 2)
                for row in values]

    def _values(self, state, clamped: bool) -> np.ndarray:  # noqa: ANN001
        derivs = np.hstack([state.d_va, state.d_vb])  # (B, 2m)
        values = np.asarray((self._pattern.assembly @ derivs.T).T)  # (B, nnz)
        if clamped and self.clamps.size:
            values[:, self._clamp_entries] = 0.0
            values[:, self._clamp_diag] = 1.0
        return np.ascontiguousarray(values)

    def _block_pattern(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        found = self._blocks.get(count)
        if found is None:
            pat = self._pattern
            offsets = np.arange(count, dtype=np.int64)
            indices = (pat.indices[None, :] + offsets[:, None] * self.n_free).ravel()
            indptr = np.r_[(pat.indptr[None, :-1] + offsets[:, None] * pat.nnz).ravel(),
                           count * pat.nnz]
            if len(self._blocks) > 16:
                self._blocks.clear()
            found = self._blocks[count] = (indices.astype(np.int32), indptr.astype(np.int32))
        return found

    # -- Newton --------------------------------------------------------------

    def solve(self, gates: np.ndarray, sources: np.ndarray, clamps: np.ndarray | None = None,
              start: np.ndarray | None = None) -> NewtonResult:
        """Node voltages (B, n) of a batch.

        Parameters
        ----------
        gates : (m,) gate voltages, V.
        sources : (B, n_sources) volts at the source nodes (grounds at 0 V).
        clamps : optional (B, n_clamps) volts at the clamped nodes.
        start : optional (B, n) initial guess (a warm start); boundary values replaced.
        """
        gates = np.asarray(gates, dtype=float)
        sources = np.atleast_2d(np.asarray(sources, dtype=float))
        count = sources.shape[0]
        v = self._initial(sources, clamps, start)
        iterations = np.zeros(count, dtype=np.int64)
        if self._use_krylov():
            done, res = self._newton_krylov(v, gates, clamps is not None, iterations)
            retry = np.flatnonzero(~done)
            if retry.size:  # per-sample LUs where the shared preconditioner did not do
                part = v[retry]
                it = np.zeros(retry.size, dtype=np.int64)
                done[retry], res[retry] = self._newton(part, gates, clamps is not None, it)
                v[retry] = part
                iterations[retry] += it
        else:
            done, res = self._newton(v, gates, clamps is not None, iterations)
        failed = np.flatnonzero(~done)
        if failed.size:  # source continuation from 0 V for the samples that failed
            cold = self._initial(sources[failed] * 0.0,
                                 None if clamps is None else clamps[failed] * 0.0, None)
            ok = np.ones(failed.size, dtype=bool)
            for scale in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0):
                self._set_boundary(cold, sources[failed] * scale,
                                   None if clamps is None else clamps[failed] * scale)
                it = np.zeros(failed.size, dtype=np.int64)
                ok_now, res_f = self._newton(cold, gates, clamps is not None, it)
                iterations[failed] += it
                ok &= ok_now
            v[failed] = cold
            res[failed] = res_f
            if not ok.all():
                worst = failed[int(np.argmin(ok))]
                raise ConvergenceError(
                    f"Newton's method did not converge for sample {int(worst)} of the batch "
                    f"(residual {res[worst]:.3g} A after {int(iterations[worst])} iterations)",
                    int(worst), float(res[worst]))
        return NewtonResult(v, iterations, res)

    def _initial(self, sources: np.ndarray, clamps: np.ndarray | None,
                 start: np.ndarray | None) -> np.ndarray:
        count = sources.shape[0]
        if start is not None:
            v = np.array(start, dtype=float, copy=True).reshape(count, self.network.n_nodes)
        else:  # every free node at the mean source voltage
            v = np.repeat(sources.mean(axis=1, keepdims=True) if sources.size else
                          np.zeros((count, 1)), self.network.n_nodes, axis=1)
        self._set_boundary(v, sources, clamps)
        return v

    def _set_boundary(self, v: np.ndarray, sources: np.ndarray, clamps: np.ndarray | None) -> None:
        v[:, self.sources] = sources
        v[:, self.grounds] = 0.0
        if clamps is not None:
            v[:, self.clamps] = clamps

    def _free_residual(self, v: np.ndarray, gates: np.ndarray, clamped: bool) -> np.ndarray:
        return self._free_residual_state(v, gates, clamped)[0]

    def _newton(self, v: np.ndarray, gates: np.ndarray, clamped: bool,
                iterations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Newton on every sample of v (updated in place); (converged, residual) per sample.

        A sample's Jacobian is refactorized on its first iteration and whenever its last
        step shrank by less than ``chord_ratio``; otherwise the step reuses the factors
        (a chord step: one triangular solve). From a warm start the steps shrink by
        orders of magnitude each, so one factorization per solve usually suffices.
        """
        count = v.shape[0]
        done = np.zeros(count, dtype=bool)
        nf = self.n_free
        residual = np.zeros(count)
        if nf == 0:
            return np.ones(count, dtype=bool), residual
        r_all = self._free_residual(v, gates, clamped)
        chunk_of = np.full(count, -1, dtype=np.int64)  # factor chunk of each sample
        chunks: list[tuple[np.ndarray, object]] = []
        last = np.full(count, np.inf)
        stale = np.ones(count, dtype=bool)
        for _ in range(self.max_iter):
            act = np.flatnonzero(~done)
            if act.size == 0:
                break
            refresh = act[stale[act]]
            if refresh.size:
                state = self.edge_state(v[refresh], gates)
                self._factorize(refresh, self._values(state, clamped), chunk_of, chunks)
            step = self._solve(act, r_all[act], chunk_of, chunks)
            iterations[act] += 1
            if not np.isfinite(step).all():
                raise NetworkError("the network's Jacobian is singular: a part of it floats")
            size, scale, norm, _state = self._line_search(v, act, step, r_all, gates, clamped)
            converged = size <= self.tol
            residual[act] = norm
            done[act] = converged
            limit = self.chord_ratio * np.where(np.isfinite(last[act]), last[act], 1e300)
            stale[act] = (self.chord_ratio <= 0) | (size > limit) | (scale < 1.0)
            last[act] = size
        return done, residual

    # -- Newton-Krylov with one shared factorization ---------------------------

    def _use_krylov(self) -> bool:
        return self.linear == "krylov" or (self.linear == "auto" and self.n_free >= self.krylov_min_nodes)

    def _newton_krylov(self, v: np.ndarray, gates: np.ndarray, clamped: bool,
                       iterations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inexact Newton on every sample of v (updated in place): each step solves the
        sample's own J_b s = -r_b by GMRES, all samples together, preconditioned by one LU
        shared by the batch; (converged, residual) per sample.

        The shared LU is the mean of the active samples' Jacobians. It is kept from call
        to call (gates and operating points move little between training steps) and
        recomputed only when GMRES needs more than ``refactor_iterations`` iterations.
        A sample whose preconditioned residual M^-1 r is below ``tol`` / 10 takes that as
        its last step without GMRES (|J^-1 r| <= 10 |M^-1 r| while M^-1 J is within 0.9 of
        the identity, which GMRES' few iterations show), so convergence is still judged
        at ``tol`` on the step. The device state of the accepted line-search point is
        kept for the next iteration's Jacobian.
        """
        count = v.shape[0]
        done = np.zeros(count, dtype=bool)
        residual = np.zeros(count)
        if self.n_free == 0:
            return np.ones(count, dtype=bool), residual
        free = self.free_nodes
        r_all, state = self._free_residual_state(v, gates, clamped)
        d_va, d_vb = np.array(state.d_va), np.array(state.d_vb)  # of every sample, kept
        for _ in range(self.max_iter):
            act = np.flatnonzero(~done)
            if act.size == 0:
                break
            values = self._values(_Derivatives(d_va[act], d_vb[act]), clamped)
            if self._shared.get(clamped) is None or self._shared_stale.get(clamped, True):
                self._shared_factor(values.mean(axis=0), clamped)
            iterations[act] += 1
            started = time.process_time()
            cheap = -self._precondition(r_all[act], clamped)
            self.lu_seconds += time.process_time() - started
            small = np.abs(cheap).max(axis=1) <= 0.1 * self.tol
            if small.any():  # converged: the preconditioned residual is the last step
                last = act[small]
                v[np.ix_(last, free)] += cheap[small]
                residual[last] = np.abs(r_all[last]).max(axis=1)
                done[last] = True
                act, values = act[~small], values[~small]
                if act.size == 0:
                    break
            indices, indptr = self._block_pattern(act.size)
            jacobians = sp.csc_matrix((values.ravel(), indices, indptr), shape=(act.size * self.n_free,) * 2)
            step, inner = self._gmres(jacobians, -r_all[act], clamped)
            if inner > self.refactor_iterations:
                self._shared_stale[clamped] = True
            if not np.isfinite(step).all():
                self._shared_stale[clamped] = True
                break  # the per-sample LU path decides (and names a floating part)
            size, _scale, norm, s_new = self._line_search(v, act, step, r_all, gates, clamped)
            converged = size <= self.tol
            d_va[act], d_vb[act] = s_new.d_va, s_new.d_vb
            residual[act] = norm
            done[act] = converged
        return done, residual

    def _free_residual_state(self, v: np.ndarray, gates: np.ndarray, clamped: bool):  # noqa: ANN202
        """(residual at the free nodes (B, n_free), edge state) at node voltages v."""
        state = self.edge_state(v, gates)
        r = np.asarray((self.incidence_t @ state.current.T).T)[:, self.free_nodes]
        if clamped and self.clamps.size:
            r[:, self.position[self.clamps]] = 0.0
        return r, state

    def _shared_factor(self, values: np.ndarray, clamped: bool) -> None:
        """Factorize the Jacobian with entries ``values`` (nnz,) as the shared preconditioner."""
        pat = self._pattern
        matrix = sp.csc_matrix((values, pat.indices, pat.indptr), shape=(self.n_free,) * 2)
        started = time.process_time()
        self._shared[clamped] = self._lu.factorize(matrix, 1)
        self.lu_seconds += time.process_time() - started
        self.lu_calls += 1
        self.refactorizations += 1
        self._shared_stale[clamped] = False

    def _precondition(self, x: np.ndarray, clamped: bool) -> np.ndarray:
        """M^-1 x of each row with the shared LU (one single right-hand side per call:
        SuperLU's multi-column solve measured slower than the loop)."""
        handle = self._shared[clamped]
        return np.stack([self._lu.solve(handle, row) for row in x])

    def _gmres(self, jacobians: sp.csc_matrix, rhs: np.ndarray, clamped: bool) -> tuple[np.ndarray, int]:
        """Right-preconditioned GMRES for J_b s_b = rhs_b, every sample b at once (one
        Arnoldi basis per sample, vectorized over samples; zero initial guess; the J_b are
        the blocks of ``jacobians``, block-diagonal). Stops when
        every sample's linear residual is at most ``krylov_rtol`` of |rhs_b|, or after
        ``krylov_max_iter`` iterations; returns (s, iterations)."""
        started = time.process_time()
        k, nf = rhs.shape
        beta = np.linalg.norm(rhs, axis=1)
        safe = np.where(beta > 0, beta, 1.0)
        limit = self.krylov_max_iter
        basis = np.empty((limit + 1, k, nf))
        precond = np.empty((limit, k, nf))
        hess = np.zeros((k, limit + 1, limit))
        basis[0] = rhs / safe[:, None]
        target = np.zeros((k, limit + 1))
        target[:, 0] = beta
        coeffs = np.zeros((k, 0))
        used = 0
        for j in range(limit):
            precond[j] = self._precondition(basis[j], clamped)
            w = (jacobians @ precond[j].ravel()).reshape(k, nf)
            for i in range(j + 1):  # modified Gram-Schmidt, per sample
                h = np.einsum("kn,kn->k", w, basis[i])
                hess[:, i, j] = h
                w -= h[:, None] * basis[i]
            hn = np.linalg.norm(w, axis=1)
            hess[:, j + 1, j] = hn
            basis[j + 1] = w / np.where(hn > 0, hn, 1.0)[:, None]
            used = j + 1
            h = hess[:, :j + 2, :j + 1]
            coeffs = np.einsum("kij,kj->ki", np.linalg.pinv(h), target[:, :j + 2])
            linear_res = np.linalg.norm(target[:, :j + 2] - np.einsum("kij,kj->ki", h, coeffs), axis=1)
            if np.all(linear_res <= self.krylov_rtol * beta):
                break
        step = np.einsum("kj,jkn->kn", coeffs, precond[:used])
        self.krylov_iterations += used * k
        self.lu_seconds += time.process_time() - started
        return step, used

    def _line_search(self, v: np.ndarray, act: np.ndarray, step: np.ndarray, r_all: np.ndarray,
                     gates: np.ndarray, clamped: bool):  # noqa: ANN202
        """Move samples ``act`` of v (in place) along their Newton ``step`` (k, n_free):
        limited to ``max_step`` volts and halved while the residual norm grows. Updates
        their rows of ``r_all``; returns (step size, scale taken, residual norm, edge
        state at the new point)."""
        free = self.free_nodes
        size = np.abs(step).max(axis=1)
        converged = size <= self.tol
        scale = np.minimum(1.0, self.max_step / np.maximum(size, 1e-300))
        norm0 = np.abs(r_all[act]).max(axis=1)
        va = v[act]
        trial = va.copy()
        for _halving in range(12):  # backtrack where the residual grows
            trial[:, free] = va[:, free] + scale[:, None] * step
            r_new, state = self._free_residual_state(trial, gates, clamped)
            norm = np.abs(r_new).max(axis=1)
            worse = (norm > norm0 * (1.0 + 1e-9)) & ~converged & (norm > 1e-14)
            if not worse.any():
                break
            scale = np.where(worse, 0.5 * scale, scale)
        v[act] = trial
        r_all[act] = r_new
        return size, scale, norm, state

    def _factorize(self, samples: np.ndarray, values: np.ndarray, chunk_of: np.ndarray,
                   chunks: list[tuple[np.ndarray, object]]) -> None:
        """Factorize the Jacobians (values (k, nnz)) of ``samples``, ``blocks_per_lu``
        samples per block-diagonal system; record each sample's factor chunk."""
        count, nf = samples.size, self.n_free
        size = count if self.blocks_per_lu is None else max(1, self.blocks_per_lu)
        for lo in range(0, count, size):
            hi = min(count, lo + size)
            indices, indptr = self._block_pattern(hi - lo)
            matrix = sp.csc_matrix((values[lo:hi].ravel(), indices, indptr), shape=((hi - lo) * nf,) * 2)
            started = time.process_time()
            handle = self._lu.factorize(matrix, hi - lo)
            self.lu_seconds += time.process_time() - started
            self.lu_calls += 1
            chunk_of[samples[lo:hi]] = len(chunks)
            chunks.append((samples[lo:hi], handle))

    def _solve(self, samples: np.ndarray, residual: np.ndarray, chunk_of: np.ndarray,
               chunks: list[tuple[np.ndarray, object]]) -> np.ndarray:
        """-J^-1 r (k, n_free) for ``samples`` with their current factors."""
        nf = self.n_free
        step = np.empty_like(residual)
        row_of = {int(s): k for k, s in enumerate(samples)}
        started = time.process_time()
        for c in np.unique(chunk_of[samples]):
            members, handle = chunks[c]
            rhs = np.zeros((members.size, nf))
            wanted = [k for k, s in enumerate(members) if int(s) in row_of]
            rhs[wanted] = residual[[row_of[int(members[k])] for k in wanted]]
            out = self._lu.solve(handle, rhs.ravel()).reshape(members.size, nf)
            step[[row_of[int(members[k])] for k in wanted]] = -out[wanted]
        self.lu_seconds += time.process_time() - started
        return step


def with_resistors(network: Network, resistors: list[tuple[int, int, float]]
                    ) -> tuple[Network, np.ndarray | None, np.ndarray | None]:
    """The physics network: the transistor edges, then one edge per fixed resistor;
    its fixed conductances (S) and device mask (None without resistors)."""
    if not resistors:
        return network, None, None
    n, m = network.n_nodes, network.n_edges
    extra = np.array([(a, b) for a, b, _ in resistors], dtype=np.int64)
    if np.any(extra < 0) or np.any(extra >= n) or np.any(extra[:, 0] == extra[:, 1]):
        raise ProtocolError(f"edges.fixed_resistors: each needs two different nodes in 0..{n - 1}, "
                            f"got {extra.tolist()}")
    physics = Network(n, np.vstack([network.edges, extra]), positions=network.positions,
                      roles=network.roles)
    fixed = np.r_[np.zeros(m), [g for _, _, g in resistors]]
    mask = np.r_[np.ones(m, dtype=bool), np.zeros(len(resistors), dtype=bool)]
    return physics, fixed, mask


def _fill_reducing_order(a: np.ndarray, b: np.ndarray, free: np.ndarray, n: int) -> np.ndarray:
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


@dataclass(frozen=True)
class _Derivatives:
    """The edges' dI/dV_a and dI/dV_b (B, m) of some samples, as ``_values`` reads them."""

    d_va: np.ndarray
    d_vb: np.ndarray


class _JacobianPattern:
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
