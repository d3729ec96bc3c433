"""Crash-safe runs: checkpoints every step, resume after a stop, a crash or a fault."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clln.compose import build_experiment, make_trainer, resume_training, run_training
from clln.controller.checkpoint import pack_state, unpack_state
from clln.controller.store import RunStore
from clln.protocol import parse_protocol

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "protocols"


def experiment(name: str, steps: int):
    path = PROTOCOLS / f"{name}.toml"
    text = path.read_text()
    return build_experiment(parse_protocol(text, str(path)), source=str(path), base_dir=PROTOCOLS,
                            steps=steps), text, path


def uninterrupted(name: str, steps: int) -> np.ndarray:
    exp, _, _ = experiment(name, steps)
    make_trainer(exp).run()
    return exp.backend.read_edges().conductances


def test_pack_state_round_trip() -> None:
    rng = np.random.default_rng(3)
    state = {"a": np.arange(5.0), "rng": rng.bit_generator.state, "n": None,
             "nested": {"taps": np.array([1, 2], dtype=np.int64), "list": [1.5, np.ones(2)]}}
    back = unpack_state(pack_state(state))
    assert back["rng"] == state["rng"] and back["n"] is None
    assert np.array_equal(back["a"], state["a"]) and back["nested"]["taps"].dtype == np.int64
    assert np.array_equal(back["nested"]["list"][1], np.ones(2))


@pytest.mark.parametrize(("name", "stop_at"), [("regression-2x2", 137), ("pot-bench-regression", 61),
                                              ("bias/twin-remedy", 43)])
def test_stop_and_resume_is_bit_identical(tmp_path: Path, name: str, stop_at: int) -> None:
    """Ideal and noisy (pot-bench) simulated runs, and a noisy twin bench with the default
    bias remedy (its measured margin is scheme state): stopped at a step boundary, resumed
    in a fresh experiment, they end exactly where an uninterrupted run ends."""
    steps = 200
    reference = uninterrupted(name, steps)
    store = RunStore(tmp_path)
    exp, text, path = experiment(name, steps)
    done = []
    outcome = run_training(exp, store, protocol_text=text, protocol_path=str(path),
                           callbacks=[lambda r: done.append(r.step)],
                           should_stop=lambda: len(done) >= stop_at)
    assert outcome.status == "interrupted" and store.run(outcome.run_id)["steps_done"] == stop_at
    assert store.checkpoint(outcome.run_id)[0] == stop_at
    fresh, _, _ = experiment(name, steps)
    resumed = resume_training(fresh, store, outcome.run_id)
    rec = store.run(outcome.run_id)
    assert resumed.status == "completed" and rec["status"] == "completed"
    assert np.array_equal(rec["final_state"], reference)
    hist = store.history(outcome.run_id)
    assert hist.steps.tolist() == list(range(1, steps + 1))  # no lost or repeated step
    assert store.integrity() == "ok"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "clln.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def wait_for_steps(store_dir: Path, steps: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (store_dir / "runs.sqlite").exists():
            try:
                runs = RunStore(store_dir).list_runs()
            except Exception:
                runs = []
            if runs and runs[-1]["steps_done"] >= steps:
                return
        time.sleep(0.05)


def test_kill_9_then_resume_is_bit_identical(tmp_path: Path) -> None:
    steps = 800
    reference = uninterrupted("regression-2x2", steps)
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "clln.cli", "train", str(PROTOCOLS / "regression-2x2.toml"),
                             "--steps", str(steps), "--out", str(runs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    wait_for_steps(runs, 150, proc)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    store = RunStore(runs)
    rec = store.run("latest")
    assert rec["status"] == "running" and 0 < rec["steps_done"] < steps
    assert store.integrity() == "ok"
    store.close()
    result = cli("resume", "latest", "--out", str(runs))
    assert result.returncode == 0, result.stderr
    store = RunStore(runs)
    rec = store.run("latest")
    assert rec["status"] == "completed" and np.array_equal(rec["final_state"], reference)
    assert store.integrity() == "ok"


def test_ctrl_c_stops_at_a_step_boundary_and_says_how_to_resume(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "clln.cli", "train", str(PROTOCOLS / "regression-2x2.toml"),
                             "--steps", "100000", "--out", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(runs, 50, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "resume with: clln resume" in err and "Traceback" not in err
    store = RunStore(runs)
    rec = store.run("latest")
    hist = store.history(rec["id"])
    assert rec["status"] == "interrupted" and hist.steps[-1] == rec["steps_done"]
    assert store.checkpoint(rec["id"])[0] == rec["steps_done"]


def test_resuming_a_completed_or_unknown_run_is_a_one_line_error(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert cli("train", str(PROTOCOLS / "demo.toml"), "--steps", "20", "--out", str(runs)).returncode == 0
    for run in ("latest", "nope"):
        result = cli("resume", run, "--out", str(runs))
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


def test_emulated_bench_run_resumes_with_its_taps(tmp_path: Path) -> None:
    """A bench run records its bench file; resuming writes the checkpointed taps back."""
    from clln.benchfile import load_bench
    from clln.benchrun import bench_experiment
    from clln.resume import bench_info, rebuild

    bench_path = PROTOCOLS / "benches" / "example-16.toml"
    bench, bench_text = load_bench(bench_path)
    proto_text = (PROTOCOLS / "demo.toml").read_text()
    proto = parse_protocol(proto_text, "demo.toml")
    store = RunStore(tmp_path)
    exp, session = bench_experiment(proto, bench, bench_text, source="demo.toml", bench_source=str(bench_path),
                                    target="emulate", steps=60)
    done: list[int] = []
    try:
        outcome = run_training(exp, store, protocol_text=proto_text, protocol_path=None,
                               callbacks=[lambda r: done.append(r.step)], should_stop=lambda: len(done) >= 25,
                               extra_info=bench_info(bench_path, bench_text, "emulate"))
        taps_at_stop = exp.backend.read_edges().taps
    finally:
        session.close()
    assert outcome.status == "interrupted"
    exp2, session2, _ = rebuild(store, outcome.run_id)
    try:
        trainer = make_trainer(exp2)
        from clln.controller.checkpoint import restore_trainer

        restore_trainer(trainer, unpack_state(store.checkpoint(outcome.run_id)[1]))
        assert np.array_equal(exp2.backend.read_edges().taps, taps_at_stop)
        assert np.array_equal(session2.emulator.firmware.taps[exp2.backend.chain], taps_at_stop)
    finally:
        session2.close()


class FlakyDaq:
    """A DAQ whose acquisitions fail on the given call numbers."""

    def __init__(self, inner: object, failing: set[int]) -> None:
        self.inner, self.failing, self.calls = inner, failing, 0
        self.n_ao, self.n_ai = inner.n_ao, inner.n_ai

    def acquire(self, ao: np.ndarray, *, clamps_engaged: bool):
        from clln.drivers.errors import DaqError

        self.calls += 1
        if self.calls in self.failing:
            raise DaqError("DAQ Dev1: acquisition failed (NI-DAQmx error -200279)")
        return self.inner.acquire(ao, clamps_engaged=clamps_engaged)

    def zero(self) -> None:
        self.inner.zero()

    def close(self) -> None:
        self.inner.close()


def test_a_daq_error_is_retried_once_then_the_run_pauses_resumably(tmp_path: Path) -> None:
    from clln.benchfile import load_bench
    from clln.benchrun import bench_experiment
    from clln.drivers.errors import DaqError

    bench, bench_text = load_bench(PROTOCOLS / "benches" / "example-16.toml")
    proto_text = (PROTOCOLS / "demo.toml").read_text()
    exp, session = bench_experiment(parse_protocol(proto_text, "demo.toml"), bench, bench_text,
                                    source="demo.toml", bench_source="bench", target="emulate", steps=30)
    backend = exp.backend
    backend.daq = FlakyDaq(backend.daq, failing={5, 21, 22})  # 5: transient; 21 and 22: persistent
    store = RunStore(tmp_path)
    try:
        with pytest.raises(DaqError):
            run_training(exp, store, protocol_text=proto_text, protocol_path=None)
        rec = store.run("latest")
        assert backend.daq_retries == 2
        assert rec["status"] == "paused" and "hardware fault" in rec["message"]
        kinds = [e["kind"] for e in store.events(rec["id"])]
        assert kinds == ["daq", "daq", "fault"]  # the run's event log, as the dashboard shows it
        assert rec["steps_done"] > 0 and store.checkpoint(rec["id"])[0] == rec["steps_done"]
        ao = session.emulator.log.of("ao")
        assert ao[-1]["levels"] == [0.0] * 4  # made safe
    finally:
        session.close()
