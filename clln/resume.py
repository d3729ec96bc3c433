"""Rebuild a recorded run's experiment from its own protocol text and seed, to resume it."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from clln.benchfile import parse_bench
from clln.benchrun import BenchSession, bench_experiment
from clln.compose import Experiment, build_experiment
from clln.controller.errors import UserError
from clln.controller.records import RunRecord
from clln.controller.store import RunStore
from clln.protocol import parse_protocol
from clln.simulator.bench import Faults

RESUMABLE = ("running", "interrupted", "paused", "failed")


def bench_info(bench_path: Path, bench_text: str, target: str) -> dict[str, Any]:
    """What a run on a bench records so that it can be resumed."""
    return {"bench": {"path": str(bench_path), "text": bench_text, "target": target}}


def rebuild(store: RunStore, run: str, *, faults: Faults | None = None, visa_library: str | None = None
            ) -> tuple[Experiment, BenchSession | None, RunRecord]:
    """The experiment of a stopped run (same protocol text, seed, steps), ready to resume.
    ``faults`` are injected on an emulated bench's serial link (for soak tests);
    ``visa_library`` opens the bench's SMU (--visa-library)."""
    rec = store.run(run)
    run_id = rec["id"]
    if rec["status"] not in RESUMABLE:
        raise UserError(f"run {run_id} is {rec['status']}; only a stopped run can be resumed")
    owner = store.owner(run_id)
    if rec["status"] == "running" and owner is not None and owner[0] == socket.gethostname():
        try:
            os.kill(owner[1], 0)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise UserError(f"run {run_id} is still running (process {owner[1]})") from None
        else:
            if owner[1] != os.getpid():
                raise UserError(f"run {run_id} is still running (process {owner[1]}); stop it first")
    source = str(rec["protocol_path"] or run_id)
    protocol = parse_protocol(rec["protocol_text"], source)
    base = Path(rec["protocol_path"]).parent if rec["protocol_path"] else Path.cwd()
    steps = int(rec["steps_planned"])
    bench = rec["info"].get("bench")
    if rec["info"].get("insitu_stream") is not None:  # clln train --emulate of an in-situ protocol
        from clln.insitu import StreamSession

        stream = StreamSession(build_experiment(protocol, source=source, base_dir=base,
                                                seed=int(rec["seed"]), steps=steps), source)
        return stream.experiment, stream, rec  # type: ignore[return-value]
    if bench is None:
        recorded = rec["info"].get("edge_list")
        if protocol.network.kind == "edge-list" and recorded is None:
            raise UserError(f"run {run_id} did not record its edge list (made by an older clln); "
                            f"it cannot be resumed")
        return build_experiment(protocol, source=source, base_dir=base, seed=int(rec["seed"]),
                                steps=steps, edge_list=None if recorded is None else recorded["text"]), None, rec
    spec = parse_bench(bench["text"], bench["path"])
    exp, session = bench_experiment(protocol, spec, bench["text"], source=source,
                                    bench_source=bench["path"], target=bench["target"],
                                    seed=int(rec["seed"]), steps=steps, faults=faults,
                                    visa_library=visa_library)
    return exp, session, rec
