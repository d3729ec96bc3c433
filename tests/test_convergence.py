"""Shipped protocols stay down once converged (the full check over 5 seeds of every
protocol is benchmarks/protocol_convergence.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clln.analysis.convergence import growth_after_convergence
from clln.compose import build_experiment, make_trainer
from clln.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]


def errors(name: str, seed: int) -> np.ndarray:
    path = ROOT / "protocols" / f"{name}.toml"
    proto, _ = load_protocol(path)
    exp = build_experiment(proto, source=str(path), base_dir=path.parent, seed=seed)
    out: list[float] = []
    make_trainer(exp).run([lambda r: out.append(r.error)])
    return np.array(out)


@pytest.mark.parametrize(("name", "seed"), [("demo", 0), ("demo", 1)])
def test_no_growth_after_convergence(name: str, seed: int) -> None:
    c = growth_after_convergence(errors(name, seed))
    assert c.growth < 3.0, c
    assert c.floor < 1e-10, c


def test_backoff_halves_the_rate_only_for_growth_after_convergence() -> None:
    """The jammed-2x2 pattern (seed 3): the error at 2.5e-23, six decades below its start,
    then updates growing 1.3x per step; before convergence the same growth is left alone."""
    from clln.controller.trainer import Backoff

    early = Backoff(2)
    for k in range(10):
        early.observe(1e-2, 1e-3 * 1.3**k)  # still far from converged
    assert early.scale == 1.0
    late = Backoff(2)
    late.observe(5e-2, 1e-3)
    for k in range(10):
        late.observe(2.5e-23, 1e-14 * 1.3**k)
    assert late.halvings == 7 and late.scale == 0.5**7  # from twice the lowest norm on, every growing step
    again = Backoff(2)
    again.load_state_dict(late.state_dict())
    assert again.state_dict() == late.state_dict()


def test_the_measure_sees_a_burst() -> None:
    e = np.concatenate([np.geomspace(1e-1, 1e-12, 200), np.full(200, 1e-12)])
    burst = e.copy()
    burst[300:340] = 1e-3
    assert growth_after_convergence(e).growth < 3.0
    assert growth_after_convergence(burst).growth > 1e6
