"""The equations of a network of nonlinear edges: Kirchhoff's current law at the free
nodes and its Jacobian, assembled for a batch of samples into a fixed sparse pattern.

Unknowns are the voltages of the free nodes F (every node but the sources and
grounds; in a clamped state the clamped nodes are held too). For a batch of B samples
the residual is the current leaving each free node,

    r_b = B^T I(v_b)        (A),   I_j = I(v_a, v_b, V_G,j) of edge j = (a, b),

and its Jacobian J_b = dr_b / dv_F is sparse with the pattern of the network's
Laplacian but not symmetric (dI/dV_a != -dI/dV_b for a transistor). The free nodes are
numbered in a fill-reducing order (minimum degree on J + J^T) once per network; the CSC
pattern of one block and the map from the edges' derivatives to its entries are fixed.
:class:`~clln.simulator.nonlinear.NonlinearNetworkSolver` solves these equations.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import scipy.sparse as sp

from clln.controller.errors import NetworkError
from clln.controller.network import Network
from clln.simulator.devices import LN10, EdgeCurrents, EdgeModel, SeedTransistor
from clln.simulator.newton_linalg import JacobianPattern, fill_reducing_order
from clln.simulator.physics import boundary_nodes


@functools.cache
def compiled_module(name: str) -> ModuleType:
    """A module of compiled kernels (``_nl_kernels``, ``_nl_single``), imported on first
    use: numba is loaded only by the networks that use it. Cached, because an import
    statement in a per-solve function costs 1.5-2.5 us each time (about ten per training
    step)."""
    return importlib.import_module(f"clln.simulator.{name}")


class NetworkEquations:
    """Kirchhoff's law of one network of nonlinear edges, for batches of samples.

    Parameters
    ----------
    network : topology with roles (sources, grounds, clamps).
    model : the edge device (:mod:`clln.simulator.devices`).
    fixed_conductance : optional (m,) conductance (S) in parallel with each edge (e.g.
        fixed resistors: an edge whose device never conducts plus this).
    device_mask : optional (m,) bool, False for edges without a device (pure resistors
        of ``fixed_conductance``).

    Attributes
    ----------
    compiled : evaluate the residual, the edges' derivatives and the Jacobian's values
        of the Newton iterations with the compiled kernels of
        :mod:`clln.simulator._nl_kernels` (the ``transistor`` model only; others stay in
        numpy). Off by default; the solver turns it on for networks solved with its
        shared factorization, where it makes the non-linear-algebra part of a training
        step 2.3-2.6x cheaper (``benchmarks/nonlinear_kernels.py``). The values agree with numpy's to round-off (the power of
        ten may differ in the last bit).
    """

    def __init__(self, network: Network, model: EdgeModel, *,
                 fixed_conductance: np.ndarray | None = None,
                 device_mask: np.ndarray | None = None) -> None:
        self.network = network
        self.model = model
        n, m = network.n_nodes, network.n_edges
        self.sources, self.grounds, self.clamps = boundary_nodes(network)
        fixed = np.r_[self.sources, self.grounds]
        self.fixed_conductance = (np.zeros(m) if fixed_conductance is None
                                  else np.asarray(fixed_conductance, dtype=float))
        self.device_mask = None if device_mask is None else np.asarray(device_mask, dtype=bool)
        self._has_fixed = bool(np.any(self.fixed_conductance))
        self._devices = None if self.device_mask is None else np.flatnonzero(self.device_mask)
        is_free = np.ones(n, dtype=bool)
        is_free[fixed] = False
        free = np.flatnonzero(is_free)
        self.n_free = nf = free.size
        a, b = network.edges[:, 0], network.edges[:, 1]
        self._a, self._b = a, b
        self.incidence_t = network.incidence.T.tocsr()  # (n, m): r = B^T I
        order = fill_reducing_order(a, b, free, n)
        position = np.full(n, -1, dtype=np.int64)
        position[free[order]] = np.arange(nf)
        self.position = position
        self.free_nodes = np.empty(nf, dtype=np.int64)  # free node at each unknown
        self.free_nodes[position[free]] = free
        self._incidence_free_t = self.incidence_t[self.free_nodes]  # (n_free, m), solver order
        self._pattern = JacobianPattern(a, b, position, nf, m)
        if self.clamps.size and np.any(position[self.clamps] < 0):
            raise NetworkError("a clamped node is also a source or ground")
        clamp_pos = position[self.clamps]
        pat = self._pattern
        self._clamp_entries = np.flatnonzero(np.isin(pat.row, clamp_pos) | np.isin(pat.col, clamp_pos))
        self._clamp_diag = pat.diag_slot[clamp_pos] if clamp_pos.size else np.zeros(0, np.int64)
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.compiled = False
        self._kernel_args: tuple[Any, ...] | None = None
        self._kernel_model: EdgeModel | None = None
        self._slots: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._product_rows: dict[bool, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def edge_state(self, voltages: np.ndarray, gates: np.ndarray) -> EdgeCurrents:
        """Edge currents and derivatives (:class:`~clln.simulator.devices.EdgeCurrents`)
        for node voltages (B, n) and gate voltages (m,)."""
        va = np.take(voltages, self._a, axis=1)
        vb = np.take(voltages, self._b, axis=1)
        if self.device_mask is None:
            out = self.model.currents(va, vb, gates[None, :])
        else:  # the model sees its device edges only (per-device parameters line up)
            dev = self._devices
            part = self.model.currents(va[:, dev], vb[:, dev], gates[None, dev])
            full = [np.zeros_like(va) for _ in range(4)]
            for arr, got in zip(full, (part.current, part.d_va, part.d_vb, part.d_vg)):
                arr[:, dev] = got
            out = type(part)(*full)
        if self._has_fixed:
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
        compiled = self._kernels()
        if compiled is not None:
            kernel, pat = compiled[0], self._pattern
            values = np.empty((state.d_va.shape[0], pat.nnz))
            kernel.jacobian_values(np.ascontiguousarray(state.d_va), np.ascontiguousarray(state.d_vb),
                                   *self._edge_slots, values)
        else:
            derivs = np.hstack([state.d_va, state.d_vb])  # (B, 2m)
            values = np.asarray(derivs @ self._pattern.assembly_t)  # (B, nnz)
        if clamped and self.clamps.size:
            values[:, self._clamp_entries] = 0.0
            values[:, self._clamp_diag] = 1.0
        return np.ascontiguousarray(values)

    def _jacobians(self, state: Derivatives, clamped: bool) -> np.ndarray | EdgeJacobians:
        """The Jacobians of a batch's samples for GMRES' products: with the compiled
        kernels an :class:`EdgeJacobians` (products straight from the edges' derivatives,
        no values assembled), else their values (k, nnz) in the fixed pattern."""
        compiled = self._kernels()
        if compiled is None:
            return self._values(state, clamped)
        return EdgeJacobians(compiled[0].jacobian_product, np.ascontiguousarray(state.d_va),
                             np.ascontiguousarray(state.d_vb), self._product_rows_of(clamped), self.n_free)

    def _product_rows_of(self, clamped: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row_a, row_b, held) of :func:`~clln.simulator._nl_kernels.jacobian_product`:
        each edge end's residual row (-1 at a fixed node and, when ``clamped``, at a
        clamped node) and the clamped rows, whose Jacobian row and column are the
        identity's. Compiled kernels only."""
        rows = self._product_rows.get(clamped)
        if rows is None:
            args = self._kernels()
            assert args is not None  # callers use it on the compiled path only
            row_a, row_b = args[1][4][5], args[1][4][6]
            held = (self.position[self.clamps] if clamped else np.zeros(0, np.int64)).astype(np.int32)
            if held.size:  # a clamped node's row and column are the identity's
                row_a = np.where(np.isin(row_a, held), -1, row_a).astype(np.int32)
                row_b = np.where(np.isin(row_b, held), -1, row_b).astype(np.int32)
            rows = self._product_rows[clamped] = (row_a, row_b, held)
        return rows

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

    # -- boundary values and residuals -----------------------------------------

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

    def _free_residual_state(self, v: np.ndarray, gates: np.ndarray, clamped: bool,  # noqa: ANN202
                             out: np.ndarray | None = None):
        """(residual at the free nodes (B, n_free), edge state) at node voltages v; the
        state has d_va and d_vb (all of ``EdgeCurrents`` unless ``compiled``). ``out``:
        a (B, n_free) array the compiled kernel writes the residual into (numpy's path
        returns a new one)."""
        compiled = self._kernels()
        if compiled is not None:
            kernel, (a, b, v_t, s, params, extra) = compiled
            count, m = v.shape[0], self._a.size
            r = np.empty((count, self.n_free)) if out is None else out
            d_va, d_vb = np.empty((count, m)), np.empty((count, m))
            kernel.transistor_residual(np.ascontiguousarray(v), a, b, np.ascontiguousarray(gates, dtype=float),
                                       v_t, s, *params, *extra, r, d_va, d_vb)
            if clamped and self.clamps.size:
                r[:, self.position[self.clamps]] = 0.0
            return r, Derivatives(d_va, d_vb)
        state = self.edge_state(v, gates)
        r = np.asarray((self._incidence_free_t @ state.current.T).T)
        if clamped and self.clamps.size:
            r[:, self.position[self.clamps]] = 0.0
        return r, state

    def _kernels(self) -> tuple[ModuleType, tuple[Any, ...]] | None:
        """(the compiled kernels' module, their fixed arguments) when ``compiled`` is on
        and the model has kernels (arguments prepared once per model), else None."""
        if not self.compiled or not isinstance(self.model, SeedTransistor):
            return None
        if self._kernel_args is None or self._kernel_model is not self.model:
            self._kernel_args = self._transistor_arguments(self.model)
            self._kernel_model = self.model
            self._product_rows.clear()
        return compiled_module("_nl_kernels"), self._kernel_args

    def _transistor_arguments(self, model: SeedTransistor) -> tuple[Any, ...]:
        """The arguments of :func:`~clln.simulator._nl_kernels.transistor_residual` that
        stay fixed, on every edge: (a, b, V_T, S, scalar parameters and residual rows,
        device mask and fixed conductances)."""
        m = self._a.size
        dev = np.ones(m, dtype=bool) if self.device_mask is None else self.device_mask
        count = int(dev.sum())
        v_t, s = np.zeros(m), np.ones(m)
        v_t[dev] = np.broadcast_to(np.asarray(model.v_t, dtype=float), (count,))
        s[dev] = np.broadcast_to(np.asarray(model.s, dtype=float), (count,))
        a, b = self._a.astype(np.uint32), self._b.astype(np.uint32)  # unsigned: no negative-index check
        params = (float(model.join), float(model.join**2), float(model.decade),
                  float(LN10 / model.decade), float(model.g_off),
                  self.position[a].astype(np.int32), self.position[b].astype(np.int32))
        extra = (self._has_fixed or self.device_mask is not None, dev.astype(np.uint8),
                 np.ascontiguousarray(self.fixed_conductance))
        return a, b, v_t, s, params, extra

    @property
    def _edge_slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Slots of the Jacobian's pattern each edge (a, b) writes: (a, a), (b, a), (a, b),
        (b, b) as (row, column); -1 where the row or column is a fixed node."""
        if self._slots is None:
            pat, nf = self._pattern, max(self.n_free, 1)
            keys = pat.col * nf + pat.row  # sorted: the pattern's CSC order
            pa, pb = self.position[self._a], self.position[self._b]

            def slot(row: np.ndarray, col: np.ndarray) -> np.ndarray:
                found = np.searchsorted(keys, col * nf + row)
                return np.where((row >= 0) & (col >= 0), found, -1).astype(np.int32)

            self._slots = (slot(pa, pa), slot(pb, pa), slot(pa, pb), slot(pb, pb))
        return self._slots


@dataclass(frozen=True)
class Derivatives:
    """The edges' dI/dV_a and dI/dV_b (B, m) of some samples, as ``_values`` reads them."""

    d_va: np.ndarray
    d_vb: np.ndarray


class EdgeJacobians:
    """diag(J_1, ..., J_k) of k samples as an operator for GMRES (``jacobians @ x`` with
    x and the result flat (k * n_free,)), applied straight from the edges' derivatives
    by :func:`~clln.simulator._nl_kernels.jacobian_product`: no Jacobian values are
    assembled. Measured at 1e5 edges, batch 10: 2.6 ms per product against 3.9 ms for
    scipy's product with the block CSC matrix, which also needed 7.3 ms of value
    assembly per Newton iteration."""

    def __init__(self, kernel: Any, d_va: np.ndarray, d_vb: np.ndarray,  # noqa: ANN401
                 rows: tuple[np.ndarray, np.ndarray, np.ndarray], n_free: int) -> None:
        self._kernel = kernel
        self.d_va, self.d_vb = d_va, d_vb
        self._rows = rows
        count = d_va.shape[0]
        self.shape = (count * n_free, count * n_free)
        self._rows_shape = (count, n_free)

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x).reshape(self._rows_shape)
        out = np.empty(self._rows_shape)
        self._kernel(self.d_va, self.d_vb, *self._rows, x, out)
        return out.reshape(-1)
