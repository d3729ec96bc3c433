"""Bounds on sizes: estimates before building, 64-bit integers, nesting, sweeps."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from clln.controller.errors import ProtocolError
from clln.protocol import parse_protocol
from clln.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "protocols" / "demo.toml").read_text()


def clln(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "clln.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("old,new", [("rows = 5", "rows = 1000000"), ("inputs = 2 ", "inputs = 1000000 "),
                                     ("kind = \"lattice\"", "kind = \"delaunay\"\nnodes = 1000000000 #")])
def test_a_run_too_large_is_refused_with_its_estimate_before_building(tmp_path: Path, old: str, new: str) -> None:
    text = DEMO.replace(old, new)
    if 'kind = "delaunay"' in text:
        text = text.replace("rows = 5\ncols = 5\n", "")
    (tmp_path / "p.toml").write_text(text)
    t0 = time.perf_counter()
    out = clln("train", "p.toml", cwd=tmp_path, env={"CLLN_MAX_MEMORY_BYTES": str(2**28)})
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "GiB" in out.stderr and "CLLN_MAX_MEMORY_BYTES" in out.stderr
    assert time.perf_counter() - t0 < 60 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["--seed", str(2**63)], ["--steps", str(2**63)]])
def test_integers_beyond_64_bits_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    out = clln("train", str(ROOT / "protocols" / "demo.toml"), *args, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_seeds_in_files_stay_within_64_bits() -> None:
    with pytest.raises(ProtocolError, match="seed: must be within 0..9.22337e\\+18"):
        parse_protocol(DEMO.replace("seed = 1", f"seed = {2**63}"), "p")


@pytest.mark.parametrize("body", ["x = " + "[" * 5000 + "]" * 5000, "x = " + "[" * 40 + "]" * 40])
def test_deep_nesting_is_one_line(body: str) -> None:
    with pytest.raises(ProtocolError, match="nested too deeply"):
        parse_protocol(f'format = 1\nname = "n"\n{body}\n', "p")


def test_sweep_validation_is_linear(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(DEMO)
    alphas = ", ".join(f"{0.01 + i * 1e-6:.8f}" for i in range(1000))
    etas = ", ".join(f"{0.05 + i * 1e-3:.4f}" for i in range(100))
    (tmp_path / "s.toml").write_text(f'format = 1\nname = "s"\nprotocol = "p.toml"\n[grid]\n'
                                     f'"training.alpha" = [{alphas}]\n"edges.gmax" = [{etas}]\n')
    sweep = load_sweep(tmp_path / "s.toml")
    assert len(sweep.runs) == 100_000
    assert "alpha = 0.010999" in sweep.runs[-1].protocol_text  # the text is written on demand


def test_a_silent_scheduler_is_a_bounded_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from clln import sweep
    from clln.controller.errors import UserError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    monkeypatch.setattr(sweep, "SCHEDULER_TIMEOUT_S", 2.0)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="did not complete its handshake within 2 s"):
        sweep.open_client(f"tcp://127.0.0.1:{listener.getsockname()[1]}", None)
    assert time.perf_counter() - t0 < 10
    listener.close()


def test_a_sweep_whose_every_run_failed_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Every run of the sweep fails (here: each run's protocol is broken on the worker); the
    sweep says so in one line and exits 2, with its results written."""
    from clln import cli, sweep

    (tmp_path / "p.toml").write_text(DEMO)
    (tmp_path / "s.toml").write_text('format = 1\nname = "s"\nprotocol = "p.toml"\nseeds = [1, 2]\n'
                                     '[grid]\n"training.steps" = [2]\n')

    class Done:
        status = "finished"

        def __init__(self, row: dict[str, object]) -> None:
            self.row = row

        def result(self) -> dict[str, object]:
            return self.row

    class Client:  # runs the jobs in this process, as a Dask client would on its workers
        def submit(self, fn, job, **_):  # noqa: ANN001, ANN202
            broken = job["protocol_text"].replace("[network]", "[network]\nrows = 0", 1)
            return Done({**fn({**job, "protocol_text": broken}), "index": job["index"]})

        def close(self) -> None:
            pass

    monkeypatch.setattr(sweep, "open_client", lambda scheduler, workers: (Client(), None))
    monkeypatch.setattr("distributed.as_completed", lambda futures: list(futures))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["clln", "sweep", "s.toml", "--out", "runs"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and "every one of the sweep's 2 runs failed" in err, err
