"""The run store behaves as a database should: an atomic lease for resume (100 racing
claims, one winner), stale "running" runs shown as gone and resumable, read-only reading,
one-line messages for damaged stores, resume honours the target, reports redrawn."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from clln.compose import build_experiment, resume_training, run_training
from clln.controller.errors import UserError
from clln.controller.store import RunStore
from clln.protocol import parse_protocol
from clln.resume import RESUMABLE

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "protocols" / "demo.toml"


def stopped_run(out: Path, steps: int = 40, stop_at: int = 5, text: str | None = None) -> str:
    text = text or DEMO.read_text()
    exp = build_experiment(parse_protocol(text, str(DEMO)), source=str(DEMO), base_dir=DEMO.parent, steps=steps)
    store = RunStore(out)
    done: list[int] = []
    outcome = run_training(exp, store, protocol_text=text, protocol_path=str(DEMO),
                           callbacks=[lambda r: done.append(r.step)], should_stop=lambda: len(done) >= stop_at)
    store.close()
    return outcome.run_id


def _claim(out: str, run_id: str, barrier: object, done: object, results: object) -> None:
    store = RunStore(out)
    barrier.wait()  # type: ignore[attr-defined]
    try:
        store.lease(run_id, RESUMABLE)
    except UserError as exc:
        results.put(("refused", str(exc)))  # type: ignore[attr-defined]
        return
    results.put(("won", str(os.getpid())))  # type: ignore[attr-defined]
    done.wait(60)  # type: ignore[attr-defined]  # hold the run while the others try


def test_100_racing_resumes_have_one_winner_and_fail_nothing(tmp_path: Path) -> None:
    run_id = stopped_run(tmp_path)
    ctx = multiprocessing.get_context("fork")
    n = 100
    barrier, done, results = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), run_id, barrier, done, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(n)]
    status = RunStore(tmp_path, readonly=True).run(run_id)["status"]
    done.set()
    for p in procs:
        p.join(60)
    won = [o for o in outcomes if o[0] == "won"]
    refused = [o for o in outcomes if o[0] == "refused"]
    assert len(won) == 1 and len(refused) == n - 1
    assert all("is still running (process" in msg for _, msg in refused)
    assert status == "running"


def clln(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clln.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_a_dead_runner_shows_as_gone_and_resumes(tmp_path: Path) -> None:
    run_id = stopped_run(tmp_path / "runs")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = RunStore(tmp_path / "runs")
    store.lease(run_id, RESUMABLE, pid=dead.pid)  # as if that process had resumed it and been killed -9
    store.close()
    listed = clln("runs", cwd=tmp_path)
    assert "interrupted (process gone)" in listed.stdout, listed.stdout
    out = clln("resume", run_id, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shown = clln("show", run_id, "--json", cwd=tmp_path)
    assert '"status": "completed"' in shown.stdout


def test_resume_after_the_target_was_reached_takes_no_step(tmp_path: Path) -> None:
    text = DEMO.read_text().replace("\nsteps = 400", "\nsteps = 400\ntarget_error = 1e-3", 1)
    assert "target_error = 1e-3" in text
    exp = build_experiment(parse_protocol(text, "p"), source="p", base_dir=DEMO.parent, steps=400)
    store = RunStore(tmp_path)
    first = run_training(exp, store, protocol_text=text, protocol_path=str(DEMO))
    assert first.result is not None and first.result.stopped_on_target
    steps = store.run(first.run_id)["steps_done"]
    store._db.execute("UPDATE runs SET status = 'running' WHERE id = ?", (first.run_id,))  # killed before "completed"
    again = build_experiment(parse_protocol(text, "p"), source="p", base_dir=DEMO.parent, steps=400)
    second = resume_training(again, store, first.run_id)
    assert second.status == "completed" and store.run(first.run_id)["steps_done"] == steps


def test_read_commands_never_write_and_work_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = stopped_run(tmp_path)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as in a folder we cannot write
    store = RunStore(tmp_path, readonly=True)
    assert store.run(run_id)["steps_done"] == 5 and store.history(run_id).error.size == 5
    with pytest.raises(sqlite3.OperationalError):
        store._db.execute("UPDATE runs SET name = 'x'")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_runs_and_show_in_a_read_only_folder(tmp_path: Path) -> None:
    stopped_run(tmp_path / "runs")
    for path in [tmp_path / "runs", *(tmp_path / "runs").iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        assert clln("runs", cwd=tmp_path).returncode == 0
        assert clln("show", "latest", "--json", cwd=tmp_path).returncode == 0
    finally:
        for path in [tmp_path / "runs", *(tmp_path / "runs").iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_is_one_actionable_line(tmp_path: Path, damage: str) -> None:
    stopped_run(tmp_path / "runs")
    db = tmp_path / "runs" / "runs.sqlite"
    for extra in ("runs.sqlite-wal", "runs.sqlite-shm"):
        (tmp_path / "runs" / extra).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(os.urandom(4096) if damage == "garbage" else data[: len(data) // 3])
    for command in (["runs"], ["show", "latest"], ["train", str(DEMO), "--steps", "2"]):
        out = clln(*command, cwd=tmp_path)
        assert out.returncode == 2, (command, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert "damaged" in out.stderr and "backup" in out.stderr, out.stderr


def test_report_redraws_a_missing_report(tmp_path: Path) -> None:
    run_id = stopped_run(tmp_path / "runs")
    report = tmp_path / "runs" / run_id / "report.png"
    report.unlink()
    out = clln("report", run_id[:10], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert report.stat().st_size > 1000
