"""Relaxation fits and two-point correlations (clln.analysis.aging) against known
curves and brute-force pair sums."""

from __future__ import annotations

import numpy as np
import pytest

from clln.analysis.aging import (
    correlation_function,
    correlation_history,
    correlation_length,
    fit_relaxation,
)
from clln.controller.errors import UserError

T = np.arange(0.0, 3000.0, 15.0)


@pytest.mark.parametrize(
    ("curve", "best", "truth"),
    [
        (lambda t: 0.3 * np.exp(-((t / 200.0) ** 0.45)), "stretched", {"tau": 200.0, "beta": 0.45}),
        (lambda t: 0.3 * np.exp(-t / 400.0), "exponential", {"tau": 400.0}),
        (lambda t: 0.3 * (1.0 + t / 30.0) ** -1.2, "power", {"tau": 30.0, "gamma": 1.2}),
    ],
)
def test_fits_pick_the_generating_model(curve, best: str, truth: dict[str, float]) -> None:
    noise = np.exp(0.02 * np.random.default_rng(0).standard_normal(T.size))
    fits = fit_relaxation(T, curve(T) * noise)
    if best == "exponential":  # nested in the stretched one: it may tie, never lose by much
        assert fits.delta_aic["stretched"] < 3 or fits.best == "exponential"
        assert fits.delta_aic["exponential"] < 3
    else:
        assert fits.best == best
        assert fits.delta_aic["exponential"] > 10
    for key, value in truth.items():
        assert fits.fits[best].params[key] == pytest.approx(value, rel=0.05)
    assert fits.fits[best].predict(T[:3]) == pytest.approx(curve(T[:3]), rel=0.05)


def test_aic_is_the_gaussian_formula() -> None:
    y = 0.3 * np.exp(-T / 400.0) * np.exp(0.05 * np.random.default_rng(1).standard_normal(T.size))
    fit = fit_relaxation(T, y).fits["exponential"]
    log_pred = np.log(fit.predict(T))
    rss = float(np.sum((np.log(y) - log_pred) ** 2))
    assert fit.rss == pytest.approx(rss, rel=1e-9)
    assert fit.aic == pytest.approx(T.size * np.log(rss / T.size) + 4, rel=1e-9)


def test_too_few_points_are_a_user_error() -> None:
    with pytest.raises(UserError, match="at least 5"):
        fit_relaxation(np.arange(4.0), np.ones(4))


def test_correlation_function_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    pts = rng.random((400, 2)) * 10
    values = np.sin(pts[:, 0]) + 0.5 * rng.standard_normal(400)
    bins = np.linspace(1e-9, 4.0, 9)
    r, c, pairs = correlation_function(pts, values, bins)
    dv = values - values.mean()
    i, j = np.triu_indices(400, 1)
    dist = np.linalg.norm(pts[i] - pts[j], axis=1)
    which = np.digitize(dist, bins)
    for k in range(1, bins.size):
        sel = which == k
        assert pairs[k - 1] == sel.sum()
        assert c[k - 1] == pytest.approx(np.mean(dv[i[sel]] * dv[j[sel]]) / dv.var(), rel=1e-9)
    np.testing.assert_allclose(r, 0.5 * (bins[1:] + bins[:-1]))


def test_correlation_length_of_an_exponential_with_a_nugget() -> None:
    r = np.linspace(0.1, 12, 40)
    xi, amp = correlation_length(r, 0.4 * np.exp(-r / 2.5))
    assert xi == pytest.approx(2.5, rel=1e-6) and amp == pytest.approx(0.4, rel=1e-6)
    assert np.isnan(correlation_length(r, -np.ones_like(r))[0])


def test_correlation_history_sees_a_growing_length() -> None:
    # fields smoothed over a growing scale: the fitted xi must grow with it
    rng = np.random.default_rng(4)
    pts = rng.random((1500, 2)) * 40
    noise = rng.standard_normal((60, 2))
    centres = rng.random((60, 2)) * 40
    snaps = []
    for scale in (1.0, 2.0, 4.0):
        d = np.linalg.norm(pts[:, None] - centres[None], axis=-1)
        snaps.append(np.exp(-d / scale) @ noise[:, 0])
    hist = correlation_history(pts, 1.0, np.zeros(1500), np.array([1, 2, 3]), np.array(snaps),
                               n_bins=25, r_max=15.0)
    assert hist.c.shape == (3, 25)
    assert np.all(np.diff(hist.xi) > 0)
