"""Compiled kernels of the Newton solve on large transistor networks: the rig's device
model, Kirchhoff's residual and the Jacobian's values, each one pass over a batch.

The numpy code of :class:`~clln.simulator.devices.SeedTransistor` and
:class:`~clln.simulator.network_equations.NetworkEquations` evaluates a batch in a dozen
passes over (samples x edges) arrays (gathers, the channel function at both ends, the
subthreshold part, the parallel conductances, a sparse product for the residual, a
stacked copy and a sparse product for the Jacobian). Here each is one loop compiled by
numba (no fastmath: the same IEEE operations in the same order as the numpy code, so the
values agree to the last bit wherever the power of ten agrees with numpy's):

* :func:`transistor_residual`: for each sample and edge, the node voltages at both
  ends, the channel function F and F' at both ends (the power of ten only below the
  join), I, dI/dV_a and dI/dV_b with the parallel conductances, and I added to the
  residual rows of its ends (in edge order: the order in which scipy's product with
  B^T's sorted CSR rows adds them);
* :func:`jacobian_values`: the edges' derivatives added into the Jacobian's fixed CSC
  pattern at precomputed slots (d_va terms, then d_vb terms, each in edge order: the
  order of the assembly map's sorted CSR rows);
* :func:`batch_power`: the coupled rule's per-edge batch sum of squared drops of a
  measurement (:class:`~clln.simulator.transistor_backend.CompiledMeasurement`), and
  :func:`power_difference`: the contrastive signal of a free and a clamped measurement;
* :func:`jacobian_product`: GMRES' products with the samples' Jacobians straight from
  the edges' derivatives (no values assembled;
  :class:`~clln.simulator.network_equations.EdgeJacobians`);
* the Newton-Krylov bookkeeping: :func:`move_free` (the line search's move),
  :func:`add_free` (a converged sample's last step) and :func:`extrapolate` (warm
  starts), each one pass in node order with the bits of the numpy expressions;
* :func:`learning_window`: a learning window's gate targets and RC charge
  (:class:`~clln.simulator.transistor_backend.TransistorBackend`).

Measured by ``benchmarks/nonlinear_kernels.py`` (CPU time per call, batch 10, at a
trained operating point): device evaluation with the residual 3.5 ms in numpy, 0.8 ms
here at 2e4 edges (23 and 7.6 ms at 1e5); Jacobian values 3.0 and 0.6 ms (22 and 6.8).
Loading numba and the cached kernels adds about 130 MB to the process's resident size
(most of it the LLVM library's pages, shared and file-backed).

The kernels are compiled on first use and cached on disk (``cache=True``); this module is
imported only by networks that use them (see ``NetworkEquations.compiled``), so small
networks and the command line never load numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _channel(x: float, s: float, knee: float, join: float, decade: float,
             ln10_decade: float) -> tuple[float, float]:  # pragma: no cover - compiled
    """F(x) (A) and F'(x) (S) of the seed transistor's channel function (NaN stays NaN)."""
    if x > join:
        return 0.5 * s * x * x, s * x
    sub = knee * 10.0 ** ((x - join) / decade)  # x - join <= 0 here: numpy's min(x - join, 0)
    return sub, sub * ln10_decade


@njit(cache=True, nogil=True)
def transistor_residual(v, a, b, gates, v_t, s, join, join2, decade, ln10_decade, g_off,  # noqa: ANN001
                        row_a, row_b, extra, device, fixed_g,
                        residual, d_va, d_vb) -> None:  # pragma: no cover - compiled
    """Edge derivatives and free-node residual of a batch, written into the outputs.

    v : (B, n) node voltages; a, b : (m,) edge ends; gates, v_t, s : (m,) gate voltage
    V_G, threshold V_T and gain S per edge (V_G - V_T formed here, as the numpy model
    forms it: no pass of its own); join, join2 : the join (V) and its square; decade, ln10_decade : volts
    per decade and ln(10) / decade; g_off : the model's parallel conductance (S);
    row_a, row_b : (m,) the residual row (solver order) of each end, -1 at a fixed node
    (B^T has +1 at a and -1 at b). With ``extra``: device (m,) is 1 where the edge has a
    transistor and fixed_g (m,) its parallel conductance (S); without, every edge is a
    transistor alone and they are not read. Outputs: residual (B, n_free), d_va, d_vb
    (B, m).
    """
    count = v.shape[0]
    m = a.shape[0]
    vk = np.empty(v.shape[1])  # each sample's row, read in order first: the gathers then hit the cache
    for k in range(count):
        r = residual[k]
        r[:] = 0.0
        vk[:] = v[k]
        out_a = d_va[k]
        out_b = d_vb[k]
        for j in range(m):
            va = vk[a[j]]
            vb = vk[b[j]]
            if not extra or device[j]:
                sj = s[j]
                knee = 0.5 * sj * join2  # S join^2 / 2, as the numpy model computes it
                v_star = gates[j] - v_t[j]
                f_b, df_b = _channel(v_star - vb, sj, knee, join, decade, ln10_decade)
                f_a, df_a = _channel(v_star - va, sj, knee, join, decade, ln10_decade)
                i = f_b - f_a + g_off * (va - vb)
                ga = df_a + g_off
                gb = -df_b - g_off
            else:
                i = 0.0
                ga = 0.0
                gb = 0.0
            if extra:
                g = fixed_g[j]
                i = i + g * (va - vb)
                ga = ga + g
                gb = gb - g
            out_a[j] = ga
            out_b[j] = gb
            if row_a[j] >= 0:
                r[row_a[j]] += i
            if row_b[j] >= 0:
                r[row_b[j]] -= i


@njit(cache=True, nogil=True)
def jacobian_values(d_va, d_vb, slot_aa, slot_ba, slot_ab, slot_bb,  # noqa: ANN001
                    values) -> None:  # pragma: no cover - compiled
    """Values (B, nnz) of the Jacobian's fixed CSC pattern from the edges' derivatives:
    edge j adds d_va at slot_aa[j] (row a, column a), -d_va at slot_ba[j], d_vb at
    slot_ab[j] and -d_vb at slot_bb[j] (-1: a fixed node, no entry). All d_va terms are
    added before the d_vb terms, each in edge order, as the product with the assembly
    map's sorted CSR rows adds them."""
    for k in range(d_va.shape[0]):
        out = values[k]
        out[:] = 0.0
        _add_signed(out, d_va[k], slot_aa, slot_ba)
        _add_signed(out, d_vb[k], slot_ab, slot_bb)


@njit(cache=True, nogil=True)
def _add_signed(out, terms, plus, minus) -> None:  # noqa: ANN001  # pragma: no cover - compiled
    """out[plus[j]] += terms[j], out[minus[j]] -= terms[j] for each j in order (-1: skip)."""
    for j in range(terms.shape[0]):
        g = terms[j]
        if plus[j] >= 0:
            out[plus[j]] += g
        if minus[j] >= 0:
            out[minus[j]] -= g


@njit(cache=True, nogil=True)
def batch_power(v, a, b, w, power) -> None:  # noqa: ANN001  # pragma: no cover - compiled
    """power[j] = sum_k w[k] (v[k, a[j]] - v[k, b[j]])^2 for node voltages v (B, n), edge
    ends a, b (m,) and sample weights w (B,): the coupled rule's per-edge batch sum in
    one pass per sample (no (m, B) drops array, no sparse product). Samples outermost:
    each gathers from one row of v, which stays in cache (at 1e5 edges, batch 10, 3.1 ->
    1.5 ms per call against edges outermost); the terms are added in sample order."""
    power[:] = 0.0
    for k in range(v.shape[0]):
        vk = v[k]
        wk = w[k]
        for j in range(a.shape[0]):
            d = vk[a[j]] - vk[b[j]]
            power[j] += wk * (d * d)


@njit(cache=True, nogil=True)
def jacobian_product(d_va, d_vb, row_a, row_b, held, x, y) -> None:  # noqa: ANN001  # pragma: no cover - compiled
    """y = J_k x_k for each sample k straight from the edges' derivatives, without the
    Jacobian's values: edge j adds t = d_va[k, j] x[row_a[j]] + d_vb[k, j] x[row_b[j]]
    to row row_a[j] and -t to row row_b[j] (-1: a fixed node, its term absent), in edge
    order. ``held`` lists the rows whose Jacobian row and column are the identity's
    (clamped nodes, given as -1 in row_a and row_b): y = x there.

    d_va, d_vb : (k, m); row_a, row_b : (m,); held : (h,); x, y : (k, n_free)."""
    for k in range(x.shape[0]):
        xk = x[k]
        out = y[k]
        out[:] = 0.0
        ga = d_va[k]
        gb = d_vb[k]
        for j in range(row_a.shape[0]):
            ra = row_a[j]
            rb = row_b[j]
            t = 0.0
            if ra >= 0:
                t = ga[j] * xk[ra]
            if rb >= 0:
                t += gb[j] * xk[rb]
            if ra >= 0:
                out[ra] += t
            if rb >= 0:
                out[rb] -= t
        for i in held:
            out[i] = xk[i]


@njit(cache=True, nogil=True)
def move_free(v, position, base, step, scale, first) -> None:  # noqa: ANN001  # pragma: no cover - compiled
    """v[k, i] = base[k, i] + scale[k] step[k, position[i]] at every node i with
    position[i] >= 0 (a free node's unknown), for each row k of v (B, n); with
    ``first`` base (B, n) is copied from v before (the line search's starting point).
    The nodes are visited in order (only the step is gathered)."""
    for k in range(v.shape[0]):
        row = v[k]
        start = base[k]
        sk = scale[k]
        dk = step[k]
        if first:
            start[:] = row
        for i in range(row.shape[0]):
            c = position[i]
            if c >= 0:
                row[i] = start[i] + sk * dk[c]


@njit(cache=True, nogil=True)
def add_free(v, rows, position, add) -> None:  # noqa: ANN001  # pragma: no cover - compiled
    """v[rows[r], i] += add[r, position[i]] at every node i with position[i] >= 0, for
    each r (the nodes visited in order)."""
    for r in range(rows.shape[0]):
        row = v[rows[r]]
        dk = add[r]
        for i in range(row.shape[0]):
            c = position[i]
            if c >= 0:
                row[i] += dk[c]


@njit(cache=True, nogil=True)
def extrapolate(v1, v0, v2, quadratic, out) -> None:  # noqa: ANN001  # pragma: no cover - compiled
    """out = 3 v1 - 3 v0 + v2 (``quadratic``) or 2 v1 - v0 (v2 not read), in one pass: the
    same operations in the same order as numpy's in-place sequence (the same bits)."""
    if quadratic:
        for i in range(out.shape[0]):
            out[i] = (v1[i] * 3.0 - v0[i] * 3.0) + v2[i]
    else:
        for i in range(out.shape[0]):
            out[i] = v1[i] * 2.0 - v0[i]


@njit(cache=True, nogil=True)
def learning_window(commanded, commands, vmin, vmax, gates, fraction, leak, rl, r_plus_rl, decay,  # noqa: ANN001
                    target, applied, clipped, out) -> bool:  # pragma: no cover - compiled
    """One learning window without a drive resolution, in one call. The commanded gate
    voltages: wanted = commanded + commands, target = wanted clipped to [vmin, vmax],
    applied = target - commanded, clipped where the target is not the wanted voltage
    (numpy's clip, minus and compare). Where any gate moves, the gates (twins, m) after
    the window (``LearningWindow.apply``, then clipped to [vmin, vmax]) into ``out``, the
    same operations in the same order: u = V_G + dV / fraction; V_inf = u R_leak / (R +
    R_leak) with ``leak``, else u; V_inf + (V_G - V_inf) decay. Returns whether any
    gate moves (else ``out`` is not written)."""
    moved = False
    for j in range(commanded.shape[0]):
        wanted = commanded[j] + commands[j]
        t = min(max(wanted, vmin), vmax) if wanted == wanted else wanted
        target[j] = t
        step = t - commanded[j]
        applied[j] = step
        clipped[j] = t != wanted
        if step != 0.0:
            moved = True
    if not moved:
        return False
    for twin in range(gates.shape[0]):
        for j in range(gates.shape[1]):
            g = gates[twin, j]
            u = g + applied[j] / fraction
            v_inf = u * rl / r_plus_rl if leak else u
            new = v_inf + (g - v_inf) * decay
            out[twin, j] = min(max(new, vmin), vmax) if new == new else new
    return True


@njit(cache=True, nogil=True)
def power_difference(v_free, v_clamped, a, b, w, total, pf, pc, out) -> None:  # noqa: ANN001  # pragma: no cover - compiled
    """The coupled rule's contrastive signal (sum_k w[k] (dV_F)^2 - sum_k w[k] (dV_C)^2) /
    total per edge, with each batch sum added in sample order as :func:`batch_power`
    adds it (the same bits). Up to two samples, edges outermost with the sums in
    registers (pf, pc not used); more, samples outermost into pf and pc (each sample
    gathers from one row of node voltages). Edge ends a, b unsigned (no negative-index
    check)."""
    count = v_free.shape[0]
    if count == 1:  # one sample (the rig's protocol): its rows
        fk = v_free[0]
        ck = v_clamped[0]
        wk = w[0]
        for j in range(out.shape[0]):
            aj = a[j]
            bj = b[j]
            d = fk[aj] - fk[bj]
            e = ck[aj] - ck[bj]
            out[j] = ((0.0 + wk * (d * d)) - (0.0 + wk * (e * e))) / total
        return
    if count == 2:
        for j in range(out.shape[0]):
            aj = a[j]
            bj = b[j]
            f = 0.0
            c = 0.0
            for k in range(count):
                d = v_free[k, aj] - v_free[k, bj]
                e = v_clamped[k, aj] - v_clamped[k, bj]
                f += w[k] * (d * d)
                c += w[k] * (e * e)
            out[j] = (f - c) / total
        return
    batch_power(v_free, a, b, w, pf)
    batch_power(v_clamped, a, b, w, pc)
    for j in range(out.shape[0]):
        out[j] = (pf[j] - pc[j]) / total
