"""Commands that read the run store: ``runs``, ``show``, ``report``, ``export``, ``analyze``."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from clln.commands.common import OutOption, console, escaped, open_store, plain


class RunStatus(str, enum.Enum):
    completed = "completed"
    running = "running"
    interrupted = "interrupted"
    paused = "paused"
    failed = "failed"


def runs(
    out: OutOption = Path("runs"),
    status: Annotated[list[RunStatus] | None, typer.Option(
        help="Only runs with this status (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="Only runs whose name contains this.")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        help="Only runs with this tag ([meta] tags or --tag; repeatable: all of them).")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only runs created at or after this date or time (UTC), e.g. 2026-11-30 or "
             "2026-11-30T14:00.")] = None,
    sweep_name: Annotated[str | None, typer.Option(
        "--sweep", help="Only the runs of this sweep (its name).")] = None,
) -> None:
    """List the runs in the run store, with their last test error, backend and sweep."""
    from datetime import datetime, timezone

    from clln.controller.errors import UserError

    store = open_store(out)
    start = None
    if since is not None:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            raise UserError(f"--since: {since!r} is not a date; allowed: YYYY-MM-DD or "
                            f"YYYY-MM-DDTHH:MM[:SS] (UTC)") from None
        if start.tzinfo is None:
            start = start.replace(tzinfo=timezone.utc)
    wanted = {s.value for s in status or []}
    table = Table("name", "status", "steps", "last test error", "backend", "sweep",
                  "wall time (s)", "created")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=22))
    for r in store.index():
        meta = r["info"].get("meta") or {}
        sweep_info = r["info"].get("sweep") or {}
        if wanted and r["status"] not in wanted:
            continue
        if name is not None and name not in (r["name"] or ""):
            continue
        if tag and not set(tag) <= set(meta.get("tags") or []):
            continue
        if sweep_name is not None and sweep_info.get("name") != sweep_name:
            continue
        if start is not None and datetime.fromisoformat(r["created"]) < start:
            continue
        wall = "-" if r["wall_time"] is None else f"{r['wall_time']:.1f}"
        err = "-" if r["final_test_error"] is None else f"{r['final_test_error']:.3g}"
        backend = r["backend"].get("backend", "?")
        if r["backend"].get("preset"):
            backend += f" ({r['backend']['preset']})"
        swept = ""
        if sweep_info:
            params = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in
                               (sweep_info.get("parameters") or {}).items())
            swept = f"{sweep_info['name']} #{sweep_info['index'] + 1} (seed {sweep_info['seed']}" \
                    + (f", {params})" if params else ")")
        table.add_row(plain(r["id"]), Text(escaped(r["name"] or "")), store.shown_status(r["id"], r["status"]),
                      f"{r['steps_done']}/{r['steps_planned']}", err, backend, Text(swept), wall,
                      r["created"])
    console.print(table)


def show(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
    out: OutOption = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    with_protocol: Annotated[bool, typer.Option(
        "--protocol", help="Also print the protocol text the run used.")] = False,
) -> None:
    """Summarise a run: status, steps, initial and final train and test error, backend, lab
    notebook (operator, sample, notes, tags), provenance and event log."""
    from clln.analysis.metrics import run_summary
    from clln.controller.jsonvalues import json_ready

    store = open_store(out)
    summary = run_summary(store, run)
    summary["events"] = store.events(summary["id"])
    if as_json:
        print(json.dumps(json_ready(summary), indent=2, allow_nan=False))
    else:
        print_summary(summary)
        _print_notebook(summary)
        if with_protocol:
            console.print("[bold]protocol[/]:")
            console.print(escaped(summary["protocol"], keep="\n\t"), markup=False, highlight=False)


def print_summary(s: dict[str, Any]) -> None:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    table = Table(show_header=False, box=None)
    table.add_row("run", plain(f"{s['id']} ({s['name']})"))
    table.add_row("status", s["status"] + (f" — {plain(s['message'])}" if s["message"] else ""))
    table.add_row("steps", f"{s['steps']}/{s['steps_planned']}")
    table.add_row("train error", f"{fmt(s['initial_train_error'])} -> {fmt(s['final_train_error'])}")
    table.add_row("test error", f"{fmt(s['initial_test_error'])} -> {fmt(s['final_test_error'])}")
    if s["test_error_floor"] is not None:
        table.add_row("test error floor", f"{fmt(s['test_error_floor'])} (median of the last quarter)")
    if s["final_test_accuracy"] is not None:
        table.add_row("test accuracy", f"{s['final_test_accuracy']:.3f}")
    table.add_row("wall time", f"{fmt(s['wall_time_s'])} s")
    if s["scheme"]:
        table.add_row("scheme", _scheme_line(s["scheme"]))
    b = s["backend"]
    solver = f", solver {b['solver']}" if b.get("solver") else ""
    table.add_row("backend", f"{b.get('backend')} ({b.get('preset', '-')}{solver})")
    table.add_row("protocol", plain(s["protocol_path"]))
    console.print(table)


def _scheme_line(scheme: dict[str, Any]) -> str:
    """The recorded scheme in one line, with the margin an "auto" overclamp measured."""
    parts = []
    for name, params in scheme.items():
        if name == "overclamp":
            if params["margin"] != "auto":
                margin = f"margin {params['margin'] * 1e3:.3g} mV"
            elif params.get("margin_used") is None:
                margin = "margin auto (not measured yet)"
            else:
                margin = (f"margin auto: {params['noise_margin']:g} x output noise "
                          f"{params['measured_noise'] * 1e6:.3g} uV = {params['margin_used'] * 1e3:.3g} mV")
            name = f"overclamp (eta {params['eta']:g}, {margin})"
        parts.append(name)
    return ", ".join(parts)


def _print_notebook(s: dict[str, Any]) -> None:
    """Lab metadata, provenance and the event log of a run summary."""
    import time as _time

    table = Table(show_header=False, box=None)
    meta = s.get("meta") or {}
    for key in ("operator", "sample", "bench_serial", "notes"):
        if meta.get(key):
            table.add_row(key.replace("_", " "), Text(str(meta[key])))
    if meta.get("tags"):
        table.add_row("tags", Text(", ".join(meta["tags"])))
    prov = s.get("provenance") or {}
    if prov:
        table.add_row("host", f"{prov.get('user')}@{prov.get('host')} ({prov.get('platform')})")
        versions = ", ".join(f"{k} {v}" for k, v in (prov.get("packages") or {}).items() if v)
        table.add_row("software", f"Python {prov.get('python')}; {versions}")
        if prov.get("git"):
            g = prov["git"]
            table.add_row("git", f"{g['commit'][:12]}{' (uncommitted changes)' if g['dirty'] else ''}")
        if prov.get("firmware"):
            fw = prov["firmware"]
            table.add_row("firmware", f"{fw['name']} {fw['version']}")
        if prov.get("bench_sha256"):
            table.add_row("bench file sha256", prov["bench_sha256"][:16])
        if prov.get("calibration_id"):
            table.add_row("calibration", str(prov["calibration_id"]))
    console.print(table, markup=False, highlight=False)
    events = s.get("events") or []
    if events:
        log = Table("time (UTC)", "step", "kind", "message", title="event log")
        for e in events:
            log.add_row(_time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(e["t"])),
                        "" if e["step"] is None else str(e["step"]), e["kind"], Text(e["message"]))
        console.print(log, markup=False, highlight=False)


def report(
    run: Annotated[str, typer.Argument(help="Run id, unique prefix, or 'latest'.")],
    out: OutOption = Path("runs"),
) -> None:
    """Draw a run's PNG report again (e.g. after a crash while it was being written)."""
    from clln.analysis.report import training_report

    store = open_store(out)
    run_id = store.resolve(run)
    path = training_report(store, run_id, store.run_dir(run_id) / "report.png")
    print(f"report: {path}", flush=True)


def export(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Output file: .h5/.hdf5 (HDF5) or .nc (NetCDF).")],
    out: OutOption = Path("runs"),
    force: Annotated[bool, typer.Option(help="Overwrite the output file if it exists.")] = False,
) -> None:
    """Export a run to HDF5 or NetCDF (CF-1.8): every array with its units, node positions
    and roles, time stamps, the step-0 and final state, lab metadata, provenance, events."""
    from clln.export import export_run

    store = open_store(out)
    path = export_run(store, run, file, force=force)
    print(f"exported {store.resolve(run)} to {path}", flush=True)


def analyze(
    run: Annotated[str, typer.Argument(metavar="RUN", help=(
        "Run id, unique prefix, or 'latest'; or a seed 002 experiment file "
        "(protocols/seed002/limit-cycles.toml)."))],
    out: OutOption = Path("runs"),
    what: Annotated[str, typer.Option(help="susceptibility | aging | all; seed002 for an experiment file.")]
        = "all",
    probes: Annotated[int, typer.Option(
        help="Probes of the randomized susceptibility estimator (above 5,000 nodes).", min=2,
        max=100_000)] = 64,
    convention: Annotated[str, typer.Option(
        help="Nodes held in the physical Hessian: ground (seed 001) | dirichlet (sources too).")]
        = "ground",
) -> None:
    """Seed analyses of a run: susceptibility and cost Hessians (seed 001), learning as
    aging (seed 000); PNG figures and analysis.json in the run's folder. Given a seed 002
    experiment file instead: its limit cycles beside the measurements, figures and
    analysis.json in OUT/analyses/NAME."""
    from clln.analysis.analyze import WHATS, analyze_run, summary_rows
    from clln.compose import rebuild_task
    from clln.controller.errors import UserError
    from clln.protocol import parse_protocol
    from clln.seed002 import is_limit_cycle_file

    if is_limit_cycle_file(Path(run)) or what == "seed002":
        _analyze_limit_cycles(Path(run), out, what)
        return
    if what not in WHATS:
        raise UserError(f"--what: {what!r} is not allowed; allowed: {', '.join(WHATS)}, seed002 "
                        "(with an experiment file)")
    store = open_store(out)
    rec = store.run(run)
    task = None
    if what != "aging":  # the cost Hessian needs the run's task and training set
        try:
            proto = parse_protocol(rec["protocol_text"], str(rec["protocol_path"] or rec["id"]))
            task = rebuild_task(proto, int(rec["seed"]), rec["info"])
        except UserError as exc:
            console.print(f"cost Hessian skipped: {escaped(exc)}", markup=False, highlight=False)
    outcome = analyze_run(store, rec["id"], task=task, what=what, probes=probes,
                          convention=convention)
    table = Table(show_header=False, box=None)
    for label, value in summary_rows(outcome.numbers):
        table.add_row(label, value)
    console.print(table)
    for path in outcome.figures:
        print(f"figure: {path}", flush=True)
    print(f"numbers: {outcome.json_path}", flush=True)


def _analyze_limit_cycles(path: Path, out: Path, what: str) -> None:
    """``clln analyze FILE``: seed 002's limit cycles, printed beside the measurements."""
    from clln.analysis.seed002 import overlay_lines
    from clln.controller.errors import UserError
    from clln.seed002 import LimitCycleExperiment, is_limit_cycle_file, progress_line

    if not is_limit_cycle_file(path):
        raise UserError(f"--what seed002: {str(path)!r} is not a seed 002 experiment file; allowed: a "
                        ".toml file such as protocols/seed002/limit-cycles.toml")
    if what not in ("seed002", "all"):
        raise UserError(f"--what: {what!r} is not allowed for an experiment file; allowed: seed002, all")
    experiment = LimitCycleExperiment(path)  # validated, measurements read: before anything runs
    folder = out / "analyses" / experiment.spec.name
    folder.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]{plain(experiment.spec.name)}[/]: {len(experiment.spec.cycle.taus_s)} periods "
                  f"on the twin transistor pair")
    cycles = experiment.cycles(lambda c, cpu: print(progress_line(c, cpu), flush=True))
    numbers, figures, json_path = experiment.write(cycles, folder)
    for line in overlay_lines(numbers):
        print(line, flush=True)
    for figure in figures:
        print(f"figure: {figure}", flush=True)
    print(f"numbers: {json_path}", flush=True)
