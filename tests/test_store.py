"""The run store: SQLite in WAL mode, exact round trips of arrays, id resolution."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clln.controller.errors import RunNotFoundError, UserError
from clln.controller.store import RunStore, from_blob, to_blob


def new_run(store: RunStore, *, name: str = "r", steps: int = 3, n_edges: int = 5,
            initial: np.ndarray | None = None) -> str:
    return store.create_run(
        name=name, protocol_text='format = 1\nname = "r"\n', protocol_path="p.toml",
        version="0.1.0", seed=7, backend={"backend": "simulator", "solver": "qdldl"},
        info={"n_edges": n_edges, "edges": [[0, 1]] * n_edges}, steps_planned=steps,
        initial_state=np.linspace(1e-3, 2e-3, n_edges) if initial is None else initial,
    )


@pytest.fixture
def store(tmp_path: Path):
    s = RunStore(tmp_path / "runs")
    yield s
    s.close()


def test_creates_directory_and_database(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    with RunStore(root) as s:
        assert s.path == root / "runs.sqlite"
    assert (root / "runs.sqlite").is_file()


def test_wal_journal_mode(store: RunStore) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    # WAL is a property of the database file: a fresh connection sees it too.
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        con.close()


def test_root_that_is_a_file_is_a_user_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError):
        RunStore(f)


@pytest.mark.parametrize(
    "array",
    [np.array([1e-3, 2.5e-3, np.pi * 1e-3]), np.arange(6, dtype=np.int64).reshape(2, 3),
     np.zeros(0), np.array([1e-300, 5e-324, -0.0, 1.0 / 3.0])],
    ids=["float", "int-2d", "empty", "extreme"],
)
def test_blob_round_trip_is_exact(array: np.ndarray) -> None:
    back = from_blob(to_blob(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)
    assert back.tobytes() == array.tobytes()


def test_blob_none() -> None:
    assert to_blob(None) is None and from_blob(None) is None


def test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    g0 = rng.uniform(1e-3, 2e-3, 5)
    g1, g2 = rng.uniform(1e-3, 2e-3, (2, 5))
    taps2 = np.array([1, 5, 9, 64, 128], dtype=np.int64)
    root = tmp_path / "runs"
    with RunStore(root) as s:
        rid = new_run(s, initial=g0)
        rec = s.run(rid)
        assert rec["status"] == "running" and rec["steps_done"] == 0
        s.record_test(rid, 0, 0.5, None)
        s.record_step(rid, 1, error=0.4, nudge=0.01, update_norm=1e-4, n_clipped=0,
                      snapshot=(g1, None))
        s.record_step(rid, 2, error=0.3, nudge=0.02, update_norm=2e-4, n_clipped=2,
                      test=(0.25, 0.75), snapshot=(g2, taps2))
        assert s.run(rid)["steps_done"] == 2
        s.finish(rid, status="completed", final_state=g2, final_taps=taps2, wall_time=1.5)

    # Reopen: everything is on disk.
    with RunStore(root) as s:
        rec = s.run(rid)
        assert rec["id"] == rid
        assert rec["status"] == "completed"
        assert rec["name"] == "r"
        assert rec["seed"] == 7
        assert rec["version"] == "0.1.0"
        assert rec["protocol_path"] == "p.toml"
        assert rec["protocol_text"] == 'format = 1\nname = "r"\n'
        assert rec["backend"] == {"backend": "simulator", "solver": "qdldl"}
        assert rec["info"]["n_edges"] == 5
        assert rec["steps_planned"] == 3 and rec["steps_done"] == 2
        assert rec["wall_time"] == 1.5
        assert rec["message"] is None
        assert np.array_equal(rec["initial_state"], g0)
        assert np.array_equal(rec["final_state"], g2)
        assert rec["final_taps"].dtype == np.int64
        assert np.array_equal(rec["final_taps"], taps2)

        h = s.history(rid)
        assert h.steps.tolist() == [1, 2]
        assert h.error.tolist() == [0.4, 0.3]
        assert h.nudge.tolist() == [0.01, 0.02]
        assert h.update_norm.tolist() == [1e-4, 2e-4]
        assert h.n_clipped.tolist() == [0, 2]
        assert np.all(np.diff(h.t) >= 0)
        assert h.test_steps.tolist() == [0, 2]
        assert h.test_error.tolist() == [0.5, 0.25]
        assert np.isnan(h.test_accuracy[0]) and h.test_accuracy[1] == 0.75
        assert h.snapshot_steps.tolist() == [1, 2]
        assert h.snapshots.shape == (2, 5)
        assert np.array_equal(h.snapshots, np.stack([g1, g2]))


def test_empty_history(store: RunStore) -> None:
    rid = new_run(store)
    h = store.history(rid)
    assert h.steps.size == 0 and h.error.size == 0 and h.test_steps.size == 0
    assert h.snapshot_steps.size == 0
    rec = store.run(rid)
    assert rec["final_state"] is None and rec["final_taps"] is None


def test_failed_run_keeps_its_message(store: RunStore) -> None:
    rid = new_run(store)
    store.finish(rid, status="failed", final_state=None, final_taps=None, wall_time=0.1,
                 message="NetworkError: floating node")
    rec = store.run(rid)
    assert rec["status"] == "failed"
    assert rec["message"] == "NetworkError: floating node"
    assert rec["final_state"] is None


def test_record_step_is_atomic(store: RunStore) -> None:
    """A step whose test row cannot be written leaves no trace (one transaction)."""
    rid = new_run(store)
    store.record_step(rid, 1, error=0.4, nudge=0.0, update_norm=0.0, n_clipped=0)
    store.record_test(rid, 2, 0.3, None)
    with pytest.raises(sqlite3.IntegrityError):
        store.record_step(rid, 2, error=0.3, nudge=0.0, update_norm=0.0, n_clipped=0,
                          test=(0.3, None))
    assert store.history(rid).steps.tolist() == [1]
    assert store.run(rid)["steps_done"] == 1
    # The store is still usable afterwards.
    store.record_step(rid, 3, error=0.2, nudge=0.0, update_norm=0.0, n_clipped=0)
    assert store.history(rid).steps.tolist() == [1, 3]


def test_step_of_unknown_run_is_refused(store: RunStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.record_step("no-such-run", 1, error=0.1, nudge=0.0, update_norm=0.0, n_clipped=0)


def test_second_connection_sees_committed_runs(tmp_path: Path) -> None:
    """``clln show`` in another process reads runs while a training writes."""
    with RunStore(tmp_path) as writer, RunStore(tmp_path) as reader:
        rid = new_run(writer)
        writer.record_step(rid, 1, error=0.4, nudge=0.0, update_norm=0.0, n_clipped=0)
        assert reader.run(rid)["steps_done"] == 1
        assert [r["id"] for r in reader.list_runs()] == [rid]


# -- id resolution ------------------------------------------------------------------------


def test_run_id_format(store: RunStore) -> None:
    rid = new_run(store)
    date, time_, suffix = rid.split("-")
    assert len(date) == 8 and date.isdigit()
    assert len(time_) == 6 and time_.isdigit()
    assert len(suffix) == 6 and all(c in "0123456789abcdef" for c in suffix)


def test_resolve_full_id_and_unique_prefix(store: RunStore) -> None:
    a = new_run(store)
    b = new_run(store)
    assert a != b
    assert store.resolve(a) == a
    assert store.resolve(b) == b
    # The shortest unique prefix of a resolves to a.
    n = next(k for k in range(1, len(a) + 1) if not b.startswith(a[:k]))
    assert store.resolve(a[:n]) == a
    assert store.run(a[:n])["id"] == a


def test_ambiguous_prefix_raises(store: RunStore) -> None:
    a = new_run(store)
    b = new_run(store)
    # both ids start with the same date and time (ids made across midnight still
    # share the year): a prefix both have resolves to neither
    common = os.path.commonprefix([a, b])
    assert len(common) >= 3
    with pytest.raises(RunNotFoundError) as info:
        store.resolve(common)
    assert "2 runs" in str(info.value)
    assert isinstance(info.value, UserError)
    with pytest.raises(RunNotFoundError):
        store.run(common)
    with pytest.raises(RunNotFoundError):
        store.history(common)


@pytest.mark.parametrize("query", ["zzz", "19990101-000000-abcdef", "%", "_", "2_"])
def test_unknown_id_raises(store: RunStore, query: str) -> None:
    """Only a true prefix of an id resolves; SQL wildcards are not patterns."""
    new_run(store)
    with pytest.raises(RunNotFoundError) as info:
        store.resolve(query)
    assert isinstance(info.value, UserError)
    assert "\n" not in str(info.value)


def test_unknown_id_message_names_it(store: RunStore) -> None:
    new_run(store)
    with pytest.raises(RunNotFoundError, match="zzz"):
        store.run("zzz")


def test_latest_on_empty_store_raises(store: RunStore) -> None:
    with pytest.raises(RunNotFoundError):
        store.resolve("latest")


def test_latest_and_list_follow_creation_order(store: RunStore) -> None:
    """Runs created within the same second must still list oldest first and
    ``latest`` must be the one created last."""
    ids = [new_run(store, name=f"r{i}") for i in range(8)]
    assert [r["id"] for r in store.list_runs()] == ids
    assert store.resolve("latest") == ids[-1]


def test_list_runs_columns(store: RunStore) -> None:
    rid = new_run(store, name="alpha", steps=9)
    store.record_step(rid, 1, error=0.1, nudge=0.0, update_norm=0.0, n_clipped=0)
    (row,) = store.list_runs()
    assert row["id"] == rid and row["name"] == "alpha" and row["status"] == "running"
    assert row["steps_done"] == 1 and row["steps_planned"] == 9
    assert row["wall_time"] is None


def test_run_dir(store: RunStore) -> None:
    rid = new_run(store)
    d = store.run_dir(rid)
    assert d == store.root / rid and d.is_dir()


# -- integrity -------------------------------------------------------------------------------


def test_integrity_check_after_a_run(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    with RunStore(root) as s:
        rid = new_run(s, steps=20)
        for k in range(1, 21):
            s.record_step(rid, k, error=1.0 / k, nudge=0.01, update_norm=1e-3, n_clipped=0,
                          test=(0.5 / k, None) if k % 5 == 0 else None,
                          snapshot=(np.full(5, 1e-3 * k), None) if k % 10 == 0 else None)
        s.finish(rid, status="completed", final_state=np.full(5, 2e-2), final_taps=None,
                 wall_time=0.2)
    con = sqlite3.connect(root / "runs.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        assert con.execute("SELECT count(*) FROM steps").fetchone()[0] == 20
    finally:
        con.close()


def test_integrity_check_after_a_real_training(tmp_path: Path) -> None:
    """A real (short) simulated training through the composition root."""
    from clln.compose import build_experiment, run_training
    from clln.protocol import load_protocol

    path = Path(__file__).resolve().parents[1] / "protocols" / "demo.toml"
    proto, text = load_protocol(path)
    exp = build_experiment(proto, source=str(path), base_dir=path.parent, steps=12)
    root = tmp_path / "runs"
    with RunStore(root) as s:
        out = run_training(exp, s, protocol_text=text, protocol_path=str(path))
        rec = s.run(out.run_id)
        assert rec["status"] == "completed" and rec["steps_done"] == 12
        assert rec["protocol_text"] == text
        assert rec["final_state"].shape == (exp.network.n_edges,)
        h = s.history(out.run_id)
        assert h.steps.tolist() == list(range(1, 13))
        assert h.test_steps[0] == 0 and h.test_steps[-1] == 12
        assert np.array_equal(h.snapshots[-1], rec["final_state"])
        assert out.report is not None and out.report.is_file()
    con = sqlite3.connect(root / "runs.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()
