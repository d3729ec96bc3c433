"""Following a run while it trains: control requests left in the run store (pause,
resume, stop from ``clln watch`` or another terminal) and progress lines for logs.

The trainer asks :class:`StoreControl` at every step boundary whether to stop; a pause
request holds the run there (outputs at 0 V) until a resume or stop request arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from clln.controller.store import RunStore
from clln.controller.trainer import StepRecord


class StoreControl:
    """``should_stop`` for the trainer that also obeys requests left in the store.

    Parameters
    ----------
    store : the run store the run is recorded in.
    run_id : the run.
    safe : called when a pause begins (puts the backend in its safe state).
    local : the process's own stop request (Ctrl-C / SIGTERM), or None.
    poll_s : how often a paused run looks for a resume or stop request, in s.
    on_event : called with (kind, message) for every request obeyed (logs, progress).
    keepalive : called while paused, every ``poll_s`` (a bench's controller watchdog would
        otherwise park the pots and the run would not resume where it stopped).
    """

    def __init__(self, store: RunStore, run_id: str, *, safe: Callable[[], None],
                 local: Callable[[], bool] | None = None, poll_s: float = 0.2,
                 on_event: Callable[[str, str], None] | None = None,
                 keepalive: Callable[[], None] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.safe = safe
        self.local = local
        self.poll_s = poll_s
        self.on_event = on_event
        self.keepalive = keepalive
        self.step = 0
        store.clear_request(run_id)  # a request left for an earlier session is stale

    def observe(self, rec: StepRecord) -> None:
        """Step callback: remember the last step (for the event log)."""
        self.step = rec.step

    def _log(self, kind: str, message: str) -> None:
        self.store.log_event(self.run_id, kind, message, step=self.step)
        if self.on_event is not None:
            self.on_event(kind, message)

    def _local_stop(self) -> bool:
        if self.local is not None and self.local():
            self._log("stop", f"stopped at step {self.step} from the process (signal or caller)")
            return True
        return False

    def __call__(self) -> bool:
        if self._local_stop():
            return True
        action = self.store.pending(self.run_id)
        if action == "resume":  # nothing to resume: the run is not paused
            self.store.clear_request(self.run_id)
            return False
        if action == "pause":
            self.store.clear_request(self.run_id)
            self.safe()
            self._log("pause", f"paused at step {self.step} on request (outputs at 0 V)")
            while True:
                time.sleep(self.poll_s)
                if self.keepalive is not None:
                    self.keepalive()
                if self._local_stop():
                    return True
                action = self.store.pending(self.run_id)
                if action in ("resume", "stop"):
                    break
            if action == "resume":
                self.store.clear_request(self.run_id)
                self._log("resume", f"resumed at step {self.step} on request")
                return False
        if action == "stop":
            self.store.clear_request(self.run_id)
            self._log("stop", f"stop requested at step {self.step}")
            return True
        return False


def format_eta(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    if seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressLog:
    """Progress as plain lines, for output that is not a terminal (nohup, tmux logs) and
    for ``--log-file``: one line at most every ``every_s`` seconds, and one at the end.

    Each line: UTC time, run id, step/planned, train error, last test error, rate and ETA.
    """

    def __init__(self, total: int, *, every_s: float = 5.0, streams: list[IO[str]] | None = None,
                 start_step: int = 0, clock: Callable[[], float] = time.monotonic,
                 events: Callable[[], list[dict]] | None = None) -> None:
        self.total = total
        self.every_s = every_s
        self.streams = streams or []
        self.clock = clock
        self.run_id = "-"
        self.t0 = clock()
        self.start_step = start_step
        self.last_emit = self.t0 - every_s  # the first step is reported at once
        self.events = events
        self.test = "-"
        self.last: StepRecord | None = None
        self.emitted = -1

    def line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for stream in self.streams:
            print(f"{stamp} {text}", file=stream, flush=True)

    def __call__(self, rec: StepRecord) -> None:
        self.last = rec
        if rec.test_error is not None:
            self.test = f"{rec.test_error:.4g}"
        now = self.clock()
        if now - self.last_emit >= self.every_s or rec.step >= self.total:
            self.emit(now)

    def emit(self, now: float | None = None) -> None:
        rec = self.last
        if rec is None or rec.step == self.emitted:
            self.flush_events()
            return
        self.emitted = rec.step
        now = self.clock() if now is None else now
        self.last_emit = now
        self.flush_events()
        done = rec.step - self.start_step
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - rec.step) / rate if rate > 0 else float("nan")
        self.line(f"run {self.run_id} step {rec.step}/{self.total} error {rec.error:.4g} "
                  f"test {self.test} {rate:.3g} steps/s eta {format_eta(eta)}")

    def flush_events(self) -> None:
        """Write the run's new event-log entries (retries, pauses, faults ...)."""
        for e in self.events() if self.events is not None else []:
            at = "" if e["step"] is None else f" at step {e['step']}"
            self.line(f"run {self.run_id} event {e['kind']}{at}: {e['message']}")


def open_log(path: Path | None) -> IO[str] | None:
    """Open ``--log-file`` for appending (None: no log file)."""
    if path is None:
        return None
    from clln.controller.errors import UserError

    try:
        return open(path, "a", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise UserError(f"{path}: cannot open the log file ({exc.strerror})") from None


