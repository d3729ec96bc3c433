"""``clln calibrate`` end to end on the emulated bench, as a subprocess: exit codes, one-line
errors, the files written, and a run recording the calibration it used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "protocols" / "benches" / "example-16.toml"
PROTOCOL = ROOT / "protocols" / "bench-regression-2x2.toml"
Result = subprocess.CompletedProcess


def clln(*args: object, cwd: Path) -> Result:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    return subprocess.run([sys.executable, "-m", "clln.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def parallel(*calls: tuple[object, ...], cwd: Path) -> list[Result]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda a: clln(*a, cwd=cwd), calls))


def one_line_error(result: Result, text: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and text in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Calibrate a copy of the example bench (and, meanwhile, the error cases)."""
    work = tmp_path_factory.mktemp("bench")
    bench = work / "example-16.toml"
    bench.write_text(BENCH.read_text())
    return {"work": work, "bench": bench, "done": clln("calibrate", bench, "--emulate", cwd=work)}


def test_calibrate_writes_the_calibration_and_its_report(calibrated: dict[str, object]) -> None:
    result = calibrated["done"]
    assert isinstance(result, Result) and result.returncode == 0, result.stderr
    work = calibrated["work"]
    assert isinstance(work, Path)
    (path,) = work.glob("example-16.cal-*.json")
    assert f"calibration: {path}" in result.stdout and "no edge flagged" in result.stdout
    assert (work / path.name.replace(".json", ".png")).stat().st_size > 10_000
    assert "DAQ acquisitions" in result.stdout and "tap writes" in result.stdout
    data = json.loads(path.read_text())
    assert data["kind"] == "clln-calibration" and data["scale"] == "smu"
    assert data["summary"]["cost"]["bench_seconds"] < 600
    assert len(data["table"]) == 16 and len(data["table"][0]) == 129


@pytest.mark.parametrize(("args", "text"), [
    (("--fault", "open:3"), "--fault injects faults into the emulated bench"),
    (("--emulate", "--verify"), "no calibration to verify"),
    (("--emulate", "--edges", "2,40"), "--edges '2,40': edges must be in 0..15"),
    (("--emulate", "--fault", "melt:3"), "unknown kind 'melt'"),
    (("--emulate", "--calibration", "missing.json", "--verify"), "missing.json: no such calibration file"),
])
def test_calibrate_errors_are_one_line(args: tuple[str, ...], text: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    """The real entry point in-process (these fail before any port is opened)."""
    from clln import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["clln", "calibrate", str(BENCH), *args])
    with pytest.raises(SystemExit) as code:
        cli.main()
    out, err = capfd.readouterr()
    one_line_error(Result([], int(code.value.code or 0), out, err), text)
    assert not list(tmp_path.iterdir()) and not list(BENCH.parent.glob("*.cal-*"))


def test_verify_train_and_a_mismatched_bench(calibrated: dict[str, object]) -> None:
    work, bench = calibrated["work"], calibrated["bench"]
    assert isinstance(work, Path) and isinstance(bench, Path)
    (path,) = work.glob("example-16.cal-*.json")
    text = bench.read_text().replace("grounds = [7]", f'grounds = [7]\ncalibration = "{path.name}"')
    bench.write_text(text)
    other = work / "other.toml"  # another emulated bench: the calibration does not fit it
    other.write_text(text.replace('preset = "pot-bench"\nseed = 1', 'preset = "pot-bench"\nseed = 2'))
    holds, broken, mismatched, trained = parallel(
        ("calibrate", bench, "--emulate", "--verify"),
        ("calibrate", bench, "--emulate", "--verify", "--fault", "stuck:2:30", "--fault", "open:9"),
        ("check", other, "--emulate"),
        ("train", PROTOCOL, "--bench", bench, "--emulate", "--steps", "5", "--out", work / "runs"),
        cwd=work)
    assert holds.returncode == 0, holds.stderr
    assert "holds" in holds.stdout and "no edge flagged" in holds.stdout
    assert broken.returncode == 3, broken.stderr
    assert "edge 2 stuck, edge 9 open" in broken.stdout and "does NOT hold" in broken.stdout
    assert mismatched.returncode == 0, mismatched.stderr
    assert mismatched.stderr.startswith("warning: ") and "made for another bench description" in mismatched.stderr
    assert "calibrated R (ohm)" in mismatched.stdout
    assert trained.returncode == 0, trained.stderr
    assert f"calibration {path.stem.split('.cal-')[1]}" in trained.stdout
    shown = json.loads(clln("show", "latest", "--json", "--out", work / "runs", cwd=work).stdout)
    assert shown["backend"]["calibration"]["id"] == json.loads(path.read_text())["id"]
