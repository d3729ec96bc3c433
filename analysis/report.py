"""The PNG report of a training run: error vs step, and the network coloured by conductance."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402

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
) -> None:
    """Edges as segments coloured by ``values``; sources, grounds and outputs marked."""
    segs = positions[edges]
    positive = values[values > 0]
    norm = (LogNorm(positive.min(), positive.max())
            if log and positive.size and positive.max() > positive.min() else Normalize())
    lc = LineCollection(segs, array=values, cmap="viridis", norm=norm, linewidths=2.0)
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
            ax.scatter(*positions[nodes].T, marker=m, c=c, s=60, zorder=3, label=name)
    if roles:
        ax.legend(loc="upper right", fontsize=7, framealpha=0.8)


def training_report(store: RunStore, run: str, path: Path) -> Path:
    """Write the run's report PNG and return its path."""
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
    ax_err.set_xlabel("step")
    ax_err.set_ylabel("cost (MSE, V²)" if info["task"] != "classification" else "cosine cost")
    ax_err.set_title(f"{rec['name']} — {rec['id']} ({rec['status']})")
    ax_err.grid(True, which="both", alpha=0.3)
    ax_err.legend()
    edges = np.asarray(info["edges"], dtype=np.int64)
    positions = (np.asarray(info["positions"]) if info.get("positions") is not None
                 else spectral_layout(info["n_nodes"], edges))
    final = rec["final_state"] if rec["final_state"] is not None else rec["initial_state"]
    roles = {k: info[k] for k in ("sources", "grounds", "clamps")}
    draw_network(ax_net, positions, edges, np.asarray(final, dtype=float),
                 label="final conductance (S)", roles=roles)
    ax_net.set_title(f"{info['n_nodes']} nodes, {info['n_edges']} edges")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
