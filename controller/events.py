"""Bench events for the run's event log, reported from wherever they happen.

Drivers and the trainer call :func:`emit` (a serial retry, a watchdog trip, a DAQ
warning); while a run is recorded, :func:`recording` routes every event to its event
log in the run store. With no run recording, events go nowhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

Sink = Callable[[str, str, dict[str, Any] | None], None]
_sinks: list[Sink] = []


def emit(kind: str, message: str, **data: Any) -> None:
    """Report an event (``kind`` one of :data:`clln.controller.store.EVENT_KINDS`)."""
    for sink in list(_sinks):
        sink(kind, message, data or None)


@contextlib.contextmanager
def recording(sink: Sink) -> Iterator[None]:
    """Send every event emitted inside the block to ``sink(kind, message, data)``."""
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.remove(sink)
