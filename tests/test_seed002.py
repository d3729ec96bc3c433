"""Seed 002's limit-cycle experiment as a file (protocols/seed002/limit-cycles.toml) and
``clln analyze FILE``: validated keys, the model beside the measurements, the figures.
A reduced tau list keeps it fast; benchmarks/seed002.py runs the shipped one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clln.controller.errors import ProtocolError
from clln.seed002 import LimitCycleExperiment, parse_limit_cycles

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "protocols" / "seed002" / "limit-cycles.toml"
DATA = ROOT / "benchmarks" / "data" / "seed002"


def reduced(tmp_path: Path, **changes: str) -> Path:
    """The shipped file with two periods (4 and 10 ms) and a short burn-in, written beside
    a copy of nothing: ``measured.data`` points at the repository's data."""
    text = SHIPPED.read_text()
    lines = {"taus_s": "[0.004, 0.01]", "burn_in_s": "0.1", "small_tau_max_s": "0.01",
             "bowtie_taus_s": "[0.01]", "data": f'"{DATA}"', **changes}
    out = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        out.append(f"{key} = {lines[key]}" if key in lines and "=" in line else line)
    path = tmp_path / "quick.toml"
    path.write_text("\n".join(out) + "\n")
    return path


def test_shipped_file_is_valid_and_reads_the_measurements() -> None:
    exp = LimitCycleExperiment(SHIPPED)
    assert exp.spec.cycle.taus_s[0] == 0.004 and exp.spec.cycle.taus_s[-1] == 1.0
    assert exp.spec.params.multiplier_gain == 80.0
    assert sorted(exp.measured) == [1, 2, 3]
    # the measured tables are the seed's files, read as they are
    raw = np.loadtxt(DATA / "measured-DG2-exp2.csv", delimiter=",")
    np.testing.assert_array_equal(exp.measured[2][0], raw)
    assert [p.name for p in exp.bowties] == ["bowtie-exp1-0.02s.csv", "bowtie-exp1-0.08s.csv",
                                             "bowtie-exp1-0.2s.csv"]


@pytest.mark.parametrize(("change", "key"), [
    ('taus_s = [0.004, 0.0035]', "cycle.taus_s"),            # not increasing
    ('taus_s = [0.004, 0.003]', "cycle.taus_s"),
    ('taus_s = [0.004, 0.0105]', "cycle.taus_s"),            # 10.5 steps: not an even count
    ('eta = 1.5', "cycle.eta"),                              # no nudge amplifier on the pair
    ('reference = 4', "measured.reference"),
    ('small_tau_max_s = 0.004', "measured.small_tau_max_s"),  # one tau left for the slope
    ('bowtie_taus_s = [0.3]', "measured.bowtie_taus_s"),
    ('multiplier_gain = -80.0', "edge_circuit.multiplier_gain"),
    ('stepsize = 3', "cycle.stepsize"),                      # unknown key
    ('kind = "regression"', "kind"),
])
def test_bad_keys_name_the_file_and_the_key(change: str, key: str) -> None:
    name = change.split("=")[0].strip()
    text = SHIPPED.read_text()
    anchor = {"stepsize": "eta", "kind": "kind"}.get(name, name)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split("=")[0].strip() == anchor)
    if name == anchor:
        lines[at] = change
    else:
        lines.insert(at, change)
    with pytest.raises(ProtocolError) as info:
        parse_limit_cycles("\n".join(lines), "lc.toml")
    message = str(info.value)
    assert message.startswith("lc.toml: ") and "\n" not in message, message
    assert key in message and ("allowed" in message or "should be" in message), message


def test_missing_measurements_are_refused_before_anything_runs(tmp_path: Path) -> None:
    path = reduced(tmp_path, data='"nowhere"')
    with pytest.raises(ProtocolError, match=r"quick.toml: measured.data: measured-DG2-exp1.csv not found"):
        LimitCycleExperiment(path)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clln.cli", "analyze", *args], capture_output=True,
                          text=True, cwd=cwd,
                          env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")})


@pytest.mark.slow
def test_analyze_prints_the_model_beside_the_measurements(tmp_path: Path) -> None:
    path = reduced(tmp_path)
    done = _cli(str(path), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "runs" / "analyses" / "seed002-limit-cycles"
    numbers = json.loads((folder / "analysis.json").read_text())
    assert (folder / "seed002-d2-mse.png").stat().st_size > 10_000
    assert (folder / "seed002-bowtie.png").stat().st_size > 10_000
    rows = numbers["rows"]
    assert [r["tau_s"] for r in rows] == [0.004, 0.01]
    # the slope printed is that of the model's own D^2 (fitted here independently)
    d2 = np.array([r["model_d2"] for r in rows])
    slope = np.log(d2[1] / d2[0]) / np.log(0.01 / 0.004)
    assert numbers["model"]["d2_slope_small_tau"] == pytest.approx(slope, rel=1e-9)
    assert 1.5 <= slope <= 2.1, slope  # seed 002: D^2 ~ tau^2 at small tau
    # measured values are the reference experiment's csv interpolated in log-log
    table = np.loadtxt(DATA / "measured-DG2-exp1.csv", delimiter=",")
    below = table[table[:, 0] <= 0.004][-1]
    above = table[table[:, 0] >= 0.004][0]
    if below[0] == above[0]:
        want = below[1]
    else:
        w = np.log(0.004 / below[0]) / np.log(above[0] / below[0])
        want = below[1] ** (1 - w) * above[1] ** w
    assert rows[0]["measured_d2"] == pytest.approx(want, rel=1e-12)
    # the measured slopes: each experiment's smallest 30 % of taus
    for k in (1, 2, 3):
        md = np.loadtxt(DATA / f"measured-DG2-exp{k}.csv", delimiter=",")
        few = md[md[:, 0] <= np.quantile(md[:, 0], 0.3)]
        fit = np.polyfit(np.log(few[:, 0]), np.log(few[:, 1]), 1)[0]
        assert numbers["measured"][f"exp{k}"]["d2_slope_small_tau"] == pytest.approx(fit, rel=1e-9)
    out = done.stdout
    assert "measured D2 (exp1)" in out and "D2 log-log slope" in out and "within 1.5-2.1" in out
    assert "tau  0.010 s" in out  # progress per period


@pytest.mark.slow
def test_bad_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = reduced(tmp_path, taus_s="[0.004, 0.0105]")
    done = _cli(str(path), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "quick.toml" in lines[0] and "cycle.taus_s" in lines[0], done.stderr
    assert not (tmp_path / "runs").exists()  # nothing written
    done = _cli("latest", "--what", "seed002", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2 and "not a seed 002 experiment file" in done.stderr, done.stderr


def test_train_points_to_analyze() -> None:
    from clln.protocol import parse_protocol

    with pytest.raises(ProtocolError, match=r"^lc.toml: kind: 'limit-cycles' is a seed 002 experiment, "
                                            r"not a training protocol; run it with: clln analyze lc.toml$"):
        parse_protocol(SHIPPED.read_text(), "lc.toml")
