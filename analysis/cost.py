"""Output Jacobian, cost gradient and cost Hessian over the conductances (seed 001 §III).

Outputs are linear functionals of the node voltages, ``O = P v`` with ``P``
(n_out x n): a row e_o per output node, or e_a - e_b per output edge (allostery).
For a sample with source voltages x the free state is ``v = Phi x`` (Phi: the
source columns of the harmonic basis, n x n_sources). Differentiating Kirchhoff's
law (docs/science.md)::

    dO_o / dg_j = -(P s_j)_o dV_j,        dV_j = (B v)_j,  s_j = G b_j

so with ``Q[j, o] = (P s_j)_o`` (m x n_out, V/A: the drop across edge j when 1 A is
injected at output o — one solve per output) and ``D[j, x] = dV_j`` (m x N) the
Jacobian of sample x is ``J_x = -Q^T diag(D[:, x])`` (n_out x m, V/S).

Cost ``C = sum_x c_x(O_x)`` with ``c_x`` the task's per-sample cost divided by the
number of samples N (so C is the task's mean cost: MSE in V^2, or cosine distance).

* gradient: ``dC/dg = sum_x J_x^T e_x`` with ``e_x = dc_x/dO`` (S^-1 units of C);
* Gauss-Newton Hessian: ``H_GN = sum_x J_x^T W_x J_x``, ``W_x = d^2 c_x / dO^2``; for
  the MSE ``W = 2 / (N n_out) I`` and ``H_GN = (2 / (N n_out)) (Q Q^T) o (D D^T)``
  (o: elementwise product), of rank at most n_out * n_sources;
* exact Hessian: ``H = H_GN + R``, with the residual term
  ``R_ij = K_ij (A_ij + A_ji)``, ``K = B G B^T`` (m x m) and ``A = Q E^T D^T``
  (E: the e_x as rows), from ``d^2 v / dg_i dg_j = K_ij (s_i dV_j + s_j dV_i)``.
  At a solution (zero error) R = 0 and H = H_GN (seed eq. 7).

Everything here takes ``Q`` and ``Phi`` as arrays, so the same functions serve a
model (:func:`response_arrays`) and bench measurements
(:mod:`clln.controller.response`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from clln.analysis.susceptibility import GroundedGreen, hessian_boundary
from clln.controller.network import Network
from clln.controller.task import Dataset, Task

CostKind = Literal["mse", "cosine"]


def output_operator(n_nodes: int, output_nodes: tuple[int, ...] | list[int] = (),
                    output_edges: tuple[tuple[int, int], ...] | list[list[int]] = ()
                    ) -> sp.csr_matrix:
    """(n_out, n) P: rows e_o for output nodes, or e_a - e_b for output edges."""
    if len(output_edges):
        pairs = np.asarray(output_edges, dtype=np.int64).reshape(-1, 2)
        k = pairs.shape[0]
        rows = np.repeat(np.arange(k), 2)
        return sp.csr_matrix((np.tile([1.0, -1.0], k), (rows, pairs.ravel())), shape=(k, n_nodes))
    nodes = np.asarray(output_nodes, dtype=np.int64)
    return sp.csr_matrix((np.ones(nodes.size), (np.arange(nodes.size), nodes)),
                         shape=(nodes.size, n_nodes))


@dataclass(frozen=True, eq=False)
class ResponseArrays:
    """What the cost derivatives need from the physics.

    Attributes
    ----------
    output_susceptibility : (m, n_out) Q[j, o] = (P s_j)_o, V/A.
    source_response : (n, n_sources) Phi, node volts per source volt.
    incidence : (m, n) B.
    output : (n_out, n) P.
    """

    output_susceptibility: np.ndarray
    source_response: np.ndarray
    incidence: sp.csr_matrix
    output: sp.csr_matrix

    def drops(self, source_volts: np.ndarray) -> np.ndarray:
        """(m, N) edge voltage drops D of the free states, V."""
        return self.incidence @ (self.source_response @ np.asarray(source_volts, float).T)

    def outputs(self, source_volts: np.ndarray) -> np.ndarray:
        """(N, n_out) free outputs, V."""
        return (self.output @ (self.source_response @ np.asarray(source_volts, float).T)).T

    def jacobian(self, source_volts: np.ndarray) -> np.ndarray:
        """(N, n_out, m) dO/dg per sample, V/S."""
        d = self.drops(source_volts)
        return -self.output_susceptibility.T[None, :, :] * d.T[:, None, :]


def bench_green(network: Network, conductances: np.ndarray) -> GroundedGreen:
    """The factorization the bench's physics needs: sources and grounds held."""
    return GroundedGreen(network, conductances, hessian_boundary(network, "dirichlet"))


def response_arrays(green: GroundedGreen, output: sp.csr_matrix) -> ResponseArrays:
    """Q and Phi of a network model (its held nodes must start with the sources).

    Parameters
    ----------
    green : factorization of the network; refactorized with the sources and grounds
        held (:func:`bench_green`) if it holds other nodes.
    output : (n_out, n) output operator P.
    """
    net = green.network
    n_src = len(net.roles.sources)
    if not np.array_equal(green.held, hessian_boundary(net, "dirichlet")):
        green = bench_green(net, green.conductances)  # the bench holds sources and grounds
    g_pt = green.solve(output.T.toarray())  # (n, n_out): G P^T
    q = np.asarray(net.incidence @ g_pt)
    phi = green.harmonic()[:, :n_src]
    return ResponseArrays(q, phi, net.incidence.tocsr(), output.tocsr())


def cost_terms(kind: CostKind, outputs: np.ndarray, y: np.ndarray
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """The cost, its gradient and Hessian with respect to the outputs.

    Parameters
    ----------
    kind : ``mse`` (mean over samples and outputs of squared errors, V^2) or
        ``cosine`` (mean over samples of 1 - cos(O, y)).
    outputs, y : (N, n_out) outputs and targets, V.

    Returns
    -------
    cost : float.
    e : (N, n_out) dC/dO_x.
    w : (N, n_out, n_out) d^2 C / dO_x^2.
    """
    outputs = np.asarray(outputs, float)
    y = np.asarray(y, float)
    n, k = outputs.shape
    if kind == "mse":
        r = outputs - y
        w = np.broadcast_to(2.0 / (n * k) * np.eye(k), (n, k, k)).copy()
        return float(np.mean(r * r)), 2.0 / (n * k) * r, w
    if kind != "cosine":
        raise ValueError(f"unknown cost {kind!r}; allowed: mse, cosine")
    radius = np.linalg.norm(outputs, axis=1, keepdims=True)
    u = outputs / radius
    yhat = y / np.linalg.norm(y, axis=1, keepdims=True)
    cos = np.sum(u * yhat, axis=1, keepdims=True)
    e = -(yhat - cos * u) / radius / n
    eye = np.eye(k)[None]
    hess_cos = -(
        cos[:, :, None] * (eye - 3.0 * u[:, :, None] * u[:, None, :])
        + u[:, :, None] * yhat[:, None, :] + yhat[:, :, None] * u[:, None, :]
    ) / (radius[:, :, None] ** 2)
    return float(np.mean(1.0 - cos)), e, -hess_cos / n


def cost_gradient(arrays: ResponseArrays, source_volts: np.ndarray, y: np.ndarray,
                  kind: CostKind = "mse") -> np.ndarray:
    """(m,) dC/dg, cost units per siemens."""
    _, e, _ = cost_terms(kind, arrays.outputs(source_volts), y)
    d = arrays.drops(source_volts)
    return -np.sum(d * (arrays.output_susceptibility @ e.T), axis=1)


def gauss_newton_hessian(arrays: ResponseArrays, source_volts: np.ndarray, y: np.ndarray,
                         kind: CostKind = "mse") -> np.ndarray:
    """(m, m) H_GN = sum_x J_x^T W_x J_x, cost units per S^2."""
    outputs = arrays.outputs(source_volts)
    _, _, w = cost_terms(kind, outputs, y)
    d = arrays.drops(source_volts)
    q = arrays.output_susceptibility
    if kind == "mse":
        return w[0, 0, 0] * (q @ q.T) * (d @ d.T)
    hess = np.zeros((q.shape[0], q.shape[0]))
    for x in range(d.shape[1]):
        jt = q * d[:, x:x + 1]  # -J_x^T, (m, n_out)
        hess += jt @ w[x] @ jt.T
    return hess


def edge_response(green: GroundedGreen) -> np.ndarray:
    """(m, m) K = B G B^T, V/A: drop across edge i for 1 A injected across edge j, with
    ``green``'s held nodes at 0 V."""
    net = green.network
    b_free = net.incidence[:, green.free].tocsc()
    return np.asarray(b_free @ green.solve_free(b_free.T.toarray()))


def cost_hessian(arrays: ResponseArrays, source_volts: np.ndarray, y: np.ndarray,
                 kind: CostKind = "mse", *, green: GroundedGreen | None = None) -> np.ndarray:
    """(m, m) cost Hessian: Gauss-Newton, plus the residual term when ``green`` is given
    (then exact; needs the m x m edge response K)."""
    hess = gauss_newton_hessian(arrays, source_volts, y, kind)
    if green is None:
        return hess
    if not np.array_equal(green.held, hessian_boundary(green.network, "dirichlet")):
        green = bench_green(green.network, green.conductances)
    _, e, _ = cost_terms(kind, arrays.outputs(source_volts), y)
    a = (arrays.output_susceptibility @ e.T) @ arrays.drops(source_volts).T
    return hess + edge_response(green) * (a + a.T)


@dataclass(frozen=True, eq=False)
class StiffModes:
    """Spectrum of a cost Hessian, stiffest first.

    Attributes
    ----------
    eigenvalues : (m,) descending, cost units per S^2.
    eigenvectors : (m, m) orthonormal columns.
    n_stiff : modes above the largest spectral gap among the top ``max_stiff``:
        the k maximising lambda_k / |lambda_{k+1}|.
    gap : that ratio, lambda_{n_stiff} / |lambda_{n_stiff + 1}| (at most 1e300).
    bulk : median |lambda| over the modes that are not stiff.
    n_above : eigenvalues at least ``factor`` times the bulk.
    weight : (m,) each edge's weight in the stiff subspace, sum over the n_stiff
        stiffest modes of (v_k)_j^2 (sums to n_stiff).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    n_stiff: int
    gap: float
    bulk: float
    n_above: int
    weight: np.ndarray


def stiff_modes(hessian: np.ndarray, *, n_stiff: int | None = None, max_stiff: int = 50,
                factor: float = 100.0) -> StiffModes:
    """Eigendecomposition of a cost Hessian and its stiff modes.

    Parameters
    ----------
    hessian : (m, m) symmetric.
    n_stiff : use this many stiff modes instead of locating the largest gap.
    max_stiff : the gap is looked for among the top ``max_stiff`` eigenvalues.
    factor : ``n_above`` counts eigenvalues at least ``factor`` times the bulk.
    """
    vals, vecs = np.linalg.eigh(0.5 * (hessian + hessian.T))
    vals, vecs = vals[::-1], vecs[:, ::-1]
    mags = np.abs(vals)
    tiny = np.finfo(float).tiny
    top = min(max_stiff, vals.size - 1)
    if n_stiff is None:
        if top >= 1:
            ratios = vals[:top] / np.maximum(mags[1:top + 1], tiny)
            count = int(np.argmax(ratios) + 1)
        else:
            count = 1
    else:
        count = max(int(n_stiff), 1)
    rest = mags[count:]
    gap = float(min(vals[count - 1] / max(rest[0], tiny), 1e300)) if rest.size else float("inf")
    bulk = float(np.median(rest)) if rest.size else 0.0
    n_above = int(np.sum(vals >= factor * bulk))
    weight = np.sum(vecs[:, :count] ** 2, axis=1)
    return StiffModes(vals, vecs, count, gap, bulk, n_above, weight)


def task_cost_kind(task: Task) -> CostKind:
    """The cost the task is trained on."""
    return "cosine" if task.classifies else "mse"


def task_output_operator(task: Task, n_nodes: int) -> sp.csr_matrix:
    """P for a task's output nodes or output edges."""
    return output_operator(n_nodes, task.output_nodes, task.output_edges)


@dataclass(frozen=True, eq=False)
class CostLandscape:
    """The cost around one conductance state.

    Attributes
    ----------
    cost : the task's mean cost on the dataset.
    gradient : (m,) dC/dg.
    hessian : (m, m) cost Hessian (exact or Gauss-Newton, see ``exact``).
    exact : whether the residual term is included.
    modes : its spectrum and stiff modes.
    """

    cost: float
    gradient: np.ndarray
    hessian: np.ndarray
    exact: bool
    modes: StiffModes


def cost_landscape(network: Network, conductances: np.ndarray, task: Task,
                   dataset: Dataset | None = None, *, exact: bool = True) -> CostLandscape:
    """Cost, gradient, Hessian and stiff modes of a task at the given conductances (S).

    ``network`` must carry the task's roles; ``dataset`` defaults to the training set.
    """
    data = task.train if dataset is None else dataset
    green = bench_green(network, conductances)
    arrays = response_arrays(green, task_output_operator(task, network.n_nodes))
    src = task.source_voltages(data.x)
    kind = task_cost_kind(task)
    cost, _, _ = cost_terms(kind, arrays.outputs(src), data.y)
    hess = cost_hessian(arrays, src, data.y, kind, green=green if exact else None)
    return CostLandscape(cost, cost_gradient(arrays, src, data.y, kind), hess, exact,
                         stiff_modes(hess))
