"""The run store: every run with full provenance in one SQLite file (WAL mode).

Layout: ``<root>/runs.sqlite`` plus one folder per run (``<root>/<run id>/``)
for reports. Arrays are stored as ``.npy`` bytes. Enough is kept to replay a
run exactly: the protocol text, package version, seed, backend description,
initial conductances, and per-step records.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from clln.controller._sqlite import Transaction, database_errors, process_alive, store_problem
from clln.controller.errors import RunNotFoundError, UserError
from clln.controller.records import (
    PROCESS_GONE,
    RECORD_FIELDS,
    RunHistory,
    RunRecord,
    RunStatus,
    from_blob,
    to_blob,
)

__all__ = ["CONTROL_ACTIONS", "EVENT_KINDS", "PROCESS_GONE", "RunHistory", "RunRecord", "RunStatus",
           "RunStore", "database_errors", "from_blob", "process_alive", "store_problem", "to_blob"]

SCHEMA_VERSION = 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    status TEXT NOT NULL,
    name TEXT,
    protocol_path TEXT,
    protocol_text TEXT NOT NULL,
    version TEXT NOT NULL,
    seed INTEGER NOT NULL,
    backend TEXT NOT NULL,
    info TEXT NOT NULL,
    steps_planned INTEGER NOT NULL,
    steps_done INTEGER NOT NULL DEFAULT 0,
    initial_state BLOB,
    final_state BLOB,
    final_taps BLOB,
    wall_time REAL,
    message TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    error REAL NOT NULL,
    nudge REAL NOT NULL,
    update_norm REAL NOT NULL,
    n_clipped INTEGER NOT NULL,
    t REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS tests (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    error REAL NOT NULL,
    accuracy REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    step INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    host TEXT NOT NULL,
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    conductances BLOB NOT NULL,
    taps BLOB,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id),
    t REAL NOT NULL,
    step INTEGER,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
CREATE TABLE IF NOT EXISTS controls (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    action TEXT NOT NULL,
    t REAL NOT NULL
);
"""

#: Kinds of entries in a run's event log (``events`` table).
EVENT_KINDS = ("retry", "pause", "resume", "stop", "watchdog", "warning", "fault", "resume-point",
               "daq", "note")

#: Requests a watcher may leave for a running run (``controls`` table); the trainer
#: polls them at every step boundary.
CONTROL_ACTIONS = ("pause", "resume", "stop")


class RunStore:
    """All runs under one directory.

    Parameters
    ----------
    root : directory of the store; created if missing.
    """

    def __init__(self, root: str | Path, *, readonly: bool = False) -> None:
        self.root = Path(root)
        self.path = self.root / "runs.sqlite"
        self.readonly = readonly
        if readonly:  # read commands: nothing is created or written, a read-only folder works
            if not self.path.is_file():
                raise UserError(f"{self.root}: no run store here (train first, or pass --out DIR)")
            # in a folder we cannot write, SQLite cannot make its WAL index: read the file as is
            flags = "mode=ro" if os.access(self.root, os.W_OK) else "immutable=1"
            uri = f"{self.path.resolve().as_uri()}?{flags}"
            with database_errors(self.path):
                self._db = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
                self._db.execute("SELECT count(*) FROM runs").fetchone()
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.root}: cannot create the runs directory ({exc.strerror})") from None
        with database_errors(self.path):
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)  # idempotent DDL; executescript commits by itself
            with self._tx():
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )

    def _tx(self) -> sqlite3.Connection:
        return Transaction(self._db)  # type: ignore[return-value]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_dir(self, run_id: str) -> Path:
        """Folder for a run's reports (created on demand)."""
        path = self.root / run_id
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise UserError(f"{path}: cannot create the run's folder ({exc.strerror}); check the "
                            f"folder's permissions or copy the runs folder somewhere writable") from None
        return path

    # -- writing -------------------------------------------------------------

    def create_run(
        self,
        *,
        name: str,
        protocol_text: str,
        protocol_path: str | None,
        version: str,
        seed: int,
        backend: dict[str, Any],
        info: dict[str, Any],
        steps_planned: int,
        initial_state: np.ndarray,
    ) -> str:
        """Record a new run and return its id (``YYYYmmdd-HHMMSS-xxxxxx``)."""
        now = datetime.now(timezone.utc)
        run_id = now.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self._tx():
            self._db.execute(
                "INSERT INTO runs (id, created, status, name, protocol_path, protocol_text, version,"
                " seed, backend, info, steps_planned, initial_state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, now.isoformat(timespec="seconds"), RunStatus.RUNNING, name, protocol_path, protocol_text,
                 version, seed, json.dumps(backend), json.dumps(info), steps_planned,
                 to_blob(initial_state)),
            )
        return run_id

    def record_step(
        self,
        run_id: str,
        step: int,
        *,
        error: float,
        nudge: float,
        update_norm: float,
        n_clipped: int,
        test: tuple[float, float | None] | None = None,
        snapshot: tuple[np.ndarray, np.ndarray | None] | None = None,
        checkpoint: bytes | None = None,
    ) -> None:
        """Record one training step (its test evaluation, snapshot and checkpoint) in one
        transaction: after a crash the store holds every step up to its last checkpoint."""
        with self._tx():
            if checkpoint is not None:
                self._db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
                                 (run_id, step, checkpoint))
            self._db.execute(
                "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, step, error, nudge, update_norm, n_clipped, time.time()),
            )
            if test is not None:
                self._db.execute("INSERT INTO tests VALUES (?, ?, ?, ?)", (run_id, step, *test))
            if snapshot is not None:
                self._db.execute(
                    "INSERT INTO snapshots VALUES (?, ?, ?, ?)",
                    (run_id, step, to_blob(snapshot[0]), to_blob(snapshot[1])),
                )
            self._db.execute("UPDATE runs SET steps_done = ? WHERE id = ?", (step, run_id))

    def record_test(self, run_id: str, step: int, error: float, accuracy: float | None) -> None:
        """Record a test evaluation made outside a training step (e.g. before step 1)."""
        with self._tx():
            self._db.execute("INSERT INTO tests VALUES (?, ?, ?, ?)", (run_id, step, error, accuracy))

    def checkpoint(self, run: str) -> tuple[int, bytes] | None:
        """(step, state) of a run's last checkpoint, or None."""
        row = self._db.execute("SELECT step, state FROM checkpoints WHERE run_id = ?",
                               (self.resolve(run),)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def claim(self, run_id: str, host: str, pid: int) -> None:
        """Record which process is running a run (to refuse a second resume)."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?, ?)", (run_id, host, pid))

    def lease(self, run: str, resumable: tuple[str, ...], host: str | None = None,
              pid: int | None = None) -> tuple[str, RunStatus, str | None]:
        """Take a stopped run for this process, atomically (one BEGIN IMMEDIATE
        transaction): refused with a UserError when its status is not in ``resumable``
        or another live process holds it. Marks it running, owned by (host, pid).
        Returns (run id, the status it had, its message) for :meth:`release`."""
        host = host or socket.gethostname()
        pid = os.getpid() if pid is None else pid
        run_id = self.resolve(run)
        with self._tx():
            status, message = self._db.execute("SELECT status, message FROM runs WHERE id = ?",
                                               (run_id,)).fetchone()
            owner = self._db.execute("SELECT host, pid FROM owners WHERE run_id = ?", (run_id,)).fetchone()
            if status == RunStatus.RUNNING and owner is not None and (owner[0], owner[1]) != (host, pid) \
                    and process_alive(str(owner[0]), int(owner[1])) is not False:
                where = f"process {owner[1]}" + ("" if owner[0] == host else f" on {owner[0]}")
                raise UserError(f"run {run_id} is still running ({where}); stop it first")
            if status not in resumable:
                raise UserError(f"run {run_id} is {status}; only a stopped run can be resumed")
            self._db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?, ?)", (run_id, host, pid))
            self._db.execute("UPDATE runs SET status = ? WHERE id = ?", (RunStatus.RUNNING, run_id))
        return run_id, RunStatus(status), message

    def release(self, lease: tuple[str, RunStatus, str | None]) -> None:
        """Give a leased run back with the status it had (resuming it failed to start)."""
        run_id, status, message = lease
        with self._tx():
            self._db.execute("UPDATE runs SET status = ?, message = ? WHERE id = ? AND status = ?",
                             (status, message, run_id, RunStatus.RUNNING))

    def owner(self, run: str) -> tuple[str, int] | None:
        row = self._db.execute("SELECT host, pid FROM owners WHERE run_id = ?",
                               (self.resolve(run),)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def shown_status(self, run_id: str, status: str) -> str:
        """The status to show: a run marked running whose process is gone (this host)
        shows as "interrupted (process gone)"; it can be resumed."""
        if status != RunStatus.RUNNING:
            return status
        owner = self._db.execute("SELECT host, pid FROM owners WHERE run_id = ?", (run_id,)).fetchone()
        if owner is None or process_alive(str(owner[0]), int(owner[1])) is False:
            return PROCESS_GONE
        return status

    def restart(self, run_id: str) -> None:
        """Forget a run's records (it stopped before its first checkpoint) and mark it running."""
        with self._tx():
            for table in ("steps", "tests", "snapshots", "checkpoints"):
                self._db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            self._db.execute("UPDATE runs SET status = ?, steps_done = 0 WHERE id = ?", (RunStatus.RUNNING, run_id))

    def reopen(self, run_id: str) -> None:
        """Mark a stopped run running again (it is being resumed)."""
        with self._tx():
            self._db.execute("UPDATE runs SET status = ?, message = NULL WHERE id = ?", (RunStatus.RUNNING, run_id))

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result ('ok' when sound)."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def finish(
        self,
        run_id: str,
        *,
        status: RunStatus,
        final_state: np.ndarray | None,
        final_taps: np.ndarray | None,
        wall_time: float,
        message: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Mark a run completed, failed or interrupted, with its final edge state; ``info``
        updates keys of the run's info (what was only known once training ran)."""
        with self._tx():
            self._db.execute(
                "UPDATE runs SET status = ?, final_state = ?, final_taps = ?, wall_time = ?,"
                " message = ? WHERE id = ?",
                (status, to_blob(final_state), to_blob(final_taps), wall_time, message, run_id),
            )
            if info:
                (old,) = self._db.execute("SELECT info FROM runs WHERE id = ?", (run_id,)).fetchone()
                self._db.execute("UPDATE runs SET info = ? WHERE id = ?",
                                 (json.dumps({**json.loads(old), **info}), run_id))

    # -- event log and control requests --------------------------------------

    def log_event(self, run_id: str, kind: str, message: str, *, step: int | None = None,
                  data: dict[str, Any] | None = None) -> None:
        """Append to a run's event log: retries, pauses, watchdog trips, warnings, faults,
        resume points (``kind`` one of :data:`EVENT_KINDS`)."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r}; allowed: {', '.join(EVENT_KINDS)}")
        with self._tx():
            self._db.execute(
                "INSERT INTO events (run_id, t, step, kind, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, time.time(), step, kind, message, None if data is None else json.dumps(data)),
            )

    def events(self, run: str, after: int = 0) -> list[dict[str, Any]]:
        """A run's event log, oldest first (only entries with id > ``after``): dicts with
        id, t (s since the epoch), step, kind, message, data."""
        rows = self._db.execute(
            "SELECT id, t, step, kind, message, data FROM events WHERE run_id = ? AND id > ?"
            " ORDER BY id", (self.resolve(run), after)).fetchall()
        return [{"id": i, "t": t, "step": st, "kind": k, "message": m,
                 "data": None if d is None else json.loads(d)} for i, t, st, k, m, d in rows]

    def request(self, run: str, action: str) -> str:
        """Ask a running run to pause, resume or stop at its next step boundary (the
        process training it may be on another terminal); returns the run id."""
        if action not in CONTROL_ACTIONS:
            raise UserError(f"control action {action!r}; allowed: {', '.join(CONTROL_ACTIONS)}")
        run_id = self.resolve(run)
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO controls VALUES (?, ?, ?)",
                             (run_id, action, time.time()))
        return run_id

    def pending(self, run_id: str) -> str | None:
        """The control request left for a run (pause, resume, stop) or None."""
        row = self._db.execute("SELECT action FROM controls WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else str(row[0])

    def clear_request(self, run_id: str) -> None:
        """Forget a run's control request (it was obeyed)."""
        with self._tx():
            self._db.execute("DELETE FROM controls WHERE run_id = ?", (run_id,))

    # -- reading -------------------------------------------------------------

    def resolve(self, run: str) -> str:
        """Full run id from an id, a unique prefix, or ``latest``."""
        if run == "latest":
            row = self._db.execute("SELECT id FROM runs ORDER BY rowid DESC LIMIT 1").fetchone()
            if row is None:
                raise RunNotFoundError(f"{self.path}: the run store is empty")
            return str(row[0])
        rows = self._db.execute(
            "SELECT id FROM runs WHERE substr(id, 1, ?) = ?", (len(run), run)
        ).fetchall() if run else []
        ids = sorted({r[0] for r in rows})
        if run in ids:
            return run
        if not ids:
            raise RunNotFoundError(f"{self.path}: no run '{run}' (see 'clln runs')")
        if len(ids) > 1:
            raise RunNotFoundError(f"{self.path}: '{run}' matches {len(ids)} runs; give more of the id")
        return str(ids[0])

    def list_runs(self) -> list[dict[str, Any]]:
        """Summary rows of every run, oldest first."""
        cur = self._db.execute(
            "SELECT id, created, status, name, steps_done, steps_planned, wall_time FROM runs"
            " ORDER BY rowid"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def index(self) -> list[dict[str, Any]]:
        """Every run, oldest first, with what a listing needs: the list_runs columns plus
        backend (dict), info (dict) and the last test error (None before any test)."""
        cur = self._db.execute(
            "SELECT r.id, r.created, r.status, r.name, r.steps_done, r.steps_planned, r.wall_time,"
            " r.backend, r.info, (SELECT t.error FROM tests t WHERE t.run_id = r.id"
            " ORDER BY t.step DESC LIMIT 1) AS final_test_error FROM runs r ORDER BY r.rowid")
        cols = [c[0] for c in cur.description]
        rows = [dict(zip(cols, row)) for row in cur.fetchall()]
        for r in rows:
            r["backend"], r["info"] = json.loads(r["backend"]), json.loads(r["info"])
        return rows

    def run(self, run: str) -> RunRecord:
        """Everything recorded about a run except the per-step history."""
        run_id = self.resolve(run)
        cur = self._db.execute(f"SELECT {', '.join(RECORD_FIELDS)} FROM runs WHERE id = ?", (run_id,))
        rec = dict(zip(RECORD_FIELDS, cur.fetchone()))
        for key in ("initial_state", "final_state", "final_taps"):
            rec[key] = from_blob(rec[key])
        rec["backend"] = json.loads(rec["backend"])
        rec["info"] = json.loads(rec["info"])
        rec["status"] = RunStatus(rec["status"])
        return RunRecord(**rec)

    def progress(self, run_id: str) -> dict[str, Any]:
        """A run's status, steps_done, steps_planned, message and wall_time (cheap: no arrays)."""
        cur = self._db.execute("SELECT status, steps_done, steps_planned, message, wall_time"
                               " FROM runs WHERE id = ?", (run_id,))
        return dict(zip([c[0] for c in cur.description], cur.fetchone()))

    def records_since(self, run_id: str, step: int, test_step: int) -> tuple[list[tuple], list[tuple]]:
        """Step records (step, error, nudge, update_norm, n_clipped, t) after ``step`` and test
        records (step, error, accuracy) after ``test_step``, in step order: what a watcher
        has not seen yet."""
        steps = self._db.execute(
            "SELECT step, error, nudge, update_norm, n_clipped, t FROM steps WHERE run_id = ?"
            " AND step > ? ORDER BY step", (run_id, step)).fetchall()
        tests = self._db.execute(
            "SELECT step, error, accuracy FROM tests WHERE run_id = ? AND step > ? ORDER BY step",
            (run_id, test_step)).fetchall()
        return steps, tests

    def latest_snapshot(self, run_id: str) -> tuple[int, np.ndarray] | None:
        """(step, conductances in S) of a run's most recent snapshot, or None."""
        row = self._db.execute("SELECT step, conductances FROM snapshots WHERE run_id = ?"
                               " ORDER BY step DESC LIMIT 1", (run_id,)).fetchone()
        if row is None:
            return None
        conductances = from_blob(row[1])
        assert conductances is not None  # the snapshots column is NOT NULL
        return int(row[0]), conductances

    def history(self, run: str) -> RunHistory:
        """Per-step, test and snapshot records of a run."""
        run_id = self.resolve(run)
        st = np.array(
            self._db.execute(
                "SELECT step, error, nudge, update_norm, n_clipped, t FROM steps WHERE run_id = ?"
                " ORDER BY step", (run_id,)
            ).fetchall(), dtype=float,
        ).reshape(-1, 6)
        te = self._db.execute(
            "SELECT step, error, accuracy FROM tests WHERE run_id = ? ORDER BY step", (run_id,)
        ).fetchall()
        te_arr = np.array([(s, e, np.nan if a is None else a) for s, e, a in te], dtype=float).reshape(-1, 3)
        snaps = self._db.execute(
            "SELECT step, conductances FROM snapshots WHERE run_id = ? ORDER BY step", (run_id,)
        ).fetchall()
        snap_g = [from_blob(b) for _, b in snaps]
        return RunHistory(
            steps=st[:, 0].astype(np.int64), error=st[:, 1], nudge=st[:, 2],
            update_norm=st[:, 3], n_clipped=st[:, 4].astype(np.int64), t=st[:, 5],
            test_steps=te_arr[:, 0].astype(np.int64), test_error=te_arr[:, 1],
            test_accuracy=te_arr[:, 2],
            snapshot_steps=np.array([s for s, _ in snaps], dtype=np.int64),
            snapshots=np.array(snap_g) if snap_g else np.zeros((0, 0)),
        )
