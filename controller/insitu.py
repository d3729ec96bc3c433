"""Learning in place: the rig's experiment loop, run by the bench itself.

On a bench whose edges update themselves (the Penn CLLNs) the host never computes an
update: it downloads an :class:`InSituExperiment` and reads records back. This module
holds that experiment, its per-step :class:`InSituRecord`, and the ONE executor of the
loop (:func:`run_loop`), which the simulated benches run on their physics and the
streaming-bench emulator runs behind its serial link (a firmware runs the same loop).

Per step k (1-based) with nudge eta_k and learning window T_k:

1. a free pass over the training set: outputs, train error, and the number of samples
   that still teach (all of them, or with hinge gating only those misclassified or
   outside the margin);
2. for every training sample whose learn flag is set, in order: free measurement ->
   (hinge gate) -> nudge O_C = O_F + eta_k (y - O_F) (anti-clamp: the free twin is
   held at the mirrored O_F - eta_k (y - O_F), i.e. a target of 2 O_F - y) -> clamped
   measurement -> learning enabled for T_k (T_k / n_teaching with NOR), in whole
   timer ticks;
3. every ``test_every`` steps (and at the last step) a free pass over the test set.

Nudges are set by a divider of ``eta_levels`` steps (eta = code / eta_levels <= 1);
eta > 1 exists only through a declared amplifier of gain G (eta = G code / eta_levels).
Volts in, volts out; times in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from clln.controller.capabilities import LearnsInPlace, require
from clln.controller.schemes import Scheme
from clln.controller.trainer import Backoff, ReversalBackoff, StepCallback, StepRecord, TrainResult


@dataclass(frozen=True)
class TimerModel:
    """The learning-window timer: ``tick_s`` resolution, at most ``max_ticks`` per window.

    Default: an AVR 16-bit Timer1 at 16 MHz / 8, 0.5 us per tick, 65535 ticks (32.77 ms).
    """

    tick_s: float = 0.5e-6
    max_ticks: int = 65535

    @property
    def min_s(self) -> float:
        return self.tick_s

    @property
    def max_s(self) -> float:
        return self.tick_s * self.max_ticks

    def ticks(self, seconds: float) -> int:
        return int(round(seconds / self.tick_s))


AVR_TIMER1 = TimerModel()


def as_float32(values: np.ndarray) -> np.ndarray:
    """Values at the rig's float precision (an AVR ``float`` is IEEE single), as float64."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


@dataclass(frozen=True, eq=False)
class InSituExperiment:
    """Everything a bench needs to run the loop on its own.

    Attributes
    ----------
    train_sources, test_sources : (N, n_sources), (N_test, n_sources) volts.
    train_targets, test_targets : (N, n_outputs), (N_test, n_outputs) volts at the
        clamped (output) nodes.
    train_labels, test_labels : (N,), (N_test,) class indices for classification; None
        for regression.
    eta_codes : (steps,) nudge divider codes, 0..eta_levels.
    amplified : (steps,) bool, the step's nudge goes through the amplifier.
    learn_ticks : (steps,) learning window per step, timer ticks.
    learn_flags : (N,) bool, which training samples teach.
    hinge : update only samples that are misclassified (classification) or whose largest
        output error exceeds ``margin`` volts (regression).
    normalise : NOR: each window is the step's window divided by the number of teaching
        samples.
    anti_clamp : hold the free twin at the mirrored nudge (target 2 O_F - y).
    amplifier_gain : gain of the nudge amplifier; None when the bench has none.
    eta_levels : steps of the nudge divider (the rig's 129).
    test_every : test evaluation every this many steps (and at the last one).
    timer : the learning-window timer.
    """

    train_sources: np.ndarray
    train_targets: np.ndarray
    test_sources: np.ndarray
    test_targets: np.ndarray
    eta_codes: np.ndarray
    amplified: np.ndarray
    learn_ticks: np.ndarray
    learn_flags: np.ndarray
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    hinge: bool = False
    margin: float = 0.0
    normalise: bool = False
    anti_clamp: bool = False
    amplifier_gain: float | None = None
    eta_levels: int = 129
    test_every: int = 10
    timer: TimerModel = field(default=AVR_TIMER1)

    def __post_init__(self) -> None:
        steps = self.steps
        for name in ("amplified", "learn_ticks"):
            if len(getattr(self, name)) != steps:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {steps} steps")
        if len(self.learn_flags) != len(self.train_sources):
            raise ValueError("learn_flags needs one entry per training sample")
        if np.any(self.amplified) and self.amplifier_gain is None:
            raise ValueError("an amplified nudge needs an amplifier_gain")

    @property
    def steps(self) -> int:
        return int(len(self.eta_codes))

    @property
    def n_train(self) -> int:
        return int(len(self.train_sources))

    def eta(self, step: int) -> float:
        """The nudge of step ``step`` (1-based) as the hardware applies it."""
        i = step - 1
        gain = 1.0
        if self.amplified[i]:
            assert self.amplifier_gain is not None  # checked when the experiment is made
            gain = self.amplifier_gain
        return float(gain * int(self.eta_codes[i]) / self.eta_levels)

    def window_s(self, step: int, n_teaching: int) -> float:
        """The learning window (s) of one sample at step ``step``."""
        ticks = int(self.learn_ticks[step - 1])
        if self.normalise:
            ticks = max(1, int(round(ticks / max(n_teaching, 1))))
        return ticks * self.timer.tick_s

    @classmethod
    def from_schedules(
        cls, *, train_sources: np.ndarray, train_targets: np.ndarray, test_sources: np.ndarray,
        test_targets: np.ndarray, eta: Sequence[float], learn_time_s: Sequence[float],
        amplifier_gain: float | None = None, eta_levels: int = 129,
        learn_flags: np.ndarray | None = None, timer: TimerModel = AVR_TIMER1, **options: object,
    ) -> InSituExperiment:
        """An experiment from eta and learning-time schedules in physical units.

        eta <= 1 is set by the divider alone; eta > 1 needs ``amplifier_gain`` and is
        realised as gain * code / eta_levels. ValueError when a value cannot be realised.
        """
        etas = np.asarray(eta, dtype=float)
        amplified: np.ndarray = etas > 1.0
        if amplified.any() and amplifier_gain is None:
            raise ValueError("eta > 1 needs an amplifier (amplifier_gain)")
        gain = np.where(amplified, amplifier_gain or 1.0, 1.0)
        codes = np.rint(etas / gain * eta_levels).astype(np.int64)
        if np.any(codes < 1) or np.any(codes > eta_levels):
            raise ValueError(f"eta must lie in 1/{eta_levels}..{gain.max():g}")
        ticks = np.rint(np.asarray(learn_time_s, dtype=float) / timer.tick_s).astype(np.int64)
        if np.any(ticks < 1) or np.any(ticks > timer.max_ticks):
            raise ValueError(f"learning time must lie in {timer.min_s:g}..{timer.max_s:g} s")
        n = len(train_sources)
        flags = np.ones(n, dtype=bool) if learn_flags is None else np.asarray(learn_flags, dtype=bool)
        return cls(
            train_sources=as_float32(train_sources), train_targets=as_float32(train_targets),
            test_sources=as_float32(test_sources), test_targets=as_float32(test_targets),
            eta_codes=codes, amplified=amplified, learn_ticks=ticks, learn_flags=flags,
            amplifier_gain=amplifier_gain, eta_levels=eta_levels, timer=timer,
            **options,  # type: ignore[arg-type]
        )


@dataclass(frozen=True, eq=False)
class InSituRecord:
    """What one step of the loop did.

    Attributes
    ----------
    step : 1-based step; 0 is the record of the initial test evaluation (no learning).
    eta : nudge applied (as the hardware realises it).
    window_s : learning window of each teaching sample, s.
    n_teaching : samples that taught.
    train_error : mean squared output error (V^2) of the step's free pass.
    free : (N, n) node voltages, V, of each sample's free measurement (the free pass at
        step 0).
    clamped : (N, n) node voltages, V, of each sample's clamped measurement; NaN rows
        for samples that did not teach.
    state : (m,) adjustable state after the step (tracked taps, gate voltages).
    test_error, test_accuracy : the test evaluation, on steps that have one.
    """

    step: int
    eta: float
    window_s: float
    n_teaching: int
    train_error: float
    free: np.ndarray
    clamped: np.ndarray
    state: np.ndarray
    test_error: float | None = None
    test_accuracy: float | None = None


class InSituPhysics(Protocol):
    """The primitives the loop drives: what a bench's analog side does.

    ``measure(sources, clamps)`` settles the free network (``clamps`` None) or the
    clamped one and returns its (B, n) node voltages for (B, n_sources) sources and
    (B, n_clamps) clamps. ``learn(sources, clamps, duration_s, free_clamps)`` holds the
    clamped twin at ``clamps`` (n_clamps,) and the free twin free (or at
    ``free_clamps``), and lets every edge update itself for ``duration_s``.
    ``read_state()`` is the adjustable state (m,); ``output_nodes`` the clamped nodes.
    """

    @property
    def output_nodes(self) -> tuple[int, ...]:
        ...

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> np.ndarray:
        ...

    def learn(self, sources: np.ndarray, clamps: np.ndarray, duration_s: float,
              free_clamps: np.ndarray | None = None) -> None:
        ...

    def read_state(self) -> np.ndarray:
        ...


def _wrong(outputs: np.ndarray, targets: np.ndarray, labels: np.ndarray | None,
           margin: float) -> np.ndarray:
    """(B,) bool: misclassified (labels given) or largest |error| above ``margin`` V."""
    if labels is not None:
        return np.argmax(outputs, axis=1) != labels
    return np.max(np.abs(outputs - targets), axis=1) > margin


def _evaluate(physics: InSituPhysics, sources: np.ndarray, targets: np.ndarray,
              labels: np.ndarray | None) -> tuple[np.ndarray, float, float | None]:
    """Free pass: (B, n) voltages, mean squared error V^2, accuracy (classification)."""
    free = physics.measure(sources)
    outputs = free[:, list(physics.output_nodes)]
    error = float(np.mean((outputs - targets) ** 2))
    accuracy = None if labels is None else float(np.mean(np.argmax(outputs, axis=1) == labels))
    return free, error, accuracy


def run_loop(physics: InSituPhysics, experiment: InSituExperiment, start_step: int = 0,
             n_steps: int | None = None) -> Iterator[InSituRecord]:
    """The rig's experiment loop on ``physics``; one record per step.

    Steps ``start_step + 1 .. start_step + n_steps`` (to the experiment's end when
    ``n_steps`` is None); with ``start_step == 0`` a step-0 record with the initial test
    evaluation comes first. The physics must already be in the state of ``start_step``.
    """
    ex = experiment
    last = ex.steps if n_steps is None else min(ex.steps, start_step + n_steps)
    outs = list(physics.output_nodes)
    if start_step == 0:
        free, train_error, _ = _evaluate(physics, ex.train_sources, ex.train_targets, ex.train_labels)
        _, test_error, test_acc = _evaluate(physics, ex.test_sources, ex.test_targets, ex.test_labels)
        yield InSituRecord(0, 0.0, 0.0, 0, train_error, free, np.full_like(free, np.nan),
                           physics.read_state(), test_error, test_acc)
    for step in range(start_step + 1, last + 1):
        eta = ex.eta(step)
        margin = ex.margin if ex.hinge else -np.inf
        passed, train_error, _ = _evaluate(physics, ex.train_sources, ex.train_targets,
                                           ex.train_labels)
        pass_out = passed[:, outs]
        teaching = ex.learn_flags & (_wrong(pass_out, ex.train_targets, ex.train_labels, margin)
                                     if ex.hinge else True)
        n_teaching = int(np.count_nonzero(teaching))
        window = ex.window_s(step, n_teaching)
        n, n_nodes = passed.shape
        free_v = np.empty((n, n_nodes))
        clamped_v = np.full((n, n_nodes), np.nan)
        count = 0
        for i in range(n):
            src = ex.train_sources[i:i + 1]
            free = physics.measure(src)
            free_v[i] = free[0]
            if not ex.learn_flags[i]:
                continue
            out = free[:, outs]
            if ex.hinge and not _wrong(out, ex.train_targets[i:i + 1],
                                       None if ex.train_labels is None else ex.train_labels[i:i + 1],
                                       ex.margin)[0]:
                continue
            nudge = eta * (ex.train_targets[i:i + 1] - out)
            clamps = out + nudge
            clamped_v[i] = physics.measure(src, clamps)[0]
            physics.learn(src[0], clamps[0], window, (out - nudge)[0] if ex.anti_clamp else None)
            count += 1
        record = InSituRecord(step, eta, window, count, train_error, free_v, clamped_v,
                              physics.read_state())
        if step % ex.test_every == 0 or step == ex.steps:
            _, test_error, test_acc = _evaluate(physics, ex.test_sources, ex.test_targets,
                                                ex.test_labels)
            record = InSituRecord(**{**record.__dict__, "test_error": test_error,
                                     "test_accuracy": test_acc})
        yield record


class PhysicsBench:
    """A simulated bench that learns in place by running :func:`run_loop` on its own
    physics (``self.physics``: the :class:`InSituPhysics` primitives plus ``network``,
    ``state_dict`` and ``load_state_dict``); subclasses add ``edges``, ``read_edges`` and
    ``describe``."""

    twin = True
    physics: Any

    @property
    def network(self) -> Any:
        return self.physics.network

    def run_insitu(self, experiment: InSituExperiment, start_step: int,
                   n_steps: int) -> Iterator[InSituRecord]:
        return run_loop(self.physics, experiment, start_step, n_steps)

    def read_state(self) -> np.ndarray:
        return self.physics.read_state()

    def state_dict(self) -> dict[str, Any]:
        return self.physics.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.physics.load_state_dict(state)

    def safe(self) -> None:
        """Learning is off between windows and every source is released after a run."""

    def close(self) -> None:
        self.safe()


class InSituTrainer:
    """The trainer's in-situ mode: downloads the experiment to a bench that
    :class:`~clln.controller.capabilities.LearnsInPlace` and turns its records into the
    :class:`~clln.controller.trainer.StepRecord` stream every run is recorded from.

    ``run`` has the signature of :meth:`Trainer.run`, so the run store, checkpoints,
    progress and stop requests work as for any run. ``on_record`` (when given) receives
    every full :class:`InSituRecord` (node voltages included) before the step's callbacks.
    """

    def __init__(self, backend: object, experiment: InSituExperiment,
                 rng: np.random.Generator, snapshot_every: int = 1,
                 on_record: Callable[[InSituRecord], None] | None = None) -> None:
        self.bench = require(backend, LearnsInPlace, what="training mode 'in-situ'")
        self.backend = backend
        self.experiment = experiment
        self.rng = rng  # not used by the loop; kept so checkpoints look like any run's
        # what a checkpoint saves of a host-computed run, which the bench's own loop has not
        self.scheme: Scheme | None = None
        self.backoff: Backoff | None = None
        self.reversal: ReversalBackoff | None = None
        self.snapshot_every = snapshot_every
        self.on_record = on_record

    def _step_record(self, rec: InSituRecord, previous: np.ndarray) -> StepRecord:
        ex = self.experiment
        outs = list(self.bench.network.roles.clamps)
        taught = ~np.isnan(rec.clamped[:, 0])
        moved = rec.clamped[taught][:, outs] - rec.free[taught][:, outs]
        last = rec.step == ex.steps
        state = rec.state
        snapshot = rec.step % self.snapshot_every == 0 or last
        taps = self.bench.edges.taps_of(state)
        return StepRecord(
            step=rec.step, error=rec.train_error,
            nudge=float(np.sqrt(np.mean(moved**2))) if moved.size else 0.0,
            update_norm=float(np.linalg.norm(state - previous)), n_clipped=0,
            test_error=rec.test_error, test_accuracy=rec.test_accuracy,
            conductances=np.asarray(self.bench.read_edges().conductances) if snapshot else None,
            taps=taps if snapshot else None, teaching=rec.n_teaching,
        )

    def run(
        self,
        callbacks: Sequence[StepCallback] = (),
        *,
        start_step: int = 0,
        on_initial_test: Callable[[float, float | None], None] | None = None,
        resumed_tests: tuple[float, float] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Run the experiment from ``start_step`` to its end (or a stop request)."""
        ex = self.experiment
        t0 = time.perf_counter()
        initial_test = last_test = resumed_tests[0] if resumed_tests else float("nan")
        if resumed_tests:
            last_test = resumed_tests[1]
        previous = np.asarray(self.bench.read_state(), dtype=float)
        step_rec: StepRecord | None = None
        interrupted = False
        for rec in self.bench.run_insitu(ex, start_step, ex.steps - start_step):
            if self.on_record is not None:
                self.on_record(rec)
            if rec.step == 0:
                initial_test = last_test = float(rec.test_error)  # type: ignore[arg-type]
                if on_initial_test is not None:
                    on_initial_test(initial_test, rec.test_accuracy)
                continue
            step_rec = self._step_record(rec, previous)
            previous = np.asarray(rec.state, dtype=float)
            if rec.test_error is not None:
                last_test = rec.test_error
            for cb in callbacks:
                cb(step_rec)
            if should_stop is not None and rec.step < ex.steps and should_stop():
                interrupted = True
                break
        return TrainResult(
            steps_done=step_rec.step if step_rec else start_step,
            initial_test_error=initial_test, final_test_error=last_test,
            final_train_error=step_rec.error if step_rec else float("nan"),
            stopped_on_target=False, wall_time=time.perf_counter() - t0, interrupted=interrupted,
        )
