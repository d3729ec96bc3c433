"""Learning as aging (seed 000): relaxation fits and growing correlation lengths.

* Relaxation: sqrt(MSE) against the training step t is fitted by three models,
  by least squares on log sqrt(MSE) (relative residuals, so every decade of the
  decay counts), each to its global optimum by variable projection (see
  :func:`fit_relaxation`):

      exponential            y = A exp(-t / tau)                 (2 parameters)
      stretched exponential  y = A exp(-(t / tau)^beta)          (3)
      power law              y = A (1 + t / tau)^(-gamma)         (3)

  and compared by Akaike's information criterion for Gaussian residuals,
  ``AIC = N ln(RSS / N) + 2 k`` (lower is better; a difference above 10 is decisive).

* Two-point correlation of an edge quantity q_j (here the conductance change since
  the start, g_j(t) - g_j(0)) against the distance r between edge midpoints::

      C(r) = < dq_i dq_j >_{|x_i - x_j| in bin(r)} / < dq^2 >,   dq = q - mean(q)

  (pairs i != j; C -> 1 as r -> 0 for a smooth field). Sums over pairs come from
  ``scipy.spatial.cKDTree.count_neighbors`` with weights, so no m x m array is
  formed. The correlation length xi comes from a fit of A exp(-r / xi) beyond one
  edge (see :func:`correlation_length`). Distances are in units of the mean edge
  length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.optimize
from scipy.spatial import cKDTree

from clln.controller.errors import UserError


@dataclass(frozen=True)
class RelaxationFit:
    """One model fitted to log sqrt(MSE).

    Attributes
    ----------
    model : ``exponential``, ``stretched`` or ``power``.
    params : fitted parameters (A in the units of y, tau in steps, beta, gamma).
    rss : residual sum of squares of log y.
    aic : Akaike information criterion.
    n_points : points fitted.
    """

    model: str
    params: dict[str, float]
    rss: float
    aic: float
    n_points: int

    def predict(self, t: np.ndarray) -> np.ndarray:
        """Model values at steps t."""
        p = self.params
        return np.exp(_LOG_MODELS[self.model][0](np.asarray(t, float), *(p[k] for k in _NAMES[self.model])))


def _log_exponential(t: np.ndarray, log_a: float, tau: float) -> np.ndarray:
    return log_a - t / tau


def _log_stretched(t: np.ndarray, log_a: float, tau: float, beta: float) -> np.ndarray:
    return log_a - (t / tau) ** beta


def _log_power(t: np.ndarray, log_a: float, tau: float, gamma: float) -> np.ndarray:
    return log_a - gamma * np.log1p(t / tau)


_LOG_MODELS: dict[str, tuple[Callable[..., np.ndarray], int]] = {
    "exponential": (_log_exponential, 2),
    "stretched": (_log_stretched, 3),
    "power": (_log_power, 3),
}
_NAMES = {"exponential": ("log_A", "tau"), "stretched": ("log_A", "tau", "beta"),
          "power": ("log_A", "tau", "gamma")}


@dataclass(frozen=True)
class RelaxationFits:
    """The three fits and the best by AIC.

    Attributes
    ----------
    fits : model name -> fit.
    best : the model with the lowest AIC.
    delta_aic : model name -> its AIC minus the best AIC.
    window : (first, last) step of the points fitted.
    """

    fits: dict[str, RelaxationFit]
    best: str
    delta_aic: dict[str, float]
    window: tuple[float, float] = (0.0, 0.0)


def _linear_fit(basis: np.ndarray, log_y: np.ndarray, slope_bounds: tuple[float, float]
                ) -> tuple[float, float, float]:
    """Least squares of log_y = log_A - s * basis with s clipped to ``slope_bounds``
    (the optimum of a convex problem in one bounded variable is the clipped one).
    Returns (rss, log_A, s)."""
    b = basis - basis.mean()
    den = float(b @ b)
    s = -float(b @ (log_y - log_y.mean())) / den if den > 0 else slope_bounds[0]
    s = min(max(s, slope_bounds[0]), slope_bounds[1])
    log_a = float(np.mean(log_y + s * basis))
    r = log_y - (log_a - s * basis)
    return float(r @ r), log_a, s


def _profile(rss_of: Callable[[float], float], lo: float, hi: float, points: int = 400) -> float:
    """Global minimum of a one-variable profile: a fine grid over [lo, hi], then bounded
    Brent refinement in the best grid cell."""
    grid = np.linspace(lo, hi, points)
    values = np.array([rss_of(float(x)) for x in grid])
    i = int(np.nanargmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, points - 1)]
    res = scipy.optimize.minimize_scalar(rss_of, bounds=(a, b), method="bounded",
                                         options={"xatol": 1e-10 * max(1.0, abs(hi - lo))})
    return float(res.x) if res.fun <= values[i] else float(grid[i])


def fit_relaxation(steps: np.ndarray, y: np.ndarray, *, floor: float = 1e-6) -> RelaxationFits:
    """Fit y(t) (e.g. sqrt(MSE), positive) by the three relaxation models.

    Each model is linear in log A and in one slope once its nonlinear parameter is
    fixed (the exponential has none; the stretched exponential's beta, the power law's
    tau): those are solved exactly, and the nonlinear one is found by a global search
    of the profile residual (variable projection). The fits are therefore the global
    least-squares optima within the bounds (beta 0.02..5, gamma 1e-6..50, tau >= 1e-9),
    not whichever local optimum a start leads to, and small changes of the data (e.g.
    round-off of another sparse solver) change the numbers only a little.

    Parameters
    ----------
    steps : (N,) training steps t >= 0.
    y : (N,) positive values; non-positive or non-finite points are dropped.
    floor : the fit stops at the first point below ``floor`` times the first value
        (a run that converged sits at rounding noise, which no relaxation law describes).
    """
    t = np.asarray(steps, float)
    y = np.asarray(y, float)
    keep = np.isfinite(y) & (y > 0) & np.isfinite(t)
    t, y = t[keep], y[keep]
    if y.size:  # a converged run sits at rounding noise: fit only down to 1e-6 of the start
        below = np.flatnonzero(y < floor * y[0])
        if below.size:
            t, y = t[: below[0]], y[: below[0]]
    log_y = np.log(y)
    if t.size < 5:
        raise UserError(f"relaxation fits need at least 5 positive error values, got {t.size}")
    span = float(max(t.max(), 1.0))
    t_pos = np.maximum(t, 0.0)
    tau_min = 1e-9

    # exponential: log y = log A - t / tau, 1/tau in [0, 1/tau_min]
    _, log_a, rate = _linear_fit(t, log_y, (0.0, 1.0 / tau_min))
    params: dict[str, tuple[float, ...]] = {"exponential": (log_a, 1.0 / rate if rate > 0 else np.inf)}

    # stretched: log y = log A - c t^beta with c = tau^-beta >= 0; profile over beta
    def stretched_rss(beta: float) -> float:
        return _linear_fit(t_pos ** beta, log_y, (0.0, np.inf))[0]

    beta = _profile(stretched_rss, 0.02, 5.0)
    _, log_a, c = _linear_fit(t_pos ** beta, log_y, (0.0, np.inf))
    params["stretched"] = (log_a, c ** (-1.0 / beta) if c > 0 else np.inf, beta)

    # power: log y = log A - gamma log(1 + t / tau); profile over log10 tau
    def power_rss(log_tau: float) -> float:
        return _linear_fit(np.log1p(t_pos / 10.0 ** log_tau), log_y, (1e-6, 50.0))[0]

    log_tau = _profile(power_rss, np.log10(tau_min), np.log10(span) + 3.0, points=600)
    _, log_a, gamma = _linear_fit(np.log1p(t_pos / 10.0 ** log_tau), log_y, (1e-6, 50.0))
    params["power"] = (log_a, 10.0 ** log_tau, gamma)

    fits: dict[str, RelaxationFit] = {}
    n = t.size
    for name, (func, k) in _LOG_MODELS.items():
        p = params[name]
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            pred = func(t, *p)
        if not np.all(np.isfinite(pred)):
            continue
        rss = float(np.sum((pred - log_y) ** 2))
        aic = n * np.log(max(rss, 1e-300) / n) + 2 * k
        fits[name] = RelaxationFit(name, dict(zip(_NAMES[name], map(float, p))), rss,
                                   float(aic), n)
    if not fits:
        raise UserError("no relaxation model could be fitted to the error curve")
    best = min(fits, key=lambda m: fits[m].aic)
    return RelaxationFits(fits, best, {m: f.aic - fits[best].aic for m, f in fits.items()},
                          (float(t[0]), float(t[-1])))


def correlation_function(points: np.ndarray, values: np.ndarray, bins: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-point correlation C(r) of a field sampled at points.

    Parameters
    ----------
    points : (m, 2) positions (e.g. edge midpoints).
    values : (m,) the field.
    bins : (K + 1,) increasing bin edges in the units of ``points``; bins[0] > 0
        excludes nothing (self-pairs are removed exactly).

    Returns
    -------
    centres : (K,) bin centres.
    c : (K,) C(r) per bin (NaN for empty bins or a constant field).
    pairs : (K,) number of pairs i < j per bin.
    """
    v = np.asarray(values, float)
    dv = v - v.mean()
    var = float(np.mean(dv * dv))
    tree = cKDTree(np.asarray(points, float))
    bins = np.asarray(bins, float)
    counts = tree.count_neighbors(tree, bins, cumulative=True).astype(float)
    sums = tree.count_neighbors(tree, bins, weights=(dv, dv), cumulative=True)
    # remove self-pairs (distance 0, inside every cumulative radius) and count i < j once
    counts = (counts - v.size) / 2.0
    sums = (sums - np.sum(dv * dv)) / 2.0
    pair_n = np.diff(counts)
    pair_sum = np.diff(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where((pair_n > 0) & (var > 0), pair_sum / np.maximum(pair_n, 1) / var, np.nan)
    return 0.5 * (bins[1:] + bins[:-1]), c, pair_n


def correlation_length(r: np.ndarray, c: np.ndarray, pairs: np.ndarray | None = None, *,
                       r_min: float = 0.5) -> tuple[float, float]:
    """Correlation length from a fit of ``C(r) = A exp(-r / xi)`` to the bins with
    r >= r_min (one mean edge length and beyond by default, in the units of r).

    Edge quantities carry a large uncorrelated part at the scale of one edge (C drops
    from 1 at r = 0 to well below it between neighbours: a "nugget"), so the length is
    read from the decay of the correlated part rather than from where C crosses 1/e.
    Bins are weighted by their pair counts (``scipy.optimize.curve_fit`` with
    sigma = 1 / sqrt(pairs)).

    Returns
    -------
    xi : correlation length (units of r); NaN when no decay can be fitted.
    amplitude : A.
    """
    r = np.asarray(r, float)
    c = np.asarray(c, float)
    n = np.ones_like(r) if pairs is None else np.asarray(pairs, float)
    ok = np.isfinite(c) & (r >= r_min) & (n > 0)
    if ok.sum() < 3 or not np.any(c[ok] > 0):
        return float("nan"), float("nan")
    r, c, n = r[ok], c[ok], n[ok]
    start_amp = max(float(c[0]), 1e-3)
    start_xi = float(r[np.argmax(c < start_amp / np.e)]) if np.any(c < start_amp / np.e) else float(r[-1])
    try:
        params, _ = scipy.optimize.curve_fit(
            lambda x, amp, xi: amp * np.exp(-x / xi), r, c, p0=[start_amp, max(start_xi, 1e-2)],
            sigma=1.0 / np.sqrt(n), bounds=([0.0, 1e-3], [10.0, 1e4]), maxfev=20_000,
        )
    except (RuntimeError, ValueError):
        return float("nan"), float("nan")
    return float(params[1]), float(params[0])


@dataclass(frozen=True, eq=False)
class CorrelationHistory:
    """C(r) of the conductance change since the start, at each snapshot.

    Attributes
    ----------
    steps : (S,) snapshot steps.
    r : (K,) bin centres, mean edge lengths.
    c : (S, K) C(r) per snapshot.
    xi : (S,) correlation length per snapshot, mean edge lengths.
    amplitude : (S,) amplitude A of the fitted exponential per snapshot.
    """

    steps: np.ndarray
    r: np.ndarray
    c: np.ndarray
    xi: np.ndarray
    amplitude: np.ndarray


def correlation_history(midpoints: np.ndarray, edge_length: float, initial: np.ndarray,
                        steps: np.ndarray, snapshots: np.ndarray, *, n_bins: int = 30,
                        r_max: float | None = None) -> CorrelationHistory:
    """C(r) and xi of g(t) - g(0) at every snapshot.

    Parameters
    ----------
    midpoints : (m, 2) edge midpoints.
    edge_length : the length unit (mean edge length) in the units of ``midpoints``.
    initial : (m,) conductances at the start, S.
    steps : (S,) snapshot steps.
    snapshots : (S, m) conductances, S.
    n_bins : distance bins, equally spaced from 0 to ``r_max``.
    r_max : largest distance, mean edge lengths (default: a third of the network's
        extent).
    """
    pts = np.asarray(midpoints, float) / edge_length
    if r_max is None:
        r_max = float(np.max(np.ptp(pts, axis=0))) / 3.0
    bins = np.linspace(0.0, r_max, n_bins + 1)
    bins[0] = 1e-12
    rows, fits = [], []
    r = 0.5 * (bins[1:] + bins[:-1])
    for snap in np.asarray(snapshots, float):
        r, c, pairs = correlation_function(pts, snap - initial, bins)
        rows.append(c)
        fits.append(correlation_length(r, c, pairs))
    fitted = np.asarray(fits, float).reshape(-1, 2)
    return CorrelationHistory(np.asarray(steps), r, np.asarray(rows).reshape(-1, r.size),
                              fitted[:, 0], fitted[:, 1])
