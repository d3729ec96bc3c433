"""Seed analyses of a recorded run: susceptibility and cost Hessians (seed 001), learning
as aging (seed 000). Everything is computed from what the run store kept — the
network, its node roles, the conductance snapshots and the test errors — never from a
live simulator, so simulated and measured bench runs are analysed alike.

:func:`analyze_run` writes PNG figures and ``analysis.json`` into
``<run folder>/analysis/`` and returns the numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from clln.analysis.aging import correlation_history, fit_relaxation
from clln.analysis.cost import CostLandscape, cost_landscape
from clln.analysis.susceptibility import (
    CONVENTIONS,
    DENSE_MODES_MAX_NODES,
    GroundedGreen,
    hessian_boundary,
    hessian_modes,
    modes_for_fraction,
    relative_conductance,
    susceptibility_norms,
)
from clln.controller.errors import UserError
from clln.controller.jsonvalues import json_ready
from clln.controller.network import Network, NodeRoles
from clln.controller.store import RunHistory, RunStore
from clln.controller.task import Task

EXACT_HESSIAN_MAX_EDGES = 4000
"""Largest network whose cost Hessian includes the residual term (needs an m x m K)."""

COST_HESSIAN_MAX_EDGES = 12000
"""Largest network whose (dense, m x m) cost Hessian is formed and diagonalised."""

WHATS = ("susceptibility", "aging", "all")


@dataclass(frozen=True, eq=False)
class RunData:
    """What a run store holds about one run, as arrays.

    Attributes
    ----------
    run_id, name, status : identity of the run.
    network : topology with node roles (positions may be None).
    task_kind : regression, allostery or classification.
    initial : (m,) conductances at the start, S; None for stepped runs, whose start
        is recorded as taps.
    final : (m,) conductances at the end (or at the last snapshot), S.
    history : per-step, test and snapshot records.
    """

    run_id: str
    name: str
    status: str
    network: Network
    task_kind: str
    initial: np.ndarray | None
    final: np.ndarray
    history: RunHistory


def load_run(store: RunStore, run: str) -> RunData:
    """Read a run's network, roles, conductances and history from the store."""
    rec = store.run(run)
    hist = store.history(run)
    info = rec["info"]
    roles = NodeRoles(tuple(info.get("sources", ())), tuple(info.get("grounds", ())),
                      tuple(info.get("clamps", ())))
    positions = info.get("positions")
    network = Network(int(info["n_nodes"]), np.asarray(info["edges"], dtype=np.int64),
                      positions=None if positions is None else np.asarray(positions, float),
                      roles=roles)
    stepped = rec.get("final_taps") is not None
    initial = None if stepped or rec["initial_state"] is None else np.asarray(rec["initial_state"], float)
    if rec["final_state"] is not None:
        final = np.asarray(rec["final_state"], float)
    elif hist.snapshots.size:
        final = np.asarray(hist.snapshots[-1], float)
    elif initial is not None:
        final = initial
    else:
        raise UserError(f"run {rec['id']} has no recorded conductances to analyse")
    return RunData(rec["id"], rec["name"] or "", rec["status"], network, info.get("task", ""),
                   initial, final, hist)


@dataclass
class AnalysisOutcome:
    """Numbers (JSON-ready), figure paths and the JSON file of one analysis."""

    numbers: dict[str, Any]
    figures: list[Path] = field(default_factory=list)
    json_path: Path | None = None


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(scipy.stats.spearmanr(a[ok], b[ok]).statistic)


@dataclass
class SusceptibilityResult:
    """Arrays behind the susceptibility figures, with the numbers."""

    numbers: dict[str, Any]
    norms: np.ndarray
    relative: np.ndarray
    stiff_weight: np.ndarray | None = None
    cost_before: np.ndarray | None = None
    cost_after: np.ndarray | None = None
    physical_before: np.ndarray | None = None
    physical_after: np.ndarray | None = None
    fraction_curve: np.ndarray | None = None


def susceptibility_analysis(data: RunData, task: Task | None = None, *, probes: int = 64,
                            seed: int = 0, convention: str = "ground") -> SusceptibilityResult:
    """Susceptibilities, physical spectra and, with the task, cost Hessians and stiff modes.

    Parameters
    ----------
    data : the run.
    task : the run's task with its training set (for the cost Hessian); skipped if None.
    probes : probes of the randomized estimator (networks above 5,000 nodes).
    seed : seed of the randomized estimator's probes.
    convention : held nodes of the physical Hessian: ``ground`` (seed 001) or
        ``dirichlet`` (sources and grounds; see clln.analysis.susceptibility).
    """
    if convention not in CONVENTIONS:
        raise UserError(f"--convention: {convention!r} is not allowed; allowed: {', '.join(CONVENTIONS)}")
    net, g = data.network, data.final
    held = hessian_boundary(net, convention)
    green = GroundedGreen(net, g, held)
    sus = susceptibility_norms(green, probes=probes, rng=np.random.default_rng(seed))
    rel = relative_conductance(net, g)
    top = sus.norms >= np.quantile(sus.norms, 0.9)
    num: dict[str, Any] = {
        "convention": convention,
        "held_nodes": green.held.tolist(),
        "method": sus.method,
        "probes": sus.probes,
        "median_norm": float(np.median(sus.norms)),
        "max_norm": float(np.max(sus.norms)),
        "median_relative_stderr": float(np.median(sus.stderr / sus.norms)),
        "spearman_norm_vs_conductance": _spearman(sus.norms, g),
        "spearman_norm_vs_relative_conductance": _spearman(sus.norms, rel),
        "median_relative_conductance_top10pct": float(np.nanmedian(rel[top])),
        "median_relative_conductance_rest": float(np.nanmedian(rel[~top])),
    }
    out = SusceptibilityResult(num, sus.norms, rel)
    if net.n_nodes <= DENSE_MODES_MAX_NODES:
        modes = hessian_modes(net, g, held)
        curve = modes.network_fraction()
        k90 = modes_for_fraction(curve, 0.9)
        per_edge = _per_edge_modes_for_fraction(modes, 0.9)
        num["partial"] = {
            "modes": int(curve.size),
            "modes_for_90pct_network": k90,
            "fraction_of_modes_for_90pct_network": k90 / curve.size,
            "median_modes_for_90pct_per_edge": float(np.median(per_edge)),
            "median_fraction_of_modes_for_90pct_per_edge": float(np.median(per_edge)) / curve.size,
        }
        out.fraction_curve = curve
        out.physical_after = modes.eigenvalues
        if data.initial is not None:
            out.physical_before = hessian_modes(net, data.initial, held).eigenvalues
    else:
        num["partial"] = None
    if task is not None and net.n_edges > COST_HESSIAN_MAX_EDGES:
        num["cost"] = {"skipped": f"{net.n_edges} edges: the dense cost Hessian is limited to "
                                  f"{COST_HESSIAN_MAX_EDGES}"}
    elif task is not None:
        exact = net.n_edges <= EXACT_HESSIAN_MAX_EDGES
        after = cost_landscape(net, g, task, exact=exact)
        modes_after = after.modes
        num["cost"] = _landscape_numbers(after)
        num["cost"]["spearman_norm_vs_stiff_weight"] = _spearman(sus.norms, modes_after.weight)
        out.stiff_weight = modes_after.weight
        out.cost_after = modes_after.eigenvalues
        if data.initial is not None:
            before = cost_landscape(net, data.initial, task, exact=exact)
            num["cost_before"] = _landscape_numbers(before)
            out.cost_before = before.modes.eigenvalues
    return out


def _landscape_numbers(land: CostLandscape) -> dict[str, Any]:
    vals = land.modes.eigenvalues
    return {
        "cost": land.cost,
        "gradient_norm": float(np.linalg.norm(land.gradient)),
        "exact_hessian": land.exact,
        "n_stiff": land.modes.n_stiff,
        "stiff_gap": land.modes.gap,
        "bulk_median_abs_eigenvalue": land.modes.bulk,
        "n_above_100x_bulk": land.modes.n_above,
        "smallest_stiff_over_bulk": (land.modes.eigenvalues[land.modes.n_stiff - 1] / land.modes.bulk
                                     if land.modes.bulk > 0 else float("inf")),
        "top_eigenvalues": vals[:8].tolist(),
        "median_abs_eigenvalue": float(np.median(np.abs(vals))),
    }


def _per_edge_modes_for_fraction(modes: Any, fraction: float, chunk: int = 512) -> np.ndarray:
    """(m,) softest modes needed for each edge's partial susceptibility to reach the fraction."""
    m = modes.overlaps.shape[0]
    out = np.empty(m)
    for start in range(0, m, chunk):
        terms = (modes.overlaps[start:start + chunk] / modes.eigenvalues) ** 2
        cum = np.sqrt(np.cumsum(terms, axis=1))
        cum /= cum[:, -1:]
        out[start:start + chunk] = np.argmax(cum >= fraction, axis=1) + 1
    return out


@dataclass
class AgingResult:
    """Arrays behind the aging figure, with the numbers."""

    numbers: dict[str, Any]
    steps: np.ndarray | None = None
    rmse: np.ndarray | None = None
    fits: Any = None
    correlations: Any = None


def aging_analysis(data: RunData) -> AgingResult:
    """Relaxation fits of sqrt(cost) and the correlation length of g(t) - g(0)."""
    hist = data.history
    num: dict[str, Any] = {}
    out = AgingResult(num)
    if hist.test_steps.size >= 5:
        steps, err, source = hist.test_steps, hist.test_error, "test"
    else:
        steps, err, source = hist.steps, hist.error, "train batch"
    try:
        fits = fit_relaxation(steps, np.sqrt(np.maximum(err, 0)))
    except UserError as exc:
        num["relaxation"] = {"skipped": str(exc)}
    else:
        num["relaxation"] = {
            "series": f"sqrt({source} cost)",
            "fitted_steps": list(fits.window),
            "best": fits.best,
            "delta_aic": fits.delta_aic,
            "aic_exponential_minus_stretched": (
                fits.fits["exponential"].aic - fits.fits["stretched"].aic
                if {"exponential", "stretched"} <= fits.fits.keys() else None),
            "fits": {k: {"params": f.params, "aic": f.aic, "rss": f.rss, "points": f.n_points}
                     for k, f in fits.fits.items()},
        }
        out.steps, out.rmse, out.fits = steps, np.sqrt(np.maximum(err, 0)), fits
    net = data.network
    snaps = hist.snapshots
    reference = data.initial
    snap_steps = hist.snapshot_steps
    if reference is None and snaps.shape[0] > 1:  # stepped runs: start from the first snapshot
        reference, snaps, snap_steps = snaps[0], snaps[1:], snap_steps[1:]
    if net.positions is None:
        num["correlation"] = {"skipped": "the network has no node positions"}
    elif reference is None or snaps.shape[0] < 2:
        num["correlation"] = {"skipped": "fewer than 2 conductance snapshots"}
    else:
        mid = net.edge_midpoints()
        lengths = np.linalg.norm(net.positions[net.edges[:, 0]] - net.positions[net.edges[:, 1]],
                                 axis=1)
        corr = correlation_history(mid, float(np.mean(lengths)), reference, snap_steps, snaps)
        finite = np.isfinite(corr.xi)
        num["correlation"] = {
            "quantity": "g(t) - g(0)",
            "length_unit": "mean edge length",
            "steps": corr.steps.tolist(),
            "xi": corr.xi.tolist(),
            "xi_first": float(corr.xi[finite][0]) if finite.any() else None,
            "xi_last": float(corr.xi[finite][-1]) if finite.any() else None,
            "spearman_xi_vs_step": _spearman(corr.steps.astype(float), corr.xi),
        }
        out.correlations = corr
    return out


def analyze_run(store: RunStore, run: str, *, task: Task | None = None, what: str = "all",
                out_dir: Path | None = None, probes: int = 64,
                convention: str = "ground") -> AnalysisOutcome:
    """Run the seed analyses on a recorded run; write figures and ``analysis.json``.

    Parameters
    ----------
    store : the run store.
    run : run id, unique prefix or ``latest``.
    task : the run's task (rebuilt from its protocol by the caller) for the cost
        Hessian; without it the cost analyses are skipped.
    what : ``susceptibility``, ``aging`` or ``all``.
    out_dir : where to write (default ``<run folder>/analysis``).
    probes : probes of the randomized susceptibility estimator for large networks.
    convention : held nodes of the physical Hessian, ``ground`` or ``dirichlet``.
    """
    from clln.analysis import figures

    if what not in WHATS:
        raise UserError(f"--what: {what!r} is not allowed; allowed: {', '.join(WHATS)}")
    if convention not in CONVENTIONS:
        raise UserError(f"--convention: {convention!r} is not allowed; allowed: {', '.join(CONVENTIONS)}")
    data = load_run(store, run)
    folder = out_dir if out_dir is not None else store.run_dir(data.run_id) / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    numbers: dict[str, Any] = {
        "run": data.run_id, "name": data.name, "status": data.status,
        "n_nodes": data.network.n_nodes, "n_edges": data.network.n_edges,
        "task": data.task_kind,
    }
    outcome = AnalysisOutcome(numbers)
    backend = store.run(data.run_id).get("backend") or {}
    if what in ("susceptibility", "all") and (backend.get("edges") or {}).get("kind") == "gate":
        # transistor edges: the recorded state is the gate voltages; the physical Hessian
        # is the Jacobian at the operating point (clln.analysis.nonlinear)
        from clln.analysis.nonlinear import model_from_record, operating_point_analysis

        resistors = [(int(a), int(b), 1.0 / float(ohms)) for a, b, ohms in backend.get("fixed_resistors", [])]
        found = operating_point_analysis(data.network, model_from_record(backend), data.final, task,
                                         resistors)
        found.pop("_arrays", None)
        numbers["nonlinear"] = {"physical_hessian": "Jacobian at the operating point", **found}
    elif what in ("susceptibility", "all"):
        sus = susceptibility_analysis(data, task, probes=probes, convention=convention)
        numbers["susceptibility"] = sus.numbers
        outcome.figures += figures.susceptibility_figures(data, sus, folder)
    if what in ("aging", "all"):
        aging = aging_analysis(data)
        numbers["aging"] = aging.numbers
        outcome.figures += figures.aging_figures(data, aging, folder)
    outcome.numbers = json_ready(numbers)
    outcome.json_path = folder / "analysis.json"
    outcome.json_path.write_text(json.dumps(outcome.numbers, indent=2))
    return outcome


def summary_rows(numbers: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of the headline numbers, for the command line."""

    def fmt(x: Any, spec: str = ".3g") -> str:
        return "-" if x is None else format(x, spec)

    rows: list[tuple[str, str]] = [
        ("run", f"{numbers['run']} ({numbers['name']}, {numbers['status']})"),
        ("network", f"{numbers['n_nodes']} nodes, {numbers['n_edges']} edges, task {numbers['task']}"),
    ]
    sus = numbers.get("susceptibility")
    if sus:
        rows.append(("|s_j|", f"median {fmt(sus['median_norm'])}, max {fmt(sus['max_norm'])} "
                              f"({sus['method']}, held: {sus['convention']})"))
        part = sus.get("partial")
        if part:
            rows.append(("partial susceptibility",
                         f"90% of the network norm from {part['modes_for_90pct_network']} of "
                         f"{part['modes']} softest modes ({fmt(100 * part['fraction_of_modes_for_90pct_network'], '.1f')}%)"))
        cost = sus.get("cost")
        if cost and "skipped" in cost:
            rows.append(("cost Hessian", f"skipped: {cost['skipped']}"))
        elif cost:
            rows.append(("cost Hessian", f"{cost['n_stiff']} stiff modes, gap {fmt(cost['stiff_gap'])}, "
                                         f"cost {fmt(cost['cost'])}"))
            rows.append(("Spearman |s_j| vs stiff weight", fmt(cost["spearman_norm_vs_stiff_weight"], ".3f")))
        rows.append(("relative conductance", f"median {fmt(sus['median_relative_conductance_top10pct'])} "
                                             f"on the top 10% |s_j|, {fmt(sus['median_relative_conductance_rest'])} elsewhere"))
    nonlinear = numbers.get("nonlinear")
    if nonlinear and "skipped" in nonlinear:
        rows.append(("operating point", f"skipped: {nonlinear['skipped']}"))
    elif nonlinear:
        rows.append(("|s_j| at the operating point",
                     f"median {fmt(nonlinear['median_susceptibility'])}, max "
                     f"{fmt(nonlinear['max_susceptibility'])}; Jacobian asymmetry "
                     f"{fmt(nonlinear['jacobian_asymmetry'])}"))
        cost = nonlinear.get("cost")
        if cost:
            rows.append(("cost Hessian (gates)", f"{cost['stiff_modes']} stiff modes; Spearman |s_j| vs "
                                                 f"stiff weight {fmt(cost['spearman_susceptibility_vs_stiff_weight'], '.3f')}"))
    aging = numbers.get("aging")
    if aging:
        rel = aging.get("relaxation", {})
        if "best" in rel:
            rows.append(("relaxation", f"best {rel['best']}; AIC(exp) - AIC(stretched) = "
                                       f"{fmt(rel['aic_exponential_minus_stretched'], '.1f')}"))
        corr = aging.get("correlation", {})
        if "xi" in corr:
            rows.append(("correlation length", f"{fmt(corr['xi_first'])} -> {fmt(corr['xi_last'])} "
                                               "mean edge lengths"))
        for key in ("relaxation", "correlation"):
            if "skipped" in aging.get(key, {}):
                rows.append((key, f"skipped: {aging[key]['skipped']}"))
    return rows
