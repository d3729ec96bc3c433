"""Figures of the seed analyses (PNG), in the style of the seeds' figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clln.analysis.report import draw_network, spectral_layout  # noqa: E402

if TYPE_CHECKING:
    from clln.analysis.analyze import AgingResult, RunData, SusceptibilityResult


def _layout(data: RunData) -> np.ndarray:
    net = data.network
    return net.positions if net.positions is not None else spectral_layout(net.n_nodes, net.edges)


def _roles(data: RunData) -> dict[str, list[int]]:
    r = data.network.roles
    return {"sources": list(r.sources), "grounds": list(r.grounds), "clamps": list(r.clamps)}


def _spectrum(ax: plt.Axes, values: np.ndarray | None, label: str, **kw: object) -> None:
    if values is None:
        return
    mags = np.sort(np.abs(values))[::-1]
    mags = mags[mags > 0]
    ax.semilogy(np.arange(1, mags.size + 1), mags, label=label, **kw)


def susceptibility_figures(data: RunData, sus: SusceptibilityResult, folder: Path) -> list[Path]:
    """``susceptibility.png`` (maps and scatters) and ``spectra.png``; returns their paths."""
    pos, edges, roles = _layout(data), data.network.edges, _roles(data)
    num = sus.numbers
    fig, axes = plt.subplots(2, 2, figsize=(13, 11))
    draw_network(axes[0, 0], pos, edges, sus.norms, label="|s_j|", roles=roles)
    axes[0, 0].set_title(f"susceptibility |s_j| ({num['method']})")
    if sus.stiff_weight is not None:
        cost = num["cost"]
        draw_network(axes[0, 1], pos, edges, np.maximum(sus.stiff_weight, 1e-16),
                     label="stiff-mode weight", roles=roles)
        axes[0, 1].set_title(f"weight in the {cost['n_stiff']} stiff cost modes")
        axes[1, 0].loglog(sus.norms, np.maximum(sus.stiff_weight, 1e-16), ".", ms=3, alpha=0.6)
        axes[1, 0].set_xlabel("|s_j|")
        axes[1, 0].set_ylabel("stiff-mode weight")
        axes[1, 0].set_title(f"Spearman rho = {cost['spearman_norm_vs_stiff_weight']:.2f}")
    else:  # no empty panels: the skipped ones go, a note says why
        for ax in (axes[0, 1], axes[1, 0]):
            fig.delaxes(ax)
        fig.text(0.75, 0.75, "cost Hessian skipped\n(see analysis.json)", ha="center",
                 va="center", fontsize=11, color="grey")
    axes[1, 1].loglog(sus.norms, sus.relative, ".", ms=3, alpha=0.6)
    axes[1, 1].axhline(1.0, color="grey", lw=0.8)
    axes[1, 1].set_xlabel("|s_j|")
    axes[1, 1].set_ylabel("g_j / mean g of adjacent edges")
    axes[1, 1].set_title(
        f"relative conductance (Spearman {num['spearman_norm_vs_relative_conductance']:.2f})")
    for ax in axes[1]:
        ax.grid(True, which="both", alpha=0.3)
    maps = _save(fig, folder / "susceptibility.png", f"{data.name} — {data.run_id}")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _spectrum(axes[0], sus.cost_before, "before training", color="tab:grey")
    _spectrum(axes[0], sus.cost_after, "after training", color="tab:red")
    axes[0].set_title("cost Hessian |eigenvalues|")
    axes[0].set_xlabel("rank")
    _spectrum(axes[1], sus.physical_before, "before training", color="tab:grey")
    _spectrum(axes[1], sus.physical_after, "after training", color="tab:blue")
    axes[1].set_title("physical Hessian |eigenvalues|")
    axes[1].set_xlabel("rank")
    if sus.fraction_curve is not None:
        k = np.arange(1, sus.fraction_curve.size + 1)
        axes[2].semilogx(k, sus.fraction_curve)
        axes[2].axhline(0.9, color="grey", lw=0.8, ls="--")
        axes[2].set_xlabel("softest modes k")
        axes[2].set_ylabel("|S^(k)| / |S| (all edges)")
        axes[2].set_title("partial susceptibility")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    _drop_empty(fig, axes)
    spectra = _save(fig, folder / "spectra.png")
    return [maps, spectra]


def aging_figures(data: RunData, aging: AgingResult, folder: Path) -> list[Path]:
    """``aging.png``: relaxation fits, C(r) per snapshot and xi(t); returns its path."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    if aging.fits is not None and aging.steps is not None and aging.rmse is not None:
        t = aging.steps
        axes[0].loglog(np.maximum(t, 1), aging.rmse, "o", ms=3, color="black", label="data")
        first, last = aging.fits.window
        fine = np.linspace(first, last, 400)  # the fitted points only
        for name, fit in aging.fits.fits.items():
            mark = " (best)" if name == aging.fits.best else ""
            axes[0].loglog(np.maximum(fine, 1), fit.predict(fine),
                           label=f"{name}, dAIC {aging.fits.delta_aic[name]:.1f}{mark}")
        shown = aging.rmse[aging.rmse > 0]
        if shown.size:
            axes[0].set_ylim(shown.min() / 2, shown.max() * 2)
        axes[0].axvline(max(aging.fits.window[1], 1), color="grey", lw=0.8, ls=":")
        axes[0].set_xlabel("step (dotted: end of the fitted range)")
        axes[0].set_ylabel("sqrt(cost)")
        axes[0].set_title("relaxation")
        axes[0].legend(fontsize=8)
    corr = aging.correlations
    if corr is not None:
        colors = plt.cm.viridis(np.linspace(0, 1, max(len(corr.steps), 2)))
        for row, step, color in zip(corr.c, corr.steps, colors):
            axes[1].plot(corr.r, row, color=color, label=f"step {step}")
        axes[1].set_xlabel("r (mean edge lengths)")
        axes[1].set_ylabel("C(r) of g(t) - g(0)")
        axes[1].set_title("two-point correlation")
        if len(corr.steps) <= 10:
            axes[1].legend(fontsize=7)
        axes[2].plot(corr.steps, corr.xi, "o-")
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("xi (mean edge lengths)")
        axes[2].set_title("correlation length")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    _drop_empty(fig, axes)
    path = _save(fig, folder / "aging.png", f"{data.name} — {data.run_id}")
    return [path]


def _drop_empty(fig: Any, axes: Any) -> None:
    """Remove panels left without data by a skipped analysis (no blank axes in a figure)."""
    for ax in np.ravel(axes):
        if not ax.has_data():
            fig.delaxes(ax)


def _save(fig: Any, path: Path, title: str | None = None) -> Path:
    """Title, lay out, write (100 dpi) and close a figure; returns its path."""
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
