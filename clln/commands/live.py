"""Commands around running work: ``sweep``, the ``watch`` dashboard and ``control``."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clln.commands.common import OutOption, console, open_store, plain


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
    from clln.controller.errors import Interrupted, UserError
    from clln.sweep import load_sweep, open_client, run_sweep

    spec = load_sweep(sweep_file)
    console.print(f"[bold]sweep {plain(spec.spec.name)}[/]: {len(spec.runs)} runs of "
                  f"{plain(spec.protocol_path)} "
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
        console.print(f"[red]run {row['index'] + 1} failed[/] ({plain(row['run_id'] or 'not started')}): "
                      f"{plain(row['message'])}", markup=True, highlight=False)
    print(f"{len(outcome.rows) - outcome.n_failed} of {len(outcome.rows)} runs completed "
          f"in {outcome.wall_time:.1f} s", flush=True)
    print(f"results: {outcome.csv}", flush=True)
    print(f"results: {outcome.json}", flush=True)
    print(f"summary plot: {outcome.plot}", flush=True)
    if outcome.rows and outcome.n_failed == len(outcome.rows):
        first = outcome.rows[0]["message"] or outcome.rows[0]["status"]
        raise UserError(f"every one of the sweep's {len(outcome.rows)} runs failed; the first: {first}")


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
    from clln.controller.errors import UserError
    from clln.watch import make_server

    store = open_store(out)
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


def control(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
    action: Annotated[str, typer.Argument(metavar="ACTION", help="pause | resume | stop.")],
    out: OutOption = Path("runs"),
) -> None:
    """Ask a running run (on any terminal) to pause, resume or stop at its next step boundary;
    a stopped run is marked interrupted and can be resumed."""
    from clln.controller.errors import UserError
    from clln.controller.store import CONTROL_ACTIONS

    if action not in CONTROL_ACTIONS:
        raise UserError(f"ACTION: {action!r} is not allowed; allowed: {', '.join(CONTROL_ACTIONS)}")
    store = open_store(out, write=True)
    run_id = store.resolve(run)
    status = store.progress(run_id)["status"]
    if status != "running":
        raise UserError(f"run {run_id} is {status}, not running; nothing to {action}")
    store.request(run_id, action)
    print(f"{action} requested for run {run_id}", flush=True)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
