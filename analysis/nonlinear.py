"""Seed 001's analyses for networks of transistor edges, at the operating point.

For a nonlinear network the physical Hessian is the Jacobian of Kirchhoff's law at the
solution (seed 001, condition III): ``J = d r_F / d v_F`` at the free state, with the
sources and grounds held (a voltage-driven bench). It is not symmetric for transistor
edges. With it, at the operating point of the training set's mean input:

* susceptibility vector of edge j: ``s_j = J^-1 b_j`` (node voltages per ampere driven
  across edge j), and its norm;
* the edges' small-signal conductances ``k_j = dI_j/dV_a`` (= -dI_j/dV_b for a linear
  edge);
* cost Hessian in gate-voltage space, Gauss-Newton over the training set,
  ``H = mean_b J_O,b^T J_O,b`` with the output Jacobian (implicit function theorem)
  ``dO/dV_G,j = -P_O J^-1 e_j``, ``e_j = b_j dI_j/dV_G`` (each sample at its own
  operating point); stiff modes are its top eigenvectors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse.linalg as spla

from clln.analysis.analyze import _spearman
from clln.controller.errors import UserError
from clln.controller.network import Network
from clln.controller.readouts import NodeReadout
from clln.controller.task import Task
from clln.simulator.devices import EdgeModel, Level1, SeedTransistor
from clln.simulator.nonlinear import NonlinearNetworkSolver, with_resistors

DENSE_MAX_EDGES = 4000
"""Largest network whose susceptibilities and cost Hessian are computed here."""


def model_from_record(backend: dict[str, Any]) -> EdgeModel:
    """The edge device of a recorded transistor run (per device when recorded)."""
    devices = backend.get("devices") or []
    if not devices:
        raise UserError("the run records no transistor devices to analyse")
    d = devices[0]

    def value(name: str) -> Any:
        per_device = d.get(f"{name}_per_device")
        if per_device is not None:
            return np.asarray(per_device, dtype=float)
        raw = d[name]
        return raw["mean"] if isinstance(raw, dict) else raw

    if d["model"] == "level1":
        return Level1(beta=value("beta"), v_to=value("v_to"), lam=d["lambda"], g_off=d["g_off"])
    if d["model"] == "transistor":
        return SeedTransistor(s=value("s"), v_t=value("v_t"), join=d["join"], decade=d["decade"],
                              g_off=d["g_off"])
    raise UserError(f"no nonlinear analysis for edge model {d['model']!r}")


def gate_output_jacobian(solver: NonlinearNetworkSolver, gates: np.ndarray, voltages: np.ndarray,
                         rows: np.ndarray) -> np.ndarray:
    """(k, m) d v / d V_G of the free-node unknowns ``rows`` (solver order) at the
    operating point ``voltages`` (n,): -J^-1 (b_j dI_j/dV_G) by the implicit function
    theorem, one sparse LU."""
    v = voltages[None, :]
    jac = solver.jacobian(v, gates)[0].tocsc()
    d_vg = solver.edge_state(v, gates).d_vg[0]
    inc = solver.network.incidence.tocsc()[:, solver.free_nodes].toarray().T
    return -spla.splu(jac, permc_spec="MMD_AT_PLUS_A").solve(inc * d_vg[None, :])[rows]


def operating_point_analysis(network: Network, model: EdgeModel, gates: np.ndarray,
                             task: Task | None,
                             fixed_resistors: list[tuple[int, int, float]] | None = None) -> dict[str, Any]:
    """Susceptibilities and (with the task) the cost Hessian at the operating point;
    ``fixed_resistors`` (a, b, S) are the bench's untrained resistors.

    Returns JSON-ready numbers plus arrays under ``_arrays`` (norms, conductances,
    cost eigenvalues, stiff weights) for callers that plot them.
    """
    if network.n_edges > DENSE_MAX_EDGES:
        return {"skipped": f"{network.n_edges} edges: the nonlinear analysis is limited to "
                           f"{DENSE_MAX_EDGES}"}
    m = network.n_edges
    physics, fixed, mask = with_resistors(network, fixed_resistors or [])
    solver = NonlinearNetworkSolver(physics, model, fixed_conductance=fixed, device_mask=mask)
    gates = np.r_[gates, np.zeros(physics.n_edges - m)]
    n_sources = len(network.roles.sources)
    if task is not None and len(task.train):
        sources_all = task.source_voltages(task.train.x)
    else:
        sources_all = np.full((1, n_sources), 0.5)
    mean_sources = sources_all.mean(axis=0, keepdims=True)
    state = solver.solve(gates, mean_sources)
    jac = solver.jacobian(state.voltages, gates)[0].tocsc()
    lu = spla.splu(jac, permc_spec="MMD_AT_PLUS_A")
    free = solver.free_nodes
    inc = network.incidence.tocsc()[:, free].toarray().T  # (n_free, m): b_j on the free nodes
    sus = lu.solve(inc)  # (n_free, m)
    norms = np.linalg.norm(sus, axis=0)
    edge = solver.edge_state(state.voltages, gates)
    conductance = edge.d_va[0][:m]
    nums: dict[str, Any] = {
        "operating_point": "free state at the training set's mean input",
        "newton_iterations": int(state.iterations[0]),
        "jacobian_asymmetry": float(abs(jac - jac.T).max() / abs(jac).max()),
        "median_susceptibility": float(np.median(norms)),
        "max_susceptibility": float(np.max(norms)),
        "spearman_susceptibility_vs_conductance": _spearman(norms, conductance),
        "spearman_susceptibility_vs_gate": _spearman(norms, gates),
    }
    arrays: dict[str, np.ndarray] = {"susceptibility": norms, "conductance": conductance}
    if task is not None and isinstance(task.readout, NodeReadout):  # node outputs
        outputs = np.asarray(task.output_nodes, dtype=np.int64)
        position = np.full(network.n_nodes, -1, dtype=np.int64)
        position[free] = np.arange(free.size)
        rows = position[outputs]
        states = solver.solve(gates, sources_all, start=np.repeat(state.voltages, len(sources_all), 0))
        hessian = np.zeros((m, m))
        for b in range(len(sources_all)):  # one sparse LU per training sample
            d_out = gate_output_jacobian(solver, gates, states.voltages[b], rows)[:, :m]
            hessian += d_out.T @ d_out
        hessian /= len(sources_all)
        vals, vecs = np.linalg.eigh(0.5 * (hessian + hessian.T))
        vals, vecs = vals[::-1], vecs[:, ::-1]
        n_stiff = max(1, int(np.sum(vals > 1e-3 * vals[0]))) if vals[0] > 0 else 1
        weight = np.sum(vecs[:, :n_stiff] ** 2, axis=1)
        nums["cost"] = {
            "hessian": "Gauss-Newton over the training set, gate-voltage space (V^2/V^2)",
            "top_eigenvalues": vals[:10].tolist(),
            "stiff_modes": n_stiff,
            "spearman_susceptibility_vs_stiff_weight": _spearman(norms, weight),
        }
        arrays["cost_eigenvalues"] = vals
        arrays["stiff_weight"] = weight
    nums["_arrays"] = arrays
    return nums
