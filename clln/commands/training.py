"""Commands that train: ``train`` and ``resume``, with progress, and stopping on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clln.commands.common import (
    LogFileOption,
    OutOption,
    ProgressEveryOption,
    VisaOption,
    console,
    escaped,
    open_store,
    plain,
)
from clln.commands.runs import print_summary

if TYPE_CHECKING:
    from clln.benchrun import BenchSession
    from clln.controller.trainer import StepRecord
    from clln.drivers.potbank import FirmwareInfo
    from clln.insitu import StreamSession


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
    from clln.controller.errors import UserError
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
    session: BenchSession | StreamSession | None = None
    firmware: FirmwareInfo | None = None
    extra: dict[str, Any] = {}
    if bench is None and emulate:  # the in-situ stream: §12 of PROTOCOL.md against the emulator
        from clln.insitu import StreamSession

        stream = StreamSession(build_experiment(proto, source=str(protocol), base_dir=protocol.parent,
                                                seed=seed, steps=steps), str(protocol))
        session, exp, extra = stream, stream.experiment, stream.info
        where = "emulated streaming in-situ bench"
    elif bench is None:
        exp = build_experiment(proto, source=str(protocol), base_dir=protocol.parent, seed=seed,
                               steps=steps)
        where = f"simulator ({exp.backend.describe()['solver']})"
    else:
        from clln.benchfile import load_bench
        from clln.benchrun import bench_experiment
        from clln.drivers.hardware import HardwareBackend

        bench_spec, bench_text = load_bench(bench)
        target: Literal["hardware", "emulate", "simulate"] = (
            "emulate" if emulate else "simulate" if simulate else "hardware")
        exp, session = bench_experiment(
            proto, bench_spec, bench_text, source=str(protocol), bench_source=str(bench),
            target=target, seed=seed, steps=steps, traffic_log=traffic_log, visa_library=visa_library)
        if isinstance(session.backend, HardwareBackend):  # the driver stack knows its firmware
            firmware = session.backend.potbank.info
        where = {"emulate": "emulated bench", "simulate": "model of bench",
                 "hardware": "bench"}[target] + f" {bench_spec.name}"
        used = cast("dict[str, Any] | None", exp.backend.describe().get("calibration"))
        where += f", calibration {used['id']}" if used else ", datasheet tap tables"
    from clln.provenance import collect, lab_meta

    if bench is not None:
        from clln.resume import bench_info

        extra = bench_info(bench, bench_text, target)
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
    from clln.analysis.metrics import run_summary
    from clln.compose import resume_training, run_training
    from clln.controller.bounds import DivergedError
    from clln.controller.errors import BenchFault, CllnError, Interrupted, UserError
    from clln.controller.store import RunStore
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

    heading = (f"{escaped(proto.name)}: {exp.network.n_nodes} nodes, {exp.network.n_edges} edges, "
               f"{exp.task.kind}, rule {exp.rule.name}, seed {exp.seed}, {where}")
    console.print(heading, markup=False, highlight=False)
    if log_file is not None:
        print(heading, file=log_file, flush=True)
    run_ids: list[str] = [resume_id] if resume_id else []

    def started(run_id: str) -> None:
        run_ids.append(run_id)
        lines.run_id = run_id
        progress.update(bar, description=f"run {plain(run_id)}")

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
    print_summary(summary)
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

    store = open_store(out, write=True)
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
