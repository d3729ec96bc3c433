"""A few shipped protocols still end bit for bit where they ended when the goldens in
``tests/data/goldens`` were recorded (``benchmarks/goldens.py --record``); the script's
``--check`` covers every protocol."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "tests" / "data" / "goldens"


def _goldens_module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("goldens", ROOT / "benchmarks" / "goldens.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["goldens"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


goldens = _goldens_module()


@pytest.mark.parametrize("name", [
    "demo.sim", "regression-2x2.sim", "bench-regression-2x2.simulate", "bench-regression-2x2.emulate",
])
def test_final_state_is_bit_identical_to_the_golden(name: str) -> None:
    stem, target = name.rsplit(".", 1)
    path = ROOT / "protocols" / f"{stem}.toml"
    with np.load(GOLDENS / f"{name}.npz") as gold:
        want, want_solver = gold["state"], str(gold["solver"])
    state, solver = goldens.final_state(goldens.Case(path, target), limit_s=float("inf"))
    if solver != want_solver:
        pytest.skip(f"golden recorded with the {want_solver} solver, this machine uses {solver}")
    assert state.dtype == want.dtype and state.shape == want.shape
    assert state.tobytes() == want.tobytes(), f"max |diff| {np.max(np.abs(state - want)):.3g}"


def test_every_shipped_protocol_has_a_golden() -> None:
    names = {case.name for case in goldens.cases()}
    recorded = {p.stem for p in GOLDENS.glob("*.npz")}
    assert names <= recorded, f"no golden for {sorted(names - recorded)}"
