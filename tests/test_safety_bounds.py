"""The limit check is sized by the controller's own clamp formula.

A bench's limit check admits the boundary voltages :func:`boundary_bounds` gives for a
protocol (sources with ground, and the clamps of its nudge or its scheme). Here every
clamp voltage the trainer actually asks the backend for over a training run is recorded
by a wrapping backend and must lie inside those bounds; the same recordings fall outside
bounds made slightly narrower, so the check can fail.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from wrapping import SeamOnly

import clln.benchrun as benchrun
from clln.benchfile import parse_bench
from clln.compose import build_experiment, build_scheme
from clln.controller import NetworkBackend, Trainer
from clln.controller.backend import Measurement
from clln.controller.schemes import boundary_bounds
from clln.protocol import parse_protocol

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "protocols"
BENCH = PROTOCOLS / "benches" / "example-16.toml"

SCHEMES = {
    "plain": "",
    "overclamp": "[training.scheme.overclamp]\neta = 3.0\nmargin = 0.0\nsymmetric = false\n",
    "symmetric": "[training.scheme.overclamp]\neta = 3.0\nmargin = 0.0\nsymmetric = true\n",
    "rails": "[training.scheme.overclamp]\neta = 30.0\nmargin = 0.0\nrails = [-0.2, 1.1]\n",
}


class Recording(SeamOnly):
    """A backend that passes everything to ``inner`` and keeps every clamp array it is
    asked to impose."""

    def __init__(self, inner: NetworkBackend) -> None:
        super().__init__(inner)
        self.clamps: list[np.ndarray] = []

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> Measurement:
        if clamps is not None:
            self.clamps.append(np.array(clamps, dtype=float))
        return self.inner.measure(sources, clamps)


def recorded_clamps(backend: NetworkBackend, run: Callable[[NetworkBackend], None]) -> np.ndarray:
    """Every clamp voltage (flat, V) that ``run`` asks the wrapped ``backend`` for."""
    rec = Recording(backend)
    run(rec)
    assert rec.clamps, "the run asked for no clamped measurement"
    return np.concatenate([c.ravel() for c in rec.clamps])


def outside(values: np.ndarray, bounds: tuple[float, float]) -> int:
    lo, hi = bounds
    return int(np.count_nonzero((values < lo) | (values > hi)))


def narrowed(bounds: tuple[float, float], values: np.ndarray) -> tuple[float, float]:
    """The bounds with the side the recorded clamps come nearest to pulled in just past
    the most extreme of them."""
    lo, hi = bounds
    if hi - values.max() <= values.min() - lo:
        return lo, float(values.max()) - 1e-9
    return float(values.min()) + 1e-9, hi


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("protocol", ["demo", "allostery", "classification-3"])
def test_every_clamp_the_trainer_asks_for_is_inside_the_checked_bounds(protocol: str, scheme: str) -> None:
    text = (PROTOCOLS / f"{protocol}.toml").read_text() + "\n" + SCHEMES[scheme]
    proto = parse_protocol(text, f"{protocol}.toml")
    exp = build_experiment(proto, source=f"{protocol}.toml", base_dir=PROTOCOLS, steps=40)
    bounds = boundary_bounds(exp.task, exp.config.eta, build_scheme(proto.training.scheme))

    def run(backend: NetworkBackend) -> None:
        Trainer(backend, exp.task, exp.rule, exp.config, exp.batch_rng, scheme=exp.scheme).run()

    clamps = recorded_clamps(exp.backend, run)
    assert outside(clamps, bounds) == 0, (bounds, clamps.min(), clamps.max())
    # the check can fail: narrower bounds leave some of the same clamps outside, and so
    # do the bounds of the protocol's own nudge when the scheme overclamps (a stale formula)
    assert outside(clamps, narrowed(bounds, clamps)) > 0
    if scheme in ("overclamp", "symmetric"):
        assert outside(clamps, boundary_bounds(exp.task, exp.config.eta)) > 0


def test_the_bench_limit_check_admits_every_clamp_of_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the bench's model (``--simulate``, noise off): the voltages the bench's limit
    check was given bound every clamp of an overclamped run; with the plain protocol's
    nudge in place of the scheme's (a stale formula) they would not."""
    checked: list[np.ndarray] = []
    real = benchrun.check_limits

    def spy(values: np.ndarray, *args: object, **kwargs: object) -> None:
        checked.append(np.array(values, dtype=float))
        real(values, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(benchrun, "check_limits", spy)
    btext = BENCH.read_text().replace('preset = "pot-bench"', 'preset = "ideal"', 1)
    text = (PROTOCOLS / "demo.toml").read_text() + "\n" + SCHEMES["rails"].replace("30.0", "4.0") \
        + "[training.scheme.residuals]\n"
    proto = parse_protocol(text, "demo.toml")
    exp, session = benchrun.bench_experiment(
        proto, parse_bench(btext, str(BENCH)), btext, source="demo.toml", bench_source=str(BENCH),
        target="simulate", steps=30)
    try:
        def run(backend: NetworkBackend) -> None:
            Trainer(backend, exp.task, exp.rule, exp.config, exp.batch_rng, scheme=exp.scheme).run()

        clamps = recorded_clamps(exp.backend, run)
    finally:
        session.close()
    assert len(checked) == 1
    bounds = (min(float(checked[0].min()), 0.0), max(float(checked[0].max()), 0.0))
    assert outside(clamps, bounds) == 0
    stale = boundary_bounds(exp.task, 1.0)  # the protocol's nudge, not the scheme's
    assert outside(clamps, stale) > 0
