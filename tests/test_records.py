"""The run store returns typed records: RunRecord with a RunStatus, strings in the database."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clln.controller.store import PROCESS_GONE, RunRecord, RunStatus, RunStore


def make_run(store: RunStore) -> str:
    return store.create_run(
        name="r", protocol_text='format = 1\nname = "r"\n', protocol_path="p.toml", version="0.1.0",
        seed=7, backend={"backend": "simulator"}, info={"n_edges": 3}, steps_planned=2,
        initial_state=np.array([1e-3, 2e-3, 3e-3]))


def test_a_run_is_a_typed_record_whose_status_is_stored_as_its_string(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        run_id = make_run(store)
        rec = store.run(run_id)
        assert isinstance(rec, RunRecord) and rec.status is RunStatus.RUNNING
        store.finish(run_id, status=RunStatus.PAUSED, final_state=np.array([1.0, 2.0, 3.0]),
                     final_taps=None, wall_time=1.5, message="bench fault: x")
        rec = store.run(run_id)
        assert rec.status is RunStatus.PAUSED and rec.wall_time == 1.5 and rec.seed == 7
        np.testing.assert_array_equal(rec.final_state, [1.0, 2.0, 3.0])
        assert rec.final_taps is None and rec.info == {"n_edges": 3}
    db = sqlite3.connect(tmp_path / "runs.sqlite")
    try:
        (raw,) = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    finally:
        db.close()
    assert type(raw) is str and raw == "paused"
    assert [s.value for s in RunStatus] == ["running", "completed", "interrupted", "paused", "failed"]


def test_the_record_still_answers_as_the_dict_it_was(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        rec = store.run(make_run(store))
    assert type(rec["status"]) is str and rec["status"] == "running"
    assert rec["info"] is rec.info and rec.get("message") is None and rec.get("nope", 3) == 3
    assert set(rec.keys()) >= {"id", "status", "protocol_text", "final_state"}
    with pytest.raises(KeyError):
        rec["nope"]


def test_a_running_run_whose_process_is_gone_shows_so(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        run_id = make_run(store)
        store.claim(run_id, "another-host", 1)  # cannot be told from here: still running
        assert store.shown_status(run_id, store.run(run_id).status) is RunStatus.RUNNING
        store.claim(run_id, socket.gethostname(), 2**22 + 12345)  # above pid_max: no such process
        assert store.shown_status(run_id, store.run(run_id).status) == PROCESS_GONE
        assert store.shown_status(run_id, RunStatus.COMPLETED) is RunStatus.COMPLETED
