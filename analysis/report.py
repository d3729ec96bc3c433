"""The PNG report of a training run: error vs step, and the network coloured by conductance."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402

from clln.analysis.metrics import error_floor  # noqa: E402
from clln.controller.store import RunStore  # noqa: E402


def spectral_layout(n_nodes: int, edges: np.ndarray) -> np.ndarray:
    """(n, 2) positions from the two lowest non-trivial Laplacian eigenvectors."""
    lap = np.zeros((n_nodes, n_nodes))
    np.add.at(lap, (edges[:, 0], edges[:, 1]), -1.0)
    np.add.at(lap, (edges[:, 1], edges[:, 0]), -1.0)
    lap[np.diag_indices(n_nodes)] = -lap.sum(axis=1)
    _, vecs = np.linalg.eigh(lap)
    return vecs[:, 1:3]


def draw_network(
    ax: plt.Axes, positions: np.ndarray, edges: np.ndarray, values: np.ndarray, *,
    label: str, roles: dict[str, list[int]] | None = None, log: bool = True,
    numbers: bool = False, highlight: list[int] | None = None,
) -> None:
    """Edges as segments coloured by ``values``; sources, grounds and outputs marked (legend
    below the drawing, never over it); with ``numbers``, node numbers (up to 400 nodes);
    ``highlight``: edges outlined in red (an allostery task's target edges)."""
    segs = positions[edges]
    positive = values[values > 0]
    norm = (LogNorm(positive.min(), positive.max())
            if log and positive.size and positive.max() > positive.min() else Normalize())
    if highlight:
        ax.add_collection(LineCollection(segs[highlight], colors="tab:red", linewidths=6.0,
                                         zorder=1, label="target edges"))
    lc = LineCollection(segs, array=values, cmap="viridis", norm=norm, linewidths=2.0, zorder=2)
    ax.add_collection(lc)
    ax.autoscale()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    plt.colorbar(lc, ax=ax, label=label, shrink=0.8)
    marks = {"sources": ("^", "tab:red", "sources"), "grounds": ("s", "black", "ground"),
             "clamps": ("o", "tab:blue", "outputs (clamped)")}
    for role, nodes in (roles or {}).items():
        if role in marks and nodes:
            m, c, name = marks[role]
            xy = positions[nodes]
            ax.scatter(xy[:, 0], xy[:, 1], marker=m, c=c, s=60, zorder=3, label=name)
    if numbers and len(positions) <= 400:
        size = 7 if len(positions) <= 100 else 5
        for k, (x, y) in enumerate(positions[:, :2]):
            ax.annotate(str(k), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=size,
                        color="dimgray", zorder=4)
    if roles or highlight:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=4, fontsize=7,
                  frameon=False)


def training_report(store: RunStore, run: str, path: Path) -> Path:
    """Write the run's report PNG and return its path."""
    fig = report_figure(store, run)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_figure(store: RunStore, run: str) -> plt.Figure:
    """The run's report: errors (test accuracy too for classification; the floor and
    resume points marked; key settings in a corner) and the network (node numbers, target
    edges of an allostery task outlined)."""
    rec = store.run(run)
    hist = store.history(run)
    info = rec["info"]
    fig, (ax_err, ax_net) = plt.subplots(1, 2, figsize=(12, 5))
    if hist.steps.size:
        ax_err.loglog(hist.steps, np.maximum(hist.error, 1e-300), lw=0.8, alpha=0.7,
                      label="train (batch)")
    if hist.test_steps.size:
        steps = np.maximum(hist.test_steps, 1)
        ax_err.loglog(steps, np.maximum(hist.test_error, 1e-300), "o-", ms=3, label="test")
    floor = error_floor(hist.test_error)
    if floor is not None and floor > 0:
        ax_err.axhline(floor, color="tab:green", ls="--", lw=0.9,
                       label=f"floor {floor:.3g} (median, last quarter of tests)")
    for i, e in enumerate(e for e in store.events(rec["id"]) if e["kind"] == "resume-point"):
        ax_err.axvline(max(e["step"] or 1, 1), color="tab:purple", ls=":", lw=1.0,
                       label="resumed" if i == 0 else None)
    ax_err.set_xlabel("step")
    ax_err.set_ylabel("cost (MSE, V²)" if info["task"] != "classification" else "cosine cost")
    ax_err.set_title(f"{rec['name']} — {rec['id']} ({rec['status']})")
    ax_err.grid(True, which="both", alpha=0.3)
    handles, labels = ax_err.get_legend_handles_labels()
    if info["task"] == "classification" and np.isfinite(hist.test_accuracy).any():
        ax_acc = ax_err.twinx()
        ok = np.isfinite(hist.test_accuracy)
        line, = ax_acc.semilogx(np.maximum(hist.test_steps[ok], 1), hist.test_accuracy[ok], "s-",
                                color="tab:brown", ms=3, lw=1.0, label="test accuracy")
        ax_acc.set_ylim(0, 1.02)
        ax_acc.set_ylabel("test accuracy")
        handles, labels = handles + [line], labels + ["test accuracy"]
    ax_err.legend(handles, labels, fontsize=8, loc="lower left")
    ax_err.text(0.99, 0.99, _settings(info), transform=ax_err.transAxes, ha="right", va="top",
                fontsize=7, family="monospace",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "lw": 0.5})
    edges = np.asarray(info["edges"], dtype=np.int64)
    positions = (np.asarray(info["positions"]) if info.get("positions") is not None
                 else spectral_layout(info["n_nodes"], edges))
    final = rec["final_state"] if rec["final_state"] is not None else rec["initial_state"]
    roles = {k: info[k] for k in ("sources", "grounds", "clamps")}
    targets = None
    if info.get("output_edges"):  # allostery: the edges whose voltage drops are trained
        pairs = {tuple(sorted(map(int, e))) for e in info["output_edges"]}
        targets = [j for j, e in enumerate(edges.tolist()) if tuple(sorted(e)) in pairs] or None
    draw_network(ax_net, positions, edges, np.asarray(final, dtype=float),
                 label="final conductance (S)", roles=roles, numbers=True, highlight=targets)
    ax_net.set_title(f"{info['n_nodes']} nodes, {info['n_edges']} edges")
    fig.tight_layout()
    return fig


def _settings(info: dict) -> str:
    """The key settings of a run, for a corner of its report."""
    parts = [f"rule {info.get('rule')}", f"eta {info.get('eta')}", f"batch {info.get('batch')}",
             f"steps {info.get('steps')}"]
    if info.get("scheme"):
        parts.append("scheme " + "+".join(info["scheme"]))
    return "\n".join(parts)
