"""The ``clln`` command line."""

from __future__ import annotations

import contextlib
import enum
import json
import math
import signal
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text

from clln.controller.bounds import DivergedError
from clln.controller.errors import BenchFault, CllnError, Interrupted, UserError
from clln.controller.store import RunStore
from clln.controller.trainer import StepRecord

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Lab control for contrastive local learning networks: train, inspect and export runs.",
)
console = Console()
if not console.is_terminal:  # piped output: never wrap ids and paths at 80 columns
    console = Console(width=200)
_state = {"debug": False}

OutOption = Annotated[Path, typer.Option("--out", help="Runs directory (run store).")]
VisaOption = Annotated[str | None, typer.Option(
    "--visa-library", help="VISA library for the bench's SMU: a backend (@py, @ivi, @sim), a "
    "library path, or FILE.yaml@sim (default: $CLLN_VISA_LIBRARY, else [smu] visa_library).")]
LogFileOption = Annotated[Path | None, typer.Option(
    help="Append progress lines and the run's event log to this file.")]
ProgressEveryOption = Annotated[float, typer.Option(
    help="Seconds between progress lines when output is not a terminal or goes to --log-file.",
    min=0.1, max=3600)]


def _print_version(value: bool) -> None:
    if value:
        import clln

        print(f"clln {clln.__version__}", flush=True)
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks of unexpected errors (also accepted after the command).")]
        = False,
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_print_version, is_eager=True)]
        = False,
) -> None:
    _state["debug"] = _state["debug"] or debug


@app.command()
def train(
    protocol: Annotated[Path, typer.Argument(metavar="PROTOCOL", help="Protocol file (TOML).")],
    out: OutOption = Path("runs"),
    seed: Annotated[int | None, typer.Option(help="Override the protocol's seed.", min=0,
                                             max=2**63 - 1)] = None,
    steps: Annotated[int | None, typer.Option(help="Override the number of steps.", min=1,
                                              max=10**9)] = None,
    bench: Annotated[Path | None, typer.Option(
        help="Bench file: train on that bench (its network, edges and node roles).")] = None,
    emulate: Annotated[bool, typer.Option(
        help="With --bench: drive the real driver stack against the emulated bench. Alone, for "
             "an in-situ protocol: its simulated bench behind the emulated streaming device.")] = False,
    simulate: Annotated[bool, typer.Option(
        help="With --bench: the bench's model in the fast simulator (no drivers).")] = False,
    traffic_log: Annotated[Path | None, typer.Option(
        help="With --emulate: append the emulated bench's traffic (serial, AO) to this file.")] = None,
    visa_library: VisaOption = None,
    log_file: LogFileOption = None,
    progress_every: ProgressEveryOption = 5.0,
    operator: Annotated[str | None, typer.Option(help="Who runs it (replaces [meta] operator).")]
        = None,
    sample: Annotated[str | None, typer.Option(
        help="The sample or network trained (replaces [meta] sample).")] = None,
    note: Annotated[list[str] | None, typer.Option(
        help="A note for the lab notebook (repeatable; added to [meta] notes).")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        help="A tag to find the run by (repeatable; added to [meta] tags).")] = None,
) -> None:
    """Train as the protocol says: on the simulator, or on a bench (--bench), real or emulated.
    Prints a summary and the path of the PNG report."""
    from clln.compose import build_experiment
    from clln.protocol import load_protocol
    from clln.runtime import limit_bundled_blas

    limit_bundled_blas()
    if (simulate or traffic_log) and bench is None:
        raise UserError("--simulate and --traffic-log need --bench BENCH.toml")
    if emulate and simulate:
        raise UserError("choose one of --emulate and --simulate")
    if traffic_log is not None and not emulate:
        raise UserError("--traffic-log needs --emulate")
    proto, text = load_protocol(protocol)
    if emulate and bench is None and proto.training.mode != "in-situ":
        raise UserError("--emulate needs --bench BENCH.toml (alone it applies to training.mode = "
                        "'in-situ' protocols only)")
    session: Any = None
    extra: dict[str, Any] = {}
    if bench is None and emulate:  # the in-situ stream: §12 of PROTOCOL.md against the emulator
        from clln.insitu import StreamSession

        session = StreamSession(build_experiment(proto, source=str(protocol), base_dir=protocol.parent,
                                                 seed=seed, steps=steps), str(protocol))
        exp, extra = session.experiment, session.info
        where = "emulated streaming in-situ bench"
    elif bench is None:
        exp = build_experiment(proto, source=str(protocol), base_dir=protocol.parent, seed=seed,
                               steps=steps)
        where = f"simulator ({exp.backend.describe()['solver']})"
    else:
        from clln.benchfile import load_bench
        from clln.benchrun import bench_experiment

        bench_spec, bench_text = load_bench(bench)
        target = "emulate" if emulate else "simulate" if simulate else "hardware"
        exp, session = bench_experiment(
            proto, bench_spec, bench_text, source=str(protocol), bench_source=str(bench),
            target=target, seed=seed, steps=steps, traffic_log=traffic_log, visa_library=visa_library)
        where = {"emulate": "emulated bench", "simulate": "model of bench",
                 "hardware": "bench"}[target] + f" {bench_spec.name}"
        used = exp.backend.describe().get("calibration")
        where += f", calibration {used['id']}" if used else ", datasheet tap tables"
    from clln.provenance import collect, lab_meta

    firmware = None
    if bench is not None:
        from clln.resume import bench_info

        extra = bench_info(bench, bench_text, target)
        firmware = getattr(getattr(session.backend, "potbank", None), "info", None)
    extra["meta"] = lab_meta(proto.meta, operator=operator, sample=sample, notes=note, tags=tag)
    extra["provenance"] = collect(protocol, bench_text=bench_text if bench is not None else None,
                                  backend=exp.backend.describe(), firmware=firmware)
    try:
        _train(exp, proto, text, protocol, out, where, extra_info=extra,
               log=(log_file, progress_every))
    finally:
        if session is not None:
            session.close()


def _train(exp: Any, proto: Any, text: str, protocol: Path, out: Path, where: str,
           extra_info: dict[str, Any] | None = None, resume_id: str | None = None,
           log: tuple[Path | None, float] = (None, 5.0)) -> None:
    """Train (or resume) with a progress bar (on a terminal) or progress lines (to a file
    or pipe, and to ``--log-file``); Ctrl-C or SIGTERM stop at the next step boundary (a
    second one stops at once), the backend is made safe, the run is marked and can be
    resumed."""
    from clln.compose import resume_training, run_training
    from clln.drivers.errors import DriverError
    from clln.monitor import ProgressLog, open_log

    store = RunStore(out)
    log_file = open_log(log[0])
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("error {task.fields[error]}"), TextColumn("test {task.fields[test]}"),
        TimeRemainingColumn(), console=console, transient=False, disable=not console.is_terminal,
    )
    bar = progress.add_task("training", total=exp.config.steps, error="-", test="-")
    streams = ([] if console.is_terminal else [sys.stdout]) + ([log_file] if log_file else [])
    seen = {"event": 0}

    def new_events() -> list[dict[str, Any]]:
        if lines.run_id == "-":
            return []
        found = store.events(lines.run_id, after=seen["event"])
        if found:
            seen["event"] = found[-1]["id"]
        return found

    start = store.progress(resume_id)["steps_done"] if resume_id else 0
    lines = ProgressLog(exp.config.steps, every_s=log[1], streams=streams, start_step=start,
                        events=new_events)
    if resume_id:  # events of earlier sessions are in the log already
        seen["event"] = max([0, *(e["id"] for e in store.events(resume_id))])

    def show(rec: StepRecord) -> None:
        fields: dict[str, Any] = {"error": f"{rec.error:.3g}"}
        if rec.test_error is not None:
            fields["test"] = f"{rec.test_error:.3g}"
        progress.update(bar, completed=rec.step, **fields)
        if lines.test == "-" and lines.run_id != "-":  # the last test so far (step 0, or resumed)
            tests = store.records_since(lines.run_id, 2**62, -1)[1]
            if tests:
                lines.test = f"{tests[-1][1]:.4g}"
        lines(rec)

    heading = (f"{_escaped(proto.name)}: {exp.network.n_nodes} nodes, {exp.network.n_edges} edges, "
               f"{exp.task.kind}, rule {exp.rule.name}, seed {exp.seed}, {where}")
    console.print(heading, markup=False, highlight=False)
    if log_file is not None:
        print(heading, file=log_file, flush=True)
    run_ids: list[str] = [resume_id] if resume_id else []

    def started(run_id: str) -> None:
        run_ids.append(run_id)
        lines.run_id = run_id
        progress.update(bar, description=f"run {_plain(run_id)}")

    stop = StopRequest()

    def hint() -> str:
        if not run_ids:
            return ""
        return f"; resume with: clln resume {run_ids[0]} --out {out}"

    with stop.installed():
        try:
            with progress:
                if resume_id is None:
                    outcome = run_training(exp, store, protocol_text=text, protocol_path=str(protocol),
                                           callbacks=[show], on_start=started, should_stop=stop,
                                           extra_info=extra_info)
                else:
                    started(resume_id)
                    outcome = resume_training(exp, store, resume_id, callbacks=[show], should_stop=stop)
        except KeyboardInterrupt:
            where = f"run {run_ids[0]}" if run_ids else "the run"
            raise Interrupted(f"interrupted: {where} is marked interrupted and the backend is safe"
                              f"{hint()}") from None
        except (DriverError, BenchFault) as exc:
            raise CllnError(f"{exc}; the run is paused and the backend safe{hint()}") from None
        except DivergedError as exc:
            where = f"run {run_ids[0]}" if run_ids else "the run"
            raise UserError(f"{exc}; {where} is marked failed and the backend is safe") from None
        finally:
            lines.emit()  # the last step reached, and the events since the last line
            if log_file is not None:
                log_file.close()
    summary = run_summary(store, outcome.run_id)
    _print_summary(summary)
    print(f"report: {outcome.report}", flush=True)
    if outcome.status == "interrupted":
        raise Interrupted(f"stopped at step {summary['steps']}: run {outcome.run_id} is marked "
                          f"interrupted and the backend is safe{hint()}")


class StopRequest:
    """Ctrl-C / SIGTERM handler: the first asks the trainer to stop at the next step
    boundary; a second one raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Any:
        old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


@app.command()
def resume(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
    out: OutOption = Path("runs"),
    visa_library: VisaOption = None,
    log_file: LogFileOption = None,
    progress_every: ProgressEveryOption = 5.0,
) -> None:
    """Continue a run stopped by Ctrl-C, SIGTERM, a crash, power loss or a hardware fault,
    from its last checkpoint (a simulated run ends exactly as if never stopped)."""
    from clln.resume import RESUMABLE, rebuild

    store = _open_store(out, write=True)
    lease = store.lease(run, RESUMABLE)  # atomic: a second resume of the same run is refused
    try:
        exp, session, rec = rebuild(store, lease[0], visa_library=visa_library)
    except BaseException:
        store.release(lease)
        raise
    finally:
        store.close()
    try:
        where = ("simulator" if session is None else "emulated streaming in-situ bench"
                 if "insitu_stream" in rec["info"] else f"bench {rec['info']['bench']['path']}")
        _train(exp, exp.protocol, rec["protocol_text"], Path(rec["protocol_path"] or rec["id"]), out,
               f"resuming at step {rec['steps_done']} on the {where}", resume_id=rec["id"],
               log=(log_file, progress_every))
    finally:
        if session is not None:
            session.close()


@app.command()
def check(
    bench: Annotated[Path, typer.Argument(metavar="BENCH", help="Bench file (TOML).")],
    emulate: Annotated[bool, typer.Option(help="Check against the emulated bench.")] = False,
    visa_library: VisaOption = None,
    fault: Annotated[list[str] | None, typer.Option(
        help="With --emulate: inject a fault: swap-ai:A:B | swap-chain:P:Q | stuck:EDGE[:TAP] | "
             "open:EDGE | short:EDGE (repeatable).")] = None,
) -> None:
    """Drive test patterns through a bench (each source and clamp in turn, every edge at
    known taps), compare every AI reading with what the bench file's map predicts, and
    name swapped AI channels, pots swapped in the chain, open and shorted edges (one line
    each; exit code 3 when any is found)."""
    from clln.benchcheck import check_bench

    progress = Progress(TextColumn("[bold]checking"), BarColumn(), MofNCompleteColumn(), console=console,
                        transient=True)

    def show(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(bar, completed=done, total=total)

    bar = progress.add_task("checking", total=None)
    try:
        out = check_bench(bench, emulate=emulate, faults=fault or [], progress=show,
                          visa_library=visa_library)
    finally:
        if progress.live.is_started:
            progress.stop()
    spec, fw, r = out.bench, out.firmware, out.result
    console.print(f"[bold]{_plain(spec.name)}[/]{' (emulated)' if out.emulated else ''}: firmware "
                  f"'{_plain(fw.name)}' protocol {fw.version[0]}.{fw.version[1]}, {fw.n_pots} pots x "
                  f"{fw.n_taps} taps, watchdog {fw.watchdog_ms} ms; DAQ {spec.daq.device}")
    nodes = Table("node", "AI", "role", *[f"{ao} at {r.amplitude:g} V" for ao in spec.sources.ao],
                  title="analog inputs (V), every edge at its highest resistance, clamps open")
    roles = {**{k: "source" for k in spec.sources.nodes}, **{k: "clamp" for k in spec.clamps.nodes},
             **{k: "ground" for k in spec.grounds}}
    for k in range(spec.nodes):
        nodes.add_row(str(k), spec.ai[k], roles.get(k, ""),
                      *[f"{r.baseline[i, k]:+.4f}" for i in range(len(spec.sources.ao))])
    console.print(nodes)
    kind = "calibrated" if out.calibration_id is not None else "nominal"
    edges = Table("edge", "nodes", "chain", "tap", f"{kind} R (ohm)",
                  title=f"edges (read back){f'; calibration {out.calibration_id}' if out.calibration_id else ''}")
    for j, e in enumerate(spec.edges):
        edges.add_row(str(j), f"{e.nodes[0]}-{e.nodes[1]}", str(e.chain), str(out.taps[j]),
                      f"{out.resistance[j]:.0f}")
    console.print(edges)
    console.print(f"{r.patterns} patterns at {r.settings} tap settings; readings differ from the map by "
                  f"{r.rms_before * 1e3:.3g} mV rms at the worst setting"
                  + (f", {r.rms_after * 1e3:.3g} mV with the faults below" if r.faults else ""),
                  highlight=False)
    for line in r.lines:
        print(f"FAULT: {line}", flush=True)
    if r.lines:
        raise typer.Exit(3)
    print(f"check passed: {spec.nodes} AI channels, {len(spec.edges)} edges and the chain order match "
          f"the bench file", flush=True)


@app.command()
def calibrate(
    bench: Annotated[Path, typer.Argument(metavar="BENCH", help="Bench file (TOML).")],
    emulate: Annotated[bool, typer.Option(help="Calibrate the emulated bench.")] = False,
    edges: Annotated[str | None, typer.Option(
        help="Edges to calibrate, e.g. 0,3,5-7 (the others keep the current calibration).")] = None,
    verify: Annotated[bool, typer.Option(
        help="Re-measure a sample and say whether the current calibration still holds.")] = False,
    calibration: Annotated[Path | None, typer.Option(
        help="The calibration to verify or complete (default: the bench file's calibration key).")]
        = None,
    fault: Annotated[list[str] | None, typer.Option(
        help="With --emulate: inject an edge fault: stuck:EDGE[:TAP] | open:EDGE | short:EDGE "
             "(repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the measurement design.", min=0, max=2**63 - 1)] = 0,
    levels: Annotated[int, typer.Option(help="Tap levels measured per edge.", min=3, max=65536)] = 17,
    threshold: Annotated[float, typer.Option(
        help="Relative disagreement between tomography and calibration that flags an edge.",
        min=0.001)] = 0.03,
    visa_library: VisaOption = None,
) -> None:
    """Calibrate a bench's DAQ channels and every edge's tap -> conductance table, check
    every edge by network tomography, and write the calibration and a PNG report beside
    the bench file; with --verify, check the current calibration (exit code 3 when it no
    longer holds)."""
    from clln.calibrate import run_calibrate

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console)
    bar = progress.add_task("verifying" if verify else "calibrating", total=None)

    def show(done: int, total: int, what: str) -> None:  # the bar appears with the first step
        if not progress.live.is_started:
            progress.start()
        progress.update(bar, completed=done, total=total, description=what)

    try:
        outcome = run_calibrate(bench, emulate=emulate, edges=edges, verify_only=verify,
                                calibration_path=calibration, faults=fault or [], seed=seed,
                                levels=levels, threshold=threshold, progress=show,
                                visa_library=visa_library)
    finally:
        if progress.live.is_started:
            progress.stop()
    cost = outcome.cost
    where = "emulated bench time" if emulate else "bench time"
    console.print(f"{cost.acquisitions} DAQ acquisitions ({cost.boundary_conditions} boundary "
                  f"conditions), {cost.tap_writes} tap writes ({cost.serial_frames} serial frames), "
                  f"{cost.meter_readings} SMU readings; {where} {cost.bench_seconds:.1f} s",
                  highlight=False)
    if outcome.verification is not None:
        v = outcome.verification
        c = v.check
        console.print(f"tomography at {c.taps.shape[0]} tap states (scale: {c.scale}): unflagged "
                      f"edges within rms {c.rms_error:.2%}, max {c.max_error:.2%} of the calibration; "
                      f"AI offsets "
                      f"moved at most {np.abs(v.offset_drift).max() * 1e6:.0f} uV", highlight=False)
        _print_flags(c.flags)
        print(f"report: {outcome.report}", flush=True)
        if not v.holds:
            print(f"calibration {outcome.calibration.id} does NOT hold", flush=True)
            raise typer.Exit(3)
        print(f"calibration {outcome.calibration.id} holds", flush=True)
        return
    cal = outcome.calibration
    s = cal.summary
    check_ = s.get("check") or {}
    console.print(f"scale: {cal.scale}; fit residual (line) median {s['fit_rms_median']:.2%} of R; "
                  f"tomography check rms {check_.get('rms_error', float('nan')):.2%}, max "
                  f"{check_.get('max_error', float('nan')):.2%}", highlight=False)
    _print_flags(cal.flags)
    print(f"calibration: {outcome.path}", flush=True)
    print(f"report: {outcome.report}", flush=True)
    if outcome.path is not None:
        print(f"to use it, put calibration = \"{outcome.path.name}\" in {bench}", flush=True)


def _print_flags(flags: dict[int, str]) -> None:
    if flags:
        listed = ", ".join(f"edge {j} {what}" for j, what in sorted(flags.items()))
        console.print(f"[red]flagged[/]: {listed}", highlight=False)
    else:
        console.print("no edge flagged", highlight=False)


class RunStatus(str, enum.Enum):
    completed = "completed"
    running = "running"
    interrupted = "interrupted"
    paused = "paused"
    failed = "failed"


@app.command()
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

    store = _open_store(out)
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
        table.add_row(_plain(r["id"]), Text(_escaped(r["name"] or "")), store.shown_status(r["id"], r["status"]),
                      f"{r['steps_done']}/{r['steps_planned']}", err, backend, Text(swept), wall,
                      r["created"])
    console.print(table)


@app.command()
def show(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
    out: OutOption = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    with_protocol: Annotated[bool, typer.Option(
        "--protocol", help="Also print the protocol text the run used.")] = False,
) -> None:
    """Summarise a run: status, steps, initial and final train and test error, backend, lab
    notebook (operator, sample, notes, tags), provenance and event log."""
    store = _open_store(out)
    summary = run_summary(store, run)
    summary["events"] = store.events(summary["id"])
    if as_json:
        print(json.dumps(_strict(summary), indent=2, allow_nan=False))
    else:
        _print_summary(summary)
        _print_notebook(summary)
        if with_protocol:
            console.print("[bold]protocol[/]:")
            console.print(_escaped(summary["protocol"], keep="\n\t"), markup=False, highlight=False)


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


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="Run id, unique prefix, or 'latest'.")],
    out: OutOption = Path("runs"),
) -> None:
    """Draw a run's PNG report again (e.g. after a crash while it was being written)."""
    from clln.analysis.report import training_report

    store = _open_store(out)
    run_id = store.resolve(run)
    path = training_report(store, run_id, store.run_dir(run_id) / "report.png")
    print(f"report: {path}", flush=True)


@app.command()
def export(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Output file: .h5/.hdf5 (HDF5) or .nc (NetCDF).")],
    out: OutOption = Path("runs"),
    force: Annotated[bool, typer.Option(help="Overwrite the output file if it exists.")] = False,
) -> None:
    """Export a run to HDF5 or NetCDF (CF-1.8): every array with its units, node positions
    and roles, time stamps, the step-0 and final state, lab metadata, provenance, events."""
    from clln.export import export_run

    store = _open_store(out)
    path = export_run(store, run, file, force=force)
    print(f"exported {store.resolve(run)} to {path}", flush=True)


@app.command()
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
    from clln.protocol import parse_protocol
    from clln.seed002 import is_limit_cycle_file

    if is_limit_cycle_file(Path(run)) or what == "seed002":
        _analyze_limit_cycles(Path(run), out, what)
        return
    if what not in WHATS:
        raise UserError(f"--what: {what!r} is not allowed; allowed: {', '.join(WHATS)}, seed002 "
                        "(with an experiment file)")
    store = _open_store(out)
    rec = store.run(run)
    task = None
    if what != "aging":  # the cost Hessian needs the run's task and training set
        try:
            proto = parse_protocol(rec["protocol_text"], str(rec["protocol_path"] or rec["id"]))
            task = rebuild_task(proto, int(rec["seed"]), rec["info"])
        except UserError as exc:
            console.print(f"cost Hessian skipped: {_escaped(exc)}", markup=False, highlight=False)
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
    from clln.seed002 import LimitCycleExperiment, is_limit_cycle_file, progress_line

    if not is_limit_cycle_file(path):
        raise UserError(f"--what seed002: {str(path)!r} is not a seed 002 experiment file; allowed: a "
                        ".toml file such as protocols/seed002/limit-cycles.toml")
    if what not in ("seed002", "all"):
        raise UserError(f"--what: {what!r} is not allowed for an experiment file; allowed: seed002, all")
    experiment = LimitCycleExperiment(path)  # validated, measurements read: before anything runs
    folder = out / "analyses" / experiment.spec.name
    folder.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]{_plain(experiment.spec.name)}[/]: {len(experiment.spec.cycle.taus_s)} periods "
                  f"on the twin transistor pair")
    cycles = experiment.cycles(lambda c, cpu: print(progress_line(c, cpu), flush=True))
    numbers, figures, json_path = experiment.write(cycles, folder)
    for line in overlay_lines(numbers):
        print(line, flush=True)
    for figure in figures:
        print(f"figure: {figure}", flush=True)
    print(f"numbers: {json_path}", flush=True)


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP", help="Sweep file (TOML).")],
    scheduler: Annotated[str | None, typer.Option(
        help="Address of a running Dask scheduler (tcp://host:8786); a local cluster when omitted.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes of the local cluster (default: one per core).", min=1, max=4096)] = None,
    out: OutOption = Path("runs"),
    resume_sweep: Annotated[bool, typer.Option(
        "--resume", help="Skip the runs of this sweep already completed in the run store.")]
        = False,
) -> None:
    """Run a parameter sweep on Dask; every run goes to the run store, then a results
    table (CSV, JSON) and a summary plot (partial ones when interrupted)."""
    from clln.sweep import load_sweep, open_client, run_sweep

    spec = load_sweep(sweep_file)
    console.print(f"[bold]sweep {_plain(spec.spec.name)}[/]: {len(spec.runs)} runs of "
                  f"{_plain(spec.protocol_path)} "
                  f"({', '.join(spec.keys) or 'no keys'}; seeds "
                  f"{sorted({r.seed for r in spec.runs})})")
    client, cluster = open_client(scheduler, workers)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"), TimeRemainingColumn(), console=console,
    )
    bar = progress.add_task("runs", total=len(spec.runs), failed=0)
    failed: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        if row["status"] != "completed":
            failed.append(row)
        progress.update(bar, advance=1, failed=len(failed))

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with progress:
            outcome = run_sweep(spec, out, client, on_result=done, resume=resume_sweep)
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "partial", None)
        where = f"; partial results in {partial}" if partial else ""
        raise Interrupted(f"interrupted: finished runs are in the run store{where}; continue with: "
                          f"clln sweep {sweep_file} --resume --out {out}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        client.close()
        if cluster is not None:
            cluster.close()
    for row in failed:
        console.print(f"[red]run {row['index'] + 1} failed[/] ({_plain(row['run_id'] or 'not started')}): "
                      f"{_plain(row['message'])}", markup=True, highlight=False)
    print(f"{len(outcome.rows) - outcome.n_failed} of {len(outcome.rows)} runs completed "
          f"in {outcome.wall_time:.1f} s", flush=True)
    print(f"results: {outcome.csv}", flush=True)
    print(f"results: {outcome.json}", flush=True)
    print(f"summary plot: {outcome.plot}", flush=True)
    if outcome.rows and outcome.n_failed == len(outcome.rows):
        first = outcome.rows[0]["message"] or outcome.rows[0]["status"]
        raise UserError(f"every one of the sweep's {len(outcome.rows)} runs failed; the first: {first}")


@app.command()
def watch(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")] = "latest",
    out: OutOption = Path("runs"),
    port: Annotated[int, typer.Option(help="TCP port of the dashboard.", min=1, max=65535)] = 5006,
    host: Annotated[str, typer.Option(
        help="Address to listen on; other than 127.0.0.1/localhost, a token is required.")]
        = "127.0.0.1",
    token: Annotated[str | None, typer.Option(
        help="Token the page asks for when bound off the local host (default: a random one).")]
        = None,
    sweep_name: Annotated[str | None, typer.Option(
        "--sweep", help="Show this sweep's runs and its summary plot instead of one run.")] = None,
) -> None:
    """Live dashboard in the browser: errors, network, nudge and update size, bench status,
    event log, and pause/resume/stop buttons that a run on another terminal obeys.
    Stop with Ctrl-C."""
    from clln.watch import make_server

    store = _open_store(out)
    run_id = store.resolve(run) if sweep_name is None and run != "latest" else run
    if run == "latest" and sweep_name is None:
        store.resolve("latest")  # an empty store is an error here, not in the page
    store.close()
    try:
        server, url = make_server(out, run_id, host=host, port=port, token=token, sweep=sweep_name)
    except OSError as exc:
        raise UserError(f"--port {port}: cannot listen on {host} ({exc.strerror})") from None
    server.start()
    print(f"dashboard: {url}", flush=True)
    print(f"all runs: {url.split('/run')[0]}/runs", flush=True)
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command()
def control(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
    action: Annotated[str, typer.Argument(metavar="ACTION", help="pause | resume | stop.")],
    out: OutOption = Path("runs"),
) -> None:
    """Ask a running run (on any terminal) to pause, resume or stop at its next step boundary;
    a stopped run is marked interrupted and can be resumed."""
    from clln.controller.store import CONTROL_ACTIONS

    if action not in CONTROL_ACTIONS:
        raise UserError(f"ACTION: {action!r} is not allowed; allowed: {', '.join(CONTROL_ACTIONS)}")
    store = _open_store(out, write=True)
    run_id = store.resolve(run)
    status = store.progress(run_id)["status"]
    if status != "running":
        raise UserError(f"run {run_id} is {status}, not running; nothing to {action}")
    store.request(run_id, action)
    print(f"{action} requested for run {run_id}", flush=True)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _open_store(out: Path, *, write: bool = False) -> RunStore:
    """The run store in ``out``; read-only unless ``write`` (read commands work on a
    read-only folder and never change the store)."""
    if not (out / "runs.sqlite").exists():
        raise UserError(f"{out}: no run store here (train first, or pass --out DIR)")
    return RunStore(out, readonly=not write)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _strict(value: Any) -> Any:
    """``value`` with every NaN or infinity (at any depth) replaced by None: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _floor(test_error: np.ndarray) -> float | None:
    """Error floor: median test error over the last quarter of the evaluations (at least 3)."""
    from clln.analysis.floor import error_floor

    return error_floor(test_error)


def run_summary(store: RunStore, run: str) -> dict[str, Any]:
    """The facts ``clln show`` reports, as JSON-ready values."""
    rec = store.run(run)
    hist = store.history(run)
    test_acc = hist.test_accuracy[-1] if hist.test_accuracy.size else None
    return {
        "id": rec["id"],
        "name": rec["name"],
        "status": store.shown_status(rec["id"], rec["status"]),
        "created": rec["created"],
        "steps": int(rec["steps_done"]),
        "steps_planned": int(rec["steps_planned"]),
        "seed": int(rec["seed"]),
        "initial_train_error": _finite(hist.error[0]) if hist.error.size else None,
        "final_train_error": _finite(hist.error[-1]) if hist.error.size else None,
        "initial_test_error": _finite(hist.test_error[0]) if hist.test_error.size else None,
        "final_test_error": _finite(hist.test_error[-1]) if hist.test_error.size else None,
        "final_test_accuracy": _finite(test_acc) if test_acc is not None else None,
        "test_error_floor": _floor(hist.test_error),
        "wall_time_s": _finite(rec["wall_time"]),
        "backend": rec["backend"],
        "clln_version": rec["version"],
        "protocol_path": rec["protocol_path"],
        "protocol": rec["protocol_text"],
        "message": rec["message"],
        "scheme": rec["info"].get("scheme"),
        "meta": rec["info"].get("meta"),
        "provenance": rec["info"].get("provenance"),
        "sweep": rec["info"].get("sweep"),
        "final_conductances": None if rec["final_state"] is None else np.asarray(rec["final_state"]).tolist(),
    }


def _print_summary(s: dict[str, Any]) -> None:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    table = Table(show_header=False, box=None)
    table.add_row("run", _plain(f"{s['id']} ({s['name']})"))
    table.add_row("status", s["status"] + (f" — {_plain(s['message'])}" if s["message"] else ""))
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
    table.add_row("protocol", _plain(s["protocol_path"]))
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


def _is_click(exc: Exception, name: str) -> bool:
    """Whether exc is click's exception ``name`` (typer may bundle its own click)."""
    import importlib

    kinds = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return isinstance(exc, tuple(kinds))


def _escaped(text: object, keep: str = "") -> str:
    """``text`` safe for a terminal: control and format characters (escape sequences,
    line breaks, bidirectional overrides) shown as Python escapes, except those in ``keep``."""
    import unicodedata

    return "".join(c if c in keep or not unicodedata.category(c).startswith("C")
                   else repr(c)[1:-1] for c in str(text))


def _plain(text: object, keep: str = "") -> str:
    """:func:`_escaped` and safe inside rich markup (brackets taken literally)."""
    from rich.markup import escape

    return escape(_escaped(text, keep))


def _say(message: str) -> None:
    """One unwrapped line on stderr (line breaks and escape sequences inside a message
    are shown escaped)."""
    print(_escaped(message), file=sys.stderr, flush=True)


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    from clln.benchrun import BenchOverrideWarning
    from clln.controller.calibration import CalibrationWarning

    if issubclass(category, (CalibrationWarning, BenchOverrideWarning)):
        _say(f"warning: {message}")
    else:  # any other warning: one escaped line too (it may quote a name or a file)
        _say(f"warning: {category.__name__}: {message}")


def main() -> None:
    """Entry point: user errors print one line and exit 2; Ctrl-C exits 130."""
    warnings.showwarning = _show_warning
    args = sys.argv[1:]
    if "--debug" in args[:args.index("--")] if "--" in args else "--debug" in args:
        _state["debug"] = True  # --debug anywhere on the line, as the error messages suggest
        args.remove("--debug")
    # numpy's overflow and invalid-value warnings: the finite checks turn a non-finite
    # result into one line ("training diverged at step k: ..."), nothing more is printed
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="clln")
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # names drawn in reports
    try:
        code = app(args=args, prog_name="clln", standalone_mode=False)
    except UserError as exc:
        _say(f"error: {exc}")
        sys.exit(2)
    except sqlite3.DatabaseError as exc:  # a damaged, full or unwritable run store
        from clln.controller.store import store_problem

        _say(f"error: {store_problem(Path('runs.sqlite'), exc)}")
        sys.exit(2)
    except Interrupted as exc:
        _say(str(exc))
        sys.exit(130)
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)
    except CllnError as exc:
        if _state["debug"]:
            raise
        _say(f"error: {exc}")
        sys.exit(1)
    except Exception as exc:
        if _is_click(exc, "ClickException"):  # usage errors: bad option, unknown command
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2 if exc.exit_code == 1 else exc.exit_code)  # type: ignore[attr-defined]
        if _is_click(exc, "Abort"):
            sys.exit(130)
        if _state["debug"]:
            raise
        _say(f"unexpected error: {type(exc).__name__}: {exc} (run with --debug for a traceback)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
