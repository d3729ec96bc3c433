"""Commands that work on a bench file: ``check`` and ``calibrate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from clln.commands.common import VisaOption, console, plain


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
    console.print(f"[bold]{plain(spec.name)}[/]{' (emulated)' if out.emulated else ''}: firmware "
                  f"'{plain(fw.name)}' protocol {fw.version[0]}.{fw.version[1]}, {fw.n_pots} pots x "
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
    import numpy as np

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
        print_flags(c.flags)
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
    print_flags(cal.flags)
    print(f"calibration: {outcome.path}", flush=True)
    print(f"report: {outcome.report}", flush=True)
    if outcome.path is not None:
        print(f"to use it, put calibration = \"{outcome.path.name}\" in {bench}", flush=True)


def print_flags(flags: dict[int, str]) -> None:
    if flags:
        listed = ", ".join(f"edge {j} {what}" for j, what in sorted(flags.items()))
        console.print(f"[red]flagged[/]: {listed}", highlight=False)
    else:
        console.print("no edge flagged", highlight=False)
