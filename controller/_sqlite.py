"""SQLite plumbing of the run store: write transactions, readable errors, and whether a
run's owning process is alive."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from clln.controller.errors import UserError


def process_alive(host: str, pid: int) -> bool | None:
    """Whether process ``pid`` on ``host`` exists; None when that cannot be told (another host)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    return True


@contextlib.contextmanager
def database_errors(path: Path) -> Iterator[None]:
    """Turn SQLite's errors about the database file into one actionable UserError line."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise UserError(store_problem(path, exc)) from None


def store_problem(path: Path, exc: sqlite3.DatabaseError) -> str:
    """One line saying what is wrong with a run store and what to do."""
    text = str(exc)
    if "full" in text:
        return (f"{path}: the disk is full ({text}); free some space, then 'clln resume RUN' "
                f"continues a stopped run")
    if "malformed" in text or "not a database" in text or "disk I/O" in text:
        return (f"{path}: the run store is damaged ({text}); restore it from a backup, or move it "
                f"aside and train with a new --out DIR ('sqlite3 runs.sqlite .recover' can salvage runs)")
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return (f"{path}: the run store cannot be written ({text}); check the folder's permissions "
                f"or pass --out DIR")
    if "locked" in text or "busy" in text:
        return f"{path}: the run store stayed locked by another process ({text}); try again"
    return f"{path}: run store error ({text})"


class Transaction:
    """``with`` block that wraps statements in BEGIN IMMEDIATE / COMMIT (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
