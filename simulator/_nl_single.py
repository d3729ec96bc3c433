"""Compiled Newton-Krylov pieces for ONE sample on a large transistor network: the
shared LU's triangular solves, GMRES and the line search's trial point, each one call.

With one sample per training step (the seed rig's protocol), the batch path of
:meth:`~clln.simulator.nonlinear.NonlinearNetworkSolver._newton_krylov` spends more time
in Python and numpy bookkeeping (about 300 small calls per step, each a few
microseconds: (1, n) arrays gain nothing from vectorization) than in its kernels. Here
a Newton iteration is four compiled calls:

* :func:`lu_solve`: M^-1 b with the factors of the shared (single-precision) SuperLU
  factorization, taken out of SuperLU once per factorization
  (:func:`triangular_factors`): strictly lower L and strictly upper U in CSR, U's
  inverted diagonal, the row and column permutations. Row-oriented substitution with
  two partial sums per row (the dependency chain of one sum is what bounds a sparse
  triangular solve): measured 0.22 ms against SuperLU's 0.33 ms per solve at 8,900
  nodes (factors with 2.0e5 entries), float64 arithmetic on float32 factors;
* :func:`single_jacobian`: the Jacobian's values in its fixed CSC pattern (the batch
  kernel :func:`~clln.simulator._nl_kernels.jacobian_values`, then the clamped rows);
* :func:`gmres`: right-preconditioned GMRES as
  :class:`~clln.simulator.newton_linalg.BlockGmres` runs it for one sample (classical
  Gram-Schmidt, a second pass where the first cancelled more than three digits, Givens
  rotations, the first preconditioned direction given), with the CSC product of the
  Jacobian and :func:`lu_solve` inside;
* :func:`trial_residual`: a point along the Newton step and the device evaluation with
  the residual there (:func:`~clln.simulator._nl_kernels.transistor_residual`).

Like :mod:`~clln.simulator._nl_kernels`, compiled on first use and cached on disk, and
imported only by networks that use the compiled path.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from llvmlite import ir
from numba import njit, objmode, types
from numba.core import cgutils
from numba.extending import intrinsic

from clln.simulator._nl_kernels import (
    extrapolate,
    jacobian_product,
    jacobian_values,
    transistor_residual,
)


def triangular_factors(lu) -> tuple[np.ndarray, ...]:  # noqa: ANN001  # scipy's SuperLU
    """The factors of SuperLU's ``Pr A Pc = L U`` as :func:`lu_solve` reads them:
    (L strictly lower CSR: indptr, indices, data; U strictly upper CSR: indptr, indices,
    data; 1 / diag(U); perm_r; perm_c; a work vector). Data keep the factorization's
    precision."""
    lower, upper = lu.L, lu.U  # CSC
    n = lower.shape[0]
    diag = np.empty(n)
    lp, li, lx = _strict_rows(lower.indptr, lower.indices, lower.data, n, True, diag)
    up, ui, ux = _strict_rows(upper.indptr, upper.indices, upper.data, n, False, diag)
    return (lp, li, lx, up, ui, ux, 1.0 / diag, lu.perm_r.astype(np.int32), lu.perm_c.astype(np.int32),
            np.empty(n))


@njit(cache=True, nogil=True)
def _strict_rows(indptr, indices, data, n, lower, diag):  # noqa: ANN001, ANN202  # pragma: no cover - compiled
    """The strictly lower (``lower``) or strictly upper part of a CSC matrix as CSR
    (indptr, indices in increasing order, data); for the upper part, its diagonal into
    ``diag``."""
    count = np.zeros(n + 1, dtype=np.int32)
    for col in range(n):
        for p in range(indptr[col], indptr[col + 1]):
            row = indices[p]
            if (row > col) if lower else (row < col):
                count[row + 1] += 1
            elif row == col and not lower:
                diag[col] = data[p]
    for i in range(n):
        count[i + 1] += count[i]
    fill = count[:-1].copy()
    out_idx = np.empty(count[n], dtype=np.int32)
    out_val = np.empty(count[n], dtype=data.dtype)
    for col in range(n):
        for p in range(indptr[col], indptr[col + 1]):
            row = indices[p]
            if (row > col) if lower else (row < col):
                out_idx[fill[row]] = col
                out_val[fill[row]] = data[p]
                fill[row] += 1
    return count, out_idx, out_val


@njit(cache=True, nogil=True)
def lu_solve(factors, b, x, sign) -> float:  # noqa: ANN001  # pragma: no cover - compiled
    """x = sign * A^-1 b with A's factors (:func:`triangular_factors`): y = Pr b,
    L U y' = y, x = Pc y' (scipy's SuperLU convention Pr A Pc = L U); returns max |x|."""
    lp, li, lx, up, ui, ux, dinv, perm_r, perm_c, y = factors
    n = b.shape[0]
    for i in range(n):
        y[perm_r[i]] = sign * b[i]
    for part in range(2):  # unit lower L forward, then upper U backward; two partial sums per
        ptr, idx, val = (lp, li, lx) if part == 0 else (up, ui, ux)  # row (the dependency chain
        for t in range(n):  # of one sum is what bounds a sparse triangular solve)
            i = t if part == 0 else n - 1 - t
            acc0 = y[i]
            acc1 = 0.0
            p, end = ptr[i], ptr[i + 1]
            while p + 1 < end:
                acc0 -= val[p] * y[idx[p]]
                acc1 -= val[p + 1] * y[idx[p + 1]]
                p += 2
            if p < end:
                acc0 -= val[p] * y[idx[p]]
            y[i] = acc0 + acc1 if part == 0 else (acc0 + acc1) * dinv[i]
    top = 0.0
    for j in range(n):
        x[j] = y[perm_c[j]]
        if abs(x[j]) > top:
            top = abs(x[j])
    return top


@njit(cache=True, nogil=True)
def single_jacobian(d_va, d_vb, slot_aa, slot_ba, slot_ab, slot_bb, clamp_entries,  # noqa: ANN001
                    clamp_diag, values) -> None:  # pragma: no cover - compiled
    """The Jacobian's values (1, nnz) from the edges' derivatives (1, m); rows and
    columns of clamped nodes replaced by the identity (``clamp_entries`` zeroed, then
    ``clamp_diag`` set to 1; both empty for a free solve)."""
    jacobian_values(d_va, d_vb, slot_aa, slot_ba, slot_ab, slot_bb, values)
    out = values[0]
    for p in clamp_entries:
        out[p] = 0.0
    for p in clamp_diag:
        out[p] = 1.0


@njit(cache=True, nogil=True)
def trial_residual(v, free, base, save_base, step, scale, a, b, gates, v_t, s, join, join2, decade,  # noqa: ANN001
                   ln10_decade, g_off, row_a, row_b, extra, device, fixed_g, clamp_rows,
                   residual, d_va, d_vb) -> float:  # pragma: no cover - compiled
    """Moves sample 0 of v (1, n) to ``base + scale * step`` at the free nodes (``free``:
    node of each solver row; ``save_base``: base taken from v first; ``scale`` 0 leaves
    v as it is), evaluates the devices and
    the residual there (rows of clamped nodes zeroed) into ``residual`` (1, n_free),
    ``d_va``, ``d_vb`` (1, m); returns max |residual|."""
    if scale != 0.0:  # one pass over the free nodes (1.0 * step is step: the same bits)
        row = v[0]
        for i in range(free.shape[0]):
            node = free[i]
            if save_base:
                base[i] = row[node]
            row[node] = base[i] + scale * step[i]
    transistor_residual(v, a, b, gates, v_t, s, join, join2, decade, ln10_decade, g_off,
                        row_a, row_b, extra, device, fixed_g, residual, d_va, d_vb)
    r = residual[0]
    for c in clamp_rows:
        r[c] = 0.0
    norm = 0.0
    for i in range(r.shape[0]):
        x = abs(r[i])
        if x > norm:
            norm = x
    return norm


@njit(cache=True, nogil=True)
def warm_start(out, v1, v0, v2, order, sources, source_values, grounds, clamps,  # noqa: ANN001
               clamp_values) -> None:  # pragma: no cover - compiled
    """A one-sample solve's start (n,) in one pass: ``v1`` (``order`` 0), 2 v1 - v0
    (1) or 3 v1 - 3 v0 + v2 (2) as :func:`~clln.simulator._nl_kernels.extrapolate`
    computes them (the same bits), then the boundary: the sources' and clamps' values
    at their nodes, 0 V at the grounds."""
    if order == 0:
        out[:] = v1
    else:
        extrapolate(v1, v0, v2, order == 2, out)
    for i in range(sources.shape[0]):
        out[sources[i]] = source_values[i]
    for i in range(grounds.shape[0]):
        out[grounds[i]] = 0.0
    for i in range(clamps.shape[0]):
        out[clamps[i]] = clamp_values[i]


@njit(cache=True, nogil=True)
def add_at(v, free, x) -> None:  # noqa: ANN001  # pragma: no cover - compiled
    """v[0, free] += x."""
    row = v[0]
    for i in range(free.shape[0]):
        row[free[i]] += x[i]


@njit(cache=True, nogil=True)
def _dot(x, y) -> float:  # noqa: ANN001  # pragma: no cover - compiled
    total = 0.0
    for i in range(x.shape[0]):
        total += x[i] * y[i]
    return total


@njit(cache=True, nogil=True)
def gmres(d_va, d_vb, row_a, row_b, held, factors, rhs, sign, first, rtol, max_iter,  # noqa: ANN001
          basis, search, product, step) -> tuple[int, float, float]:  # pragma: no cover - compiled
    """Right-preconditioned GMRES for J s = sign * rhs from s = 0, J's products straight
    from the edges' derivatives (``d_va``, ``d_vb`` (1, m); ``row_a``, ``row_b``,
    ``held``: :func:`~clln.simulator._nl_kernels.jacobian_product`'s rows),
    preconditioner M^-1 by :func:`lu_solve` on ``factors``; ``first`` = M^-1 sign rhs
    (the first direction, already computed). Stops when the linear residual is at most
    ``rtol`` |rhs| or after ``max_iter`` iterations. Workspace: ``basis``
    (max_iter + 1, n), ``search`` (max_iter, n), ``product`` (1, n).
    Writes s into ``step``; returns (iterations, linear residual norm, max |s|: NaN if
    s is not finite)."""
    n = rhs.shape[0]
    beta = np.sqrt(_dot(rhs, rhs))
    if beta == 0.0:
        step[:] = 0.0
        return 0, 0.0, 0.0
    for i in range(n):
        basis[0, i] = sign * rhs[i] / beta
    rot_c = np.ones(max_iter)
    rot_s = np.zeros(max_iter)
    tri = np.zeros((max_iter, max_iter))
    g = np.zeros(max_iter + 1)
    g[0] = beta
    h = np.zeros(max_iter + 1)
    part = np.zeros(max_iter + 1)
    w = product[0]
    bound = rtol * beta
    used = 0
    for j in range(max_iter):
        z = search[j]
        if j == 0:
            for i in range(n):
                z[i] = first[i] / beta
        else:
            lu_solve(factors, basis[j], z, 1.0)
        jacobian_product(d_va, d_vb, row_a, row_b, held, search[j:j + 1], product)  # w = J z
        before = _dot(w, w)
        h[:j + 1] = 0.0
        after = before
        for _pass in range(2):  # classical Gram-Schmidt; again where it cancelled 3 digits
            for i in range(j + 1):
                part[i] = _dot(basis[i], w)
            for i in range(j + 1):
                c = part[i]
                q = basis[i]
                for t in range(n):
                    w[t] -= c * q[t]
                h[i] += part[i]
            after = _dot(w, w)
            if after >= 1e-6 * before:
                break
            before = after
        hn = np.sqrt(after)
        scale = 1.0 / hn if hn > 0.0 else 1.0
        nxt = basis[j + 1]
        for i in range(n):
            nxt[i] = w[i] * scale
        for i in range(j):  # earlier rotations on the new column
            top = rot_c[i] * h[i] + rot_s[i] * h[i + 1]
            h[i + 1] = rot_c[i] * h[i + 1] - rot_s[i] * h[i]
            h[i] = top
        diag = np.hypot(h[j], hn)
        if diag == 0.0:  # breakdown: the residual is exact in the space so far
            rot_c[j], rot_s[j] = 1.0, 0.0
            tri[j, j] = 1.0
        else:
            rot_c[j], rot_s[j] = h[j] / diag, hn / diag
            tri[j, j] = diag
        for i in range(j):
            tri[i, j] = h[i]
        g[j + 1] = -rot_s[j] * g[j]
        g[j] = rot_c[j] * g[j]
        used = j + 1
        if abs(g[j + 1]) <= bound:
            break
    y = np.zeros(used)
    for i in range(used - 1, -1, -1):  # R y = g
        acc = g[i]
        for k in range(i + 1, used):
            acc -= tri[i, k] * y[k]
        y[i] = acc / tri[i, i]
    step[:] = 0.0
    for k in range(used):
        yk = y[k]
        z = search[k]
        for i in range(n):
            step[i] += yk * z[i]
    size = 0.0
    for i in range(n):
        x = abs(step[i])
        if not x <= size:  # larger, or NaN
            size = x
            if not np.isfinite(x):
                return used, abs(g[used]), np.nan
    return used, abs(g[used]), size


@njit(cache=True, nogil=True)
def charge(account, mean, count) -> bool:  # noqa: ANN001  # pragma: no cover - compiled
    """The shared LU's rent-or-buy account after a GMRES call of ``count`` samples that
    needed ``mean`` iterations each; True when the LU should be renewed. ``account`` =
    [iterations per sample with a fresh LU, operations owed, operations of one
    factorization, operations of one GMRES iteration of one sample, calls left that set
    the first]. The first calls after a factorization set what a fresh LU needs; then
    the iterations beyond it are charged (signed: calls below it pay back, so noise does
    not add up) until they have cost one factorization."""
    if account[4] > 0:
        account[4] -= 1.0
        account[0] += mean / 2
        return False
    account[1] = max(0.0, account[1] + (mean - account[0]) * count * account[3])
    return account[1] >= account[2]


@njit(cache=True, nogil=True)
def forcing(size, quadratic, tol, krylov_rtol) -> float:  # noqa: ANN001  # pragma: no cover - compiled
    """GMRES' relative tolerance for a Newton step of about ``size`` V (the
    preconditioned residual's max): the error Newton leaves anyway, 0.1 C size^2 (C =
    ``quadratic``, 1/V), or tol / 20, relative to the step; never tighter than
    ``krylov_rtol``, never looser than 1e-2."""
    s = max(size, 1e-300)
    return min(max(max(0.1 * quadratic * s * s, 0.05 * tol) / s, krylov_rtol), 1e-2)


# The process's CPU clock as time.process_time reads it (clock_gettime's
# CLOCK_PROCESS_CPUTIME_ID), called from compiled code by its C name: 0.2 us a call
# against 0.6 us through numba's object mode, which in a training step also pays the
# interpreter's cold caches eight times. Elsewhere, object mode.
_PROCESS_CLOCK = {"linux": 2, "darwin": 12}.get(sys.platform)


@intrinsic
def _clock_ns(typingctx):  # noqa: ANN001, ANN202  # pragma: no cover - compiled
    """clock_gettime(_PROCESS_CLOCK) in nanoseconds (int64)."""

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        i64, i32 = ir.IntType(64), ir.IntType(32)
        spec = ir.LiteralStructType([i64, i64])  # struct timespec on 64-bit Linux and macOS
        out = cgutils.alloca_once(builder, spec)
        call = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32, spec.as_pointer()]),
                                              "clock_gettime")
        builder.call(call, [i32(_PROCESS_CLOCK or 0), out])
        seconds = builder.load(cgutils.gep_inbounds(builder, out, 0, 0))
        nanoseconds = builder.load(cgutils.gep_inbounds(builder, out, 0, 1))
        return builder.add(builder.mul(seconds, i64(1_000_000_000)), nanoseconds)

    return types.int64(), codegen


if _PROCESS_CLOCK is not None:
    @njit(cache=True)
    def _cpu_seconds() -> float:  # pragma: no cover - compiled
        """The process's CPU time (s), as ``time.process_time`` gives it."""
        return _clock_ns() * 1e-9  # type: ignore[call-arg]  # numba supplies the typing context
else:
    @njit(cache=True)
    def _cpu_seconds() -> float:  # pragma: no cover - compiled
        """The process's CPU time (s), as ``time.process_time`` gives it."""
        with objmode(now="float64"):
            now = time.process_time()
        return now


CONVERGED, RENEW, NOT_FINITE, EXHAUSTED = 0, 1, 2, 3


@njit(cache=True)
def newton(v, free, kernel, clamp_rows, point0, point1, product_rows, factors,  # noqa: ANN001
           settings, state, account, work) -> int:  # pragma: no cover - compiled
    """Newton-Krylov iterations of one sample (v (1, n), moved in place), from the point
    whose residual and derivatives are ``point0`` or ``point1`` ((r, d_va, d_vb), which
    one: ``state[6]``; the other is the trial point's), until it converges, the shared
    LU should be renewed, a step is not finite or the iterations run out (returns
    CONVERGED, RENEW, NOT_FINITE, EXHAUSTED). An iteration: M^-1 r (below ``tol`` / 10:
    the last step), GMRES to the tolerance the Newton error allows (:func:`gmres`,
    charged to the LU's ``account`` (:func:`charge`)), the line search (limited to
    ``max_step`` volts, halved while the residual grows, :func:`trial_residual`).

    The first call of a solve (``state[7]`` set) first evaluates the residual and
    derivatives at v into ``point0``; with ``state[8]`` set (no shared LU yet, or a stale
    one) it then returns RENEW at once.

    kernel : :func:`trial_residual`'s device arguments; product_rows : (row_a, row_b,
    held) of the Jacobian's products; factors : :func:`triangular_factors`.
    settings : (tol, max_step, krylov_rtol, adaptive, GMRES iterations at most, GMRES
    iterations that renew the LU, Newton iterations at most).
    state : [C of quadratic convergence (1/V), last full step (V, NaN: none), residual
    norm (A), Newton iterations, CPU s of linear algebra, GMRES iterations, current
    point, start, renew now], updated. work : (base, step, cheap, basis, search, product).
    """
    tol, max_step, krylov_rtol, adaptive, limit, renew_after, max_iter = settings
    base, step, cheap, basis, search, product = work
    (a, b, gates, v_t, s, join, join2, decade, ln10_decade, g_off, row_a, row_b, extra, device,
     fixed_g) = kernel
    if state[7] != 0.0:
        state[2] = trial_residual(v, free, base, False, step, 0.0, a, b, gates, v_t, s, join, join2, decade,
                                  ln10_decade, g_off, row_a, row_b, extra, device, fixed_g, clamp_rows,
                                  point0[0], point0[1], point0[2])
        state[6] = 0.0
        state[7] = 0.0
    renew = state[8] != 0.0
    state[8] = 0.0
    while state[3] < max_iter:
        if renew:
            return RENEW
        if state[6] == 0.0:
            r, d_va, d_vb = point0
            tr, td_va, td_vb = point1
        else:
            r, d_va, d_vb = point1
            tr, td_va, td_vb = point0
        state[3] += 1.0
        started = _cpu_seconds()  # one clock pair for the preconditioner's solve and GMRES
        s_cheap = lu_solve(factors, r[0], cheap, -1.0)
        if s_cheap <= 0.1 * tol:  # converged: the preconditioned residual is the last step
            state[4] += _cpu_seconds() - started
            add_at(v, free, cheap)
            return CONVERGED
        rtol = forcing(s_cheap, state[0], tol, krylov_rtol) if adaptive else krylov_rtol
        needed, _reached, size = gmres(d_va, d_vb, product_rows[0], product_rows[1], product_rows[2],
                                       factors, r[0], -1.0, cheap, rtol, limit, basis, search, product, step)
        state[4] += _cpu_seconds() - started
        state[5] += needed
        renew = charge(account, float(needed), 1) or needed > renew_after
        if not np.isfinite(size):
            return NOT_FINITE
        converged = size <= tol
        scale = min(1.0, max_step / max(size, 1e-300))
        trial = 0.0
        for halving in range(12):
            trial = trial_residual(v, free, base, halving == 0, step, scale, a, b, gates, v_t, s, join, join2,
                                   decade, ln10_decade, g_off, row_a, row_b, extra, device, fixed_g,
                                   clamp_rows, tr, td_va, td_vb)
            if trial <= state[2] * (1.0 + 1e-9) or converged or trial <= 1e-14:
                break
            scale *= 0.5
        state[2] = trial
        state[6] = 1.0 - state[6]
        if scale == 1.0:
            if state[1] > 1e3 * tol:  # a full step before (False for NaN)
                state[0] = max(0.5 * state[0], size / state[1] ** 2)
            state[1] = size
        else:
            state[1] = np.nan
        if converged:
            return CONVERGED
    return EXHAUSTED
