"""Bench events for the run's event log, reported from wherever they happen.

Drivers and the trainer call :func:`emit` (a serial retry, a watchdog trip, a DAQ
warning); while a run is recorded, :func:`recording` routes every event to its event
log in the run store. With no run recording, events go nowhere.

A sink is called only in the thread that registered it (the run's own thread, which
owns its SQLite connection). An event emitted in another thread (e.g. a serial
keep-alive thread's retry) is queued for every sink and handed over at that sink's
next event or when its recording ends. Events raised in the run's own thread reach
only that run's sinks, so runs recorded side by side in one process (threads of a
test, a dashboard) do not receive each other's events.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Sink = Callable[[str, str, dict[str, Any] | None], None]


@dataclass
class _Registration:
    sink: Sink
    owner: int
    pending: collections.deque[tuple[str, str, dict[str, Any] | None]] = field(
        default_factory=collections.deque)

    def flush(self) -> None:
        while self.pending:
            self.sink(*self.pending.popleft())


_registrations: list[_Registration] = []
_lock = threading.Lock()


def emit(kind: str, message: str, **data: Any) -> None:
    """Report an event (``kind`` one of :data:`clln.controller.store.EVENT_KINDS`)."""
    me = threading.get_ident()
    with _lock:
        regs = list(_registrations)
    own = [r for r in regs if r.owner == me]
    if own:
        for reg in own:
            reg.flush()
            reg.sink(kind, message, data or None)
        return
    for reg in regs:  # a helper thread: hand the event to each run's own thread
        reg.pending.append((kind, message, data or None))


@contextlib.contextmanager
def recording(sink: Sink) -> Iterator[None]:
    """Send every event emitted inside the block to ``sink(kind, message, data)``."""
    reg = _Registration(sink, threading.get_ident())
    with _lock:
        _registrations.append(reg)
    try:
        yield
    finally:
        with _lock:
            _registrations.remove(reg)
        reg.flush()
