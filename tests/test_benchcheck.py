"""``clln check`` drives test patterns and names wiring faults injected into the
emulated bench (whose physics is the simulator's, not the check's own solver)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clln.benchcheck import check_bench, node_voltages

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "protocols" / "benches" / "example-16.toml"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "clln.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.slow
def test_check_names_two_swapped_ai_channels_and_a_swapped_chain_pair() -> None:
    result = cli("check", str(BENCH), "--emulate", "--fault", "swap-ai:ai3:ai4", "--fault", "swap-chain:2:3")
    assert result.returncode == 3, result.stderr
    faults = [line for line in result.stdout.splitlines() if line.startswith("FAULT: ")]
    assert faults == [
        "FAULT: AI channels ai3 and ai4 are swapped: ai3 reads node 4 and ai4 reads node 3 "
        "(the ai list maps ai3 to node 3)",
        "FAULT: chain positions 2 and 3 are swapped: the pot at chain 2 sits in edge 3 (nodes 4-5) "
        "and the pot at chain 3 in edge 2 (nodes 3-4)",
    ]


@pytest.mark.parametrize(("faults", "expected"), [
    ([], []),
    (["short:4"], ["edge 4 (nodes 6-7, chain 4) is shorted"]),
    (["swap-ai:ai0:ai8", "swap-chain:0:15", "open:5"],
     ["AI channels ai0 and ai8 are swapped", "edge 5 (nodes 7-8, chain 5) is open",
      "chain positions 0 and 15 are swapped"]),
])
def test_check_explains_each_fault_and_passes_a_sound_bench(faults: list[str], expected: list[str]) -> None:
    out = check_bench(BENCH, emulate=True, faults=faults)
    r = out.result
    assert len(r.lines) == len(expected)
    for start in expected:
        assert sum(line.startswith(start) for line in r.lines) == 1
    # Only part tolerance is left: 1-2 % of the drive on this uncalibrated bench.
    assert r.rms_after < 0.02 * r.amplitude
    assert r.patterns == 17 * 6 and r.settings == 17
    assert np.all(out.taps == 128)  # the taps found are put back


def test_check_refuses_faults_on_real_hardware() -> None:
    from clln.controller.errors import UserError

    with pytest.raises(UserError, match="--fault needs --emulate"):
        check_bench(BENCH, emulate=False, faults=["swap-ai:ai3:ai4"])


def test_node_voltages_match_a_hand_solved_ladder() -> None:
    """Source 1 V at node 0, ground at node 2, 1 kOhm and 3 kOhm in series, and a
    floating node 3 hanging from node 1 by 5 kOhm: node 1 sits at 3/4 V, node 3 too."""
    incidence = np.array([[1, -1, 0, 0], [0, 1, -1, 0], [0, 1, 0, -1]], dtype=float)
    g = 1.0 / np.array([1e3, 3e3, 5e3])
    v = node_voltages(incidence, np.vstack([g, 2 * g]), np.array([0, 2]), np.array([[1.0, 0.0], [2.0, 0.0]]))
    assert v.shape == (2, 2, 4)
    assert np.allclose(v[0, 0], [1.0, 0.75, 0.0, 0.75], atol=1e-6)
    assert np.allclose(v[0, 1], 2 * v[0, 0])
    assert np.allclose(v[1], v[0], atol=1e-6)  # scaling every conductance changes no voltage


def test_on_a_large_bench_the_swapped_pair_is_among_the_proposed_ones() -> None:
    """Beyond 24 edges the check tries only the chain pairs the readings point at."""
    from clln.benchcheck import _chain_pairs

    rng = np.random.default_rng(0)
    m = 40
    predicted = rng.normal(size=(m + 1, 6, 9))
    measured = predicted.copy()
    measured[1 + 7], measured[1 + 31] = predicted[1 + 31], predicted[1 + 7]  # pots 7 and 31 swapped
    assert _chain_pairs(measured, predicted) == [(7, 31)]
    assert len(_chain_pairs(measured[:11], predicted[:11])) == 45  # 10 edges: every pair
