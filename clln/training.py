"""Running an experiment as a recorded run: every step and a checkpoint in the run
store, the backend's safe state on every exit, the run's final status, and its report.
(:mod:`clln.compose` builds the experiment.)"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import clln
from clln.analysis.report import training_report
from clln.controller import events
from clln.controller.capabilities import KeepsAlive, supports
from clln.controller.checkpoint import pack_state, restore_trainer, trainer_state, unpack_state
from clln.controller.errors import BenchFault, UserError
from clln.controller.store import RunStatus, RunStore
from clln.controller.trainer import StepCallback, StepRecord, Trainer, TrainResult
from clln.drivers.errors import DriverError
from clln.insitu import insitu_trainer, keep_records

if TYPE_CHECKING:
    from clln.compose import Experiment


def network_info(exp: Experiment) -> dict[str, Any]:
    """What the run store keeps about the network and task (JSON)."""
    net = exp.network
    return {
        "n_nodes": net.n_nodes,
        "n_edges": net.n_edges,
        "edges": net.edges.tolist(),
        "positions": None if net.positions is None else net.positions.tolist(),
        "sources": list(net.roles.sources),
        "grounds": list(net.roles.grounds),
        "clamps": list(net.roles.clamps),
        "task": exp.task.kind,
        "output_nodes": list(exp.task.output_nodes),
        "output_edges": [list(e) for e in exp.task.output_edges],
        "rule": exp.rule.name,
        "scheme": None if exp.scheme is None else exp.scheme.describe(),
        "eta": exp.config.eta,
        "batch": exp.config.batch_size,
        "steps": exp.config.steps,
        **({} if exp.edge_list is None else {"edge_list": {"file": exp.protocol.network.file,
                                                          "text": exp.edge_list}}),
    }


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    status: RunStatus
    result: TrainResult | None
    report: Path | None
    store_path: Path


def make_trainer(exp: Experiment) -> Trainer:
    """The trainer of an experiment (the in-situ trainer in mode 'in-situ')."""
    if exp.protocol.training.mode == "in-situ":
        return insitu_trainer(exp)  # type: ignore[return-value]
    return Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng, scheme=exp.scheme)


def run_training(
    exp: Experiment,
    store: RunStore,
    *,
    protocol_text: str,
    protocol_path: str | None,
    callbacks: Sequence[StepCallback] = (),
    on_start: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    extra_info: dict[str, Any] | None = None,
) -> TrainOutcome:
    """Train, recording every step and a checkpoint in the run store; write the PNG report.

    See :func:`execute` for how the run ends.
    """
    state0 = exp.backend.read_edges()
    run_id = store.create_run(
        name=exp.protocol.name, protocol_text=protocol_text, protocol_path=protocol_path,
        version=clln.__version__, seed=exp.seed, backend=exp.backend.describe(),
        info={**network_info(exp), **(extra_info or {})}, steps_planned=exp.config.steps,
        initial_state=state0.conductances if state0.taps is None else state0.taps,
    )
    if on_start is not None:
        on_start(run_id)
    trainer = make_trainer(exp)
    keep_records(trainer, store, run_id)
    return execute(exp, trainer, store, run_id, callbacks=callbacks, should_stop=should_stop)


def resume_training(
    exp: Experiment,
    store: RunStore,
    run_id: str,
    *,
    callbacks: Sequence[StepCallback] = (),
    should_stop: Callable[[], bool] | None = None,
) -> TrainOutcome:
    """Continue a stopped run from its last checkpoint. ``exp`` must be rebuilt from the
    run's own protocol text and seed (see :func:`rebuild_experiment`)."""
    trainer = make_trainer(exp)
    keep_records(trainer, store, run_id)
    found = store.checkpoint(run_id)
    if found is None:  # stopped before its first step was recorded: start over
        store.restart(run_id)
        return execute(exp, trainer, store, run_id, callbacks=callbacks, should_stop=should_stop)
    step, blob = found
    restore_trainer(trainer, unpack_state(blob))
    hist = store.history(run_id)
    tests = (float(hist.test_error[0]), float(hist.test_error[-1])) if hist.test_error.size else None
    if tests is None:
        raise UserError(f"run {run_id} has a checkpoint but no initial test evaluation")
    store.reopen(run_id)
    previous = store.run(run_id).wall_time or 0.0
    return execute(exp, trainer, store, run_id, callbacks=callbacks, should_stop=should_stop,
                   start_step=step, resumed_tests=tests, wall_offset=previous)


def execute(
    exp: Experiment,
    trainer: Trainer,
    store: RunStore,
    run_id: str,
    *,
    callbacks: Sequence[StepCallback] = (),
    should_stop: Callable[[], bool] | None = None,
    start_step: int = 0,
    resumed_tests: tuple[float, float] | None = None,
    wall_offset: float = 0.0,
) -> TrainOutcome:
    """Run a trainer on a recorded run.

    Every step's records and a checkpoint go in one transaction. The backend is put
    in its safe state on every exit path. The run ends ``completed``; ``interrupted``
    when ``should_stop`` asked for it at a step boundary, or on KeyboardInterrupt
    (re-raised); ``paused`` after a hardware fault (re-raised; resumable); ``failed``
    after anything else (re-raised).
    """
    from clln.monitor import StoreControl

    store.claim(run_id, socket.gethostname(), os.getpid())
    control = StoreControl(store, run_id, safe=exp.backend.safe, local=should_stop,
                           keepalive=exp.backend.keepalive if supports(exp.backend, KeepsAlive) else None)
    control.step = start_step
    if start_step:
        store.log_event(run_id, "resume-point", f"resumed from the checkpoint at step {start_step}",
                        step=start_step, data={"host": socket.gethostname(), "pid": os.getpid(),
                                               "clln": clln.__version__})

    def record(rec: StepRecord) -> None:
        store.record_step(
            run_id, rec.step, error=rec.error, nudge=rec.nudge, update_norm=rec.update_norm,
            n_clipped=rec.n_clipped,
            test=None if rec.test_error is None else (rec.test_error, rec.test_accuracy),
            snapshot=None if rec.conductances is None else (rec.conductances, rec.taps),
            checkpoint=pack_state(trainer_state(trainer)),
        )

    t0 = time.perf_counter()
    status, message, result = RunStatus.FAILED, None, None

    def log(kind: str, text: str, data: dict[str, Any] | None) -> None:
        store.log_event(run_id, kind, text, step=control.step, data=data)

    try:
        with events.recording(log):
            result = trainer.run(
                [record, control.observe, *callbacks], start_step=start_step,
                resumed_tests=resumed_tests,
                on_initial_test=lambda err, acc: store.record_test(run_id, 0, err, acc),
                should_stop=control,
            )
        if result.interrupted:
            status, message = RunStatus.INTERRUPTED, f"stopped at step {result.steps_done} on request"
        else:
            status = RunStatus.COMPLETED
    except KeyboardInterrupt:
        status, message = RunStatus.INTERRUPTED, "interrupted by the user"
        raise
    except DriverError as exc:
        status, message = RunStatus.PAUSED, f"hardware fault: {exc}"
        store.log_event(run_id, "fault", message, step=control.step)
        raise
    except BenchFault as exc:
        status, message = RunStatus.PAUSED, f"bench fault: {exc}"
        raise
    except UserError as exc:  # e.g. training diverged: the run fails with that one line
        message = str(exc)
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            exp.backend.safe()
        finally:
            final = exp.backend.read_edges()
            store.finish(run_id, status=status, final_state=final.conductances, final_taps=final.taps,
                         wall_time=wall_offset + time.perf_counter() - t0, message=message,
                         info=None if exp.scheme is None else {"scheme": exp.scheme.describe()})
    report = training_report(store, run_id, store.run_dir(run_id) / "report.png")
    return TrainOutcome(run_id, status, result, report, store.path)
