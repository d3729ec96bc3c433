"""Parameter sweeps on Dask distributed: many training runs from one protocol.

A sweep file (TOML, versioned, strictly validated like protocols) names a protocol,
the seeds, and the values of dotted protocol keys (``training.eta``) as a grid (every
combination) or a list of points. Every run is an ordinary training run
(:func:`clln.compose.build_experiment` + :func:`clln.compose.run_training`) recorded in
the run store with its effective protocol, so each one replays on its own. Runs go to
a Dask ``LocalCluster`` (one single-threaded worker process per core by default) or to
an existing scheduler; the workers must see the run store's directory. A failed run
is reported in the results, not fatal to the sweep. Results: ``results.csv``,
``results.json`` and ``summary.png`` in ``<runs>/sweeps/<name>-<time>/``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from clln.controller.errors import UserError
from clln.sweepfile import RESULT_COLUMNS, RunSpec, Sweep, SweepSpec, load_sweep, parse_sweep

__all__ = ["RESULT_COLUMNS", "RunSpec", "Sweep", "SweepOutcome", "SweepSpec", "finished_runs",
           "load_sweep", "open_client", "parse_sweep", "run_one", "run_sweep", "summary_plot",
           "write_results"]


# -- one run, on a worker ------------------------------------------------------------


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Build and train one run of a sweep, recording it in the run store at
    ``job['out']``. Never raises for a failed run: returns its status and message."""
    from threadpoolctl import threadpool_limits

    from clln.compose import build_experiment, run_training
    from clln.controller.store import RunStore
    from clln.protocol import parse_protocol

    threadpool_limits(1)  # parallelism comes from the workers, one core each
    row: dict[str, Any] = {"index": job["index"], "run_id": None, "status": "failed",
                           "message": None, "steps": 0}
    started: list[str] = []
    store = None
    try:
        protocol = parse_protocol(job["protocol_text"], job["source"])
        exp = build_experiment(protocol, source=job["source"], base_dir=Path(job["base_dir"]))
        store = RunStore(job["out"])
        outcome = run_training(exp, store, protocol_text=job["protocol_text"],
                               protocol_path=job["protocol_path"], on_start=started.append,
                               extra_info=_sweep_info(job, protocol, exp))
        row.update(run_id=outcome.run_id, status=outcome.status)
        from clln.analysis.metrics import run_summary

        summary = run_summary(store, outcome.run_id)
        row.update({k: summary[k] for k in RESULT_COLUMNS})
        row["steps"] = summary["steps"]
    except Exception as exc:  # a failed run is a result, not the end of the sweep
        row.update(run_id=started[0] if started else None,
                   message=f"{type(exc).__name__}: {exc}")
    finally:
        if store is not None:
            store.close()
    return row


def _sweep_info(job: dict[str, Any], protocol: Any, exp: Any) -> dict[str, Any]:
    """What a sweep's run records beside its protocol: the sweep, lab metadata, provenance."""
    from clln.provenance import collect, lab_meta

    info: dict[str, Any] = {"meta": lab_meta(protocol.meta),
                            "provenance": collect(Path(job["protocol_path"]),
                                                  backend=exp.backend.describe())}
    if "sweep" in job:
        info["sweep"] = job["sweep"]
    return info


# -- the sweep, on a Dask client -----------------------------------------------------


@dataclass(frozen=True)
class SweepOutcome:
    rows: list[dict[str, Any]]
    directory: Path
    csv: Path
    json: Path
    plot: Path | None
    wall_time: float

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r["status"] != "completed")


def _jobs(sweep: Sweep, out: Path) -> Iterator[dict[str, Any]]:
    for run in sweep.runs:
        yield {"index": run.index, "protocol_text": run.protocol_text,
               "source": f"{sweep.path} (run {run.index + 1})",
               "protocol_path": str(sweep.protocol_path.resolve()),
               "base_dir": str(sweep.protocol_path.resolve().parent), "out": str(out.resolve()),
               "sweep": {"name": sweep.spec.name, "index": run.index, "seed": run.seed,
                         "parameters": dict(run.parameters)}}


def open_client(scheduler: str | None, workers: int | None) -> tuple[Any, Any]:
    """A Dask client on ``scheduler``, or on a new LocalCluster of ``workers``
    single-threaded worker processes (one per core by default). Returns (client, cluster)."""
    import logging
    import os

    from distributed import Client, LocalCluster

    if scheduler is not None:
        if workers is not None:
            raise UserError("--workers sizes a local cluster; it cannot be combined with --scheduler")
        return _connect(Client, scheduler), None
    n = workers or max(1, os.cpu_count() or 1)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster), cluster


SCHEDULER_TIMEOUT_S = 15.0


def _connect(client_class: Any, scheduler: str) -> Any:
    """A client of the scheduler, within SCHEDULER_TIMEOUT_S however the far end behaves
    (a listener that accepts and never answers included); one-line UserError otherwise."""
    import threading

    hint = ("check the address (tcp://host:8786) and that a Dask scheduler listens there "
            "('dask scheduler' on that host)")
    found: dict[str, Any] = {}

    def connect() -> None:
        try:
            found["client"] = client_class(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S / 2:g}s")
        except Exception as exc:  # noqa: BLE001 - reported below as one line
            found["error"] = exc

    thread = threading.Thread(target=connect, name="clln-scheduler-handshake", daemon=True)
    thread.start()
    thread.join(SCHEDULER_TIMEOUT_S)
    if thread.is_alive():
        raise UserError(f"the Dask scheduler at {scheduler} did not complete its handshake within "
                        f"{SCHEDULER_TIMEOUT_S:g} s; {hint}")
    if "error" in found:
        exc = found["error"]
        raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); {hint}")
    return found["client"]


def run_sweep(
    sweep: Sweep,
    out: Path,
    client: Any,
    *,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = False,
) -> SweepOutcome:
    """Run every run of the sweep on the client; write the results table and plot.

    With ``resume``, runs of this sweep already completed in the store (same sweep name,
    index and effective protocol) are taken as they are, not run again. When the sweep is
    interrupted (KeyboardInterrupt), the results so far are written, the runs not finished
    marked ``not run``, and the exception re-raised with the folder as ``partial``.
    """
    import time

    from distributed import as_completed

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    from clln.controller.store import RunStore

    RunStore(out).close()  # create the store (and its schema) once, before the workers
    rows: dict[int, dict[str, Any]] = {}

    def add(index: int, row: dict[str, Any]) -> None:
        run = sweep.runs[index]
        rows[index] = {"index": index, "run_id": row.get("run_id"), "status": row["status"],
                       "seed": run.seed, **{k: run.parameters.get(k) for k in sweep.keys},
                       **{k: row.get(k) for k in RESULT_COLUMNS}, "steps": row.get("steps", 0),
                       "message": row.get("message")}
        if on_result is not None:
            on_result(rows[index])

    done = finished_runs(sweep, out) if resume else {}
    for index, row in sorted(done.items()):
        add(index, row)
    try:
        futures = {client.submit(run_one, job, pure=False, key=f"clln-sweep-{sweep.spec.name}-"
                                 f"{job['index']}-{time.time_ns()}"): job["index"]
                   for job in _jobs(sweep, out) if job["index"] not in done}
        for future in as_completed(futures):
            index = futures[future]
            if future.status == "finished":
                row = future.result()
            else:  # the worker itself died (killed, out of memory)
                exc = future.exception()
                row = {"index": index, "run_id": None, "status": "failed", "steps": 0,
                       "message": f"{type(exc).__name__}: {exc}"}
            add(index, row)
    except KeyboardInterrupt as exc:
        for run in sweep.runs:
            if run.index not in rows:
                rows[run.index] = {"index": run.index, "run_id": None, "status": "not run",
                                   "seed": run.seed,
                                   **{k: run.parameters.get(k) for k in sweep.keys},
                                   **{k: None for k in RESULT_COLUMNS}, "steps": 0,
                                   "message": "the sweep was interrupted"}
        ordered = [rows[i] for i in sorted(rows)]
        directory = _results_dir(sweep, out, "-partial")
        write_results(sweep, ordered, directory)
        summary_plot(sweep, ordered, directory / "summary.png")
        exc.partial = directory  # type: ignore[attr-defined]
        raise
    ordered = [rows[i] for i in sorted(rows)]
    directory = _results_dir(sweep, out)
    csv_path, json_path = write_results(sweep, ordered, directory)
    plot = summary_plot(sweep, ordered, directory / "summary.png")
    return SweepOutcome(ordered, directory, csv_path, json_path, plot, time.perf_counter() - t0)


def _results_dir(sweep: Sweep, out: Path, tail: str = "") -> Path:
    """A new folder ``<out>/sweeps/<name>-<time><tail>`` for a sweep's results."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    directory = out / "sweeps" / f"{sweep.spec.name}-{stamp}{tail}"
    suffix = 1
    while directory.exists():
        suffix += 1
        directory = out / "sweeps" / f"{sweep.spec.name}-{stamp}{tail}-{suffix}"
    directory.mkdir(parents=True)
    return directory


def finished_runs(sweep: Sweep, out: Path) -> dict[int, dict[str, Any]]:
    """Result rows of this sweep's runs already completed in the store at ``out``, by index:
    same sweep name and index, and the same effective protocol text (so a changed sweep
    file runs again)."""
    from clln.analysis.metrics import run_summary
    from clln.controller.store import RunStore

    found: dict[int, dict[str, Any]] = {}
    texts = {run.index: run.protocol_text for run in sweep.runs}
    with RunStore(out) as store:
        for r in store.index():
            sw = r["info"].get("sweep") or {}
            index = sw.get("index")
            if (r["status"] != "completed" or sw.get("name") != sweep.spec.name
                    or index not in texts or index in found):
                continue
            if store.run(r["id"])["protocol_text"] != texts[index]:
                continue
            summary = run_summary(store, r["id"])
            found[index] = {"run_id": r["id"], "status": "completed", "steps": summary["steps"],
                            "message": "finished earlier; not run again",
                            **{k: summary[k] for k in RESULT_COLUMNS}}
    return found


def _columns(sweep: Sweep) -> list[str]:
    return ["index", "run_id", "status", "seed", *sweep.keys, *RESULT_COLUMNS, "steps", "message"]


def write_results(sweep: Sweep, rows: list[dict[str, Any]], directory: Path) -> tuple[Path, Path]:
    """results.csv (one row per run) and results.json (the same, with the sweep)."""
    columns = _columns(sweep)
    csv_path = directory / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else
                             ("" if v is None else v) for k, v in row.items()})
    json_path = directory / "results.json"
    json_path.write_text(json.dumps({
        "sweep": sweep.spec.name, "file": str(sweep.path), "protocol": str(sweep.protocol_path),
        "keys": list(sweep.keys), "columns": columns, "runs": rows,
    }, indent=2, default=str))
    return csv_path, json_path


def _median(values: list[float], log: bool) -> float:
    """Median over seeds; on a log axis the median of the logarithms (for an even count,
    the geometric mean of the middle two, so seeds decades apart do not pull it)."""
    import numpy as np

    if log:
        return float(np.exp(np.median(np.log(values))))
    return float(np.median(values))


def summary_plot(sweep: Sweep, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """y (final test error by default) against the first swept key, one marker per run
    and a line through the median over seeds per setting of the other keys (log-aware
    when the y axis is logarithmic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, y_key = sweep.plot_x, sweep.spec.plot.y
    done = [r for r in rows if r["status"] == "completed" and r.get(y_key) is not None
            and math.isfinite(r[y_key]) and (x_key is None or r.get(x_key) is not None)]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    if x_key is None or not done:
        ax.text(0.5, 0.5, "no completed run to plot" if not done else "nothing swept",
                ha="center", va="center", transform=ax.transAxes)
    else:
        numeric = all(isinstance(r[x_key], int | float) and not isinstance(r[x_key], bool)
                      for r in done)
        labels = sorted({repr(r[x_key]) for r in done}) if not numeric else []
        others = [k for k in sweep.keys if k != x_key]
        log_y = sweep.spec.plot.log_y and all(r[y_key] > 0 for r in done)
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in done:
            groups.setdefault(tuple(repr(r[k]) for k in others), []).append(r)
        for group, members in sorted(groups.items()):
            def xpos(r: dict[str, Any]) -> float:
                return float(r[x_key]) if numeric else float(labels.index(repr(r[x_key])))

            label = ", ".join(f"{k} = {v}" for k, v in zip(others, group)) or None
            xs = sorted({xpos(r) for r in members})
            medians = [_median([r[y_key] for r in members if xpos(r) == x], log_y) for x in xs]
            line, = ax.plot(xs, medians, "-", label=label)
            ax.plot([xpos(r) for r in members], [r[y_key] for r in members], "o",
                    color=line.get_color(), alpha=0.5, markersize=4)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        values = [float(r[x_key]) for r in done] if numeric else []
        log_x = sweep.spec.plot.log_x
        if log_x is None:
            log_x = bool(values) and min(values) > 0 and max(values) / min(values) >= 10
        if log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(x_key)
        if any(len(g) for g in groups) and others:
            ax.legend(fontsize=8)
    failed = sum(1 for r in rows if r["status"] != "completed")
    ax.set_ylabel(y_key.replace("_", " "))
    ax.set_title(f"sweep {sweep.spec.name}: {len(rows)} runs"
                 + (f", {failed} failed" if failed else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
