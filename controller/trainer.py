"""The training loop: free measurement -> nudged clamps -> clamped measurement ->
local update -> actuate -> log.

The trainer sees only a :class:`~clln.controller.backend.NetworkBackend`; it is
deterministic given its random generator (used for batch sampling only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from clln.controller.backend import Measurement, NetworkBackend
from clln.controller.bounds import DivergedError
from clln.controller.capabilities import twin_bench
from clln.controller.rules import UpdateRule, contrastive_signal
from clln.controller.schemes import Nudge, Scheme
from clln.controller.task import Dataset, Task


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run.

    Attributes
    ----------
    steps : maximum number of update steps.
    batch_size : samples per step; the whole training set when it is at least its size.
    eta : nudge amplitude, 0 < eta (eta > 1 overclamps).
    test_every : evaluate the test set every this many steps (and at the start and end).
    snapshot_every : record all conductances every this many steps.
    target_error : stop when the test error falls to this value (task cost units).
    backoff : learning-rate safeguard (see :class:`Backoff`); None keeps the rate fixed.
    reversal_backoff : learning-rate safeguard against a growing period-2 oscillation
        (see :class:`ReversalBackoff`); None keeps the rate fixed.
    reversal_arm : the reversal safeguard watches only once the batch error has come
        down to this fraction of the first step's (None: from the first step).
    """

    steps: int
    batch_size: int
    eta: float
    test_every: int = 50
    snapshot_every: int = 50
    target_error: float | None = None
    backoff: int | None = None
    reversal_backoff: int | None = None
    reversal_arm: float | None = None


class Backoff:
    """Learning-rate safeguard against an unstable stiff mode after convergence.

    Full-batch coupled learning near its minimum is gradient descent with step alpha:
    a mode of the cost Hessian with alpha * lambda > 2 grows by |1 - alpha lambda| per
    step, however small the error already is. Edges pinned at gmin are the stiffest
    (their curvature grows as 1/g), and once the error has reached round-off an edge
    leaving gmin can start such a mode: jammed-2x2 reached 1.8e-28, then the update
    grew 1.3-4x per step with the clipped set alternating, and the error followed
    to 1e-2. Once the batch error has fallen ``decades`` decades below its first
    value, converged descent only shrinks the updates; when the update norm then
    grows for ``patience`` steps in a row to above twice its lowest value, the
    learning rate is halved (``scale`` multiplies every update), and halved again at
    every further step of growth in that run of steps.
    """

    decades = 6.0

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.scale = 1.0
        self.first = float("nan")
        self.best_error = float("inf")
        self.best_norm = float("inf")
        self.last_norm = float("inf")
        self.rising = 0
        self.halvings = 0

    def observe(self, error: float, update_norm: float) -> None:
        """Account for one step's batch error and update norm."""
        if self.first != self.first:  # nan: the first step
            self.first = error
        self.best_error = min(self.best_error, error)
        if not self.best_error <= self.first * 10.0 ** -self.decades:
            return
        self.rising = self.rising + 1 if update_norm > self.last_norm else 0
        self.last_norm = update_norm
        self.best_norm = min(self.best_norm, update_norm)
        if self.rising >= self.patience and update_norm > 2.0 * self.best_norm:
            self.scale *= 0.5
            self.halvings += 1

    def state_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("scale", "first", "best_error", "best_norm",
                                              "last_norm", "rising", "halvings")}

    def load_state_dict(self, state: dict[str, float]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value) if key in ("rising", "halvings") else float(value))


class ReversalBackoff:
    """Learning-rate safeguard against a stiff mode that a bound had been holding.

    Descent with step alpha on a mode of curvature lambda multiplies that mode by
    (1 - alpha lambda) per step: with alpha lambda > 2 the applied update flips its
    direction every step and grows by |1 - alpha lambda|. An edge held at gmin or gmax
    takes no part in the descent (its update is clipped to zero), so a mode through it
    can be unstable and unseen for hundreds of steps; once the edge leaves its bound the
    mode grows out of round-off (regression-2x2, regression-2x5 and bias/floor burst
    from 1e-30, 1e-5 and 3e-11 this way, to 1e-2..1e-5). Converged or converging
    descent never shows this pattern: stable modes with alpha lambda < 1 keep their
    direction and those with 1 < alpha lambda < 2 flip but shrink. So when the applied
    update (after clipping) points against the previous one (negative inner product)
    and is longer than it for ``patience`` steps in a row, the learning rate is halved
    (``scale`` multiplies every update), and halved again at every further such step.
    Nothing else changes: where it never triggers, a run is bit-identical to one
    without it.

    ``arm`` (a fraction, or None) keeps the safeguard idle until the batch error has
    come down to ``arm`` times the first step's: early in training, before the error has
    fallen, a reversing and growing update is the descent finding its way (jammed-2x2
    halved its rate at step 12 and then stalled at 5e-4), not a bound releasing a stiff
    mode; the bursts it is meant for start from a converged error.
    """

    def __init__(self, patience: int, arm: float | None = None) -> None:
        self.patience = patience
        self.arm = arm
        self.first_error: float | None = None
        self.scale = 1.0
        self.reversing = 0
        self.halvings = 0
        self.best_error = float("inf")
        self.previous: np.ndarray | None = None

    def observe(self, error: float, applied: np.ndarray) -> None:
        """Account for one step's batch error and applied update (edge units, after clipping)."""
        u = np.asarray(applied, dtype=float).ravel()
        p = self.previous
        if self.first_error is None:
            self.first_error = error
        armed = self.arm is None or self.best_error <= self.arm * self.first_error
        flips = (armed and p is not None and error > self.best_error and float(u @ p) < 0.0
                 and float(u @ u) > float(p @ p))
        self.reversing = self.reversing + 1 if flips else 0
        self.previous = u.copy()
        self.best_error = min(self.best_error, error)
        if self.reversing >= self.patience:
            self.scale *= 0.5
            self.halvings += 1

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {"scale": self.scale, "reversing": self.reversing,
                                    "halvings": self.halvings, "best_error": self.best_error,
                                    "previous": self.previous}
        if self.arm is not None:  # older checkpoints have no first error: none was needed
            state["first_error"] = self.first_error
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.scale = float(state["scale"])  # type: ignore[arg-type]
        self.reversing = int(state["reversing"])  # type: ignore[call-overload]
        self.halvings = int(state["halvings"])  # type: ignore[call-overload]
        self.best_error = float(state["best_error"])  # type: ignore[arg-type]
        prev = state.get("previous")
        self.previous = None if prev is None else np.asarray(prev, dtype=float)
        first = state.get("first_error")
        self.first_error = None if first is None else float(first)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StepRecord:
    """What one step did. ``test_error`` is set on steps with a test evaluation."""

    step: int
    error: float
    nudge: float
    update_norm: float
    n_clipped: int
    test_error: float | None = None
    test_accuracy: float | None = None
    conductances: np.ndarray | None = None
    taps: np.ndarray | None = None
    teaching: int | None = None


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :meth:`Trainer.run`."""

    steps_done: int
    initial_test_error: float
    final_test_error: float
    final_train_error: float
    stopped_on_target: bool
    wall_time: float
    interrupted: bool = False


StepCallback = Callable[[StepRecord], None]


class Trainer:
    """Model-free coupled-learning controller.

    Parameters
    ----------
    backend : what is trained (simulator or bench); its network's clamp nodes must be
        the task's clamp nodes.
    task : the task.
    rule : the local update rule.
    config : hyper-parameters.
    rng : random generator for batch sampling.
    scheme : bias-suppression scheme (:mod:`clln.controller.schemes`); None is plain
        coupled learning, exactly as without schemes. The scheme keeps its own state.
    """

    def __init__(
        self,
        backend: NetworkBackend,
        task: Task,
        rule: UpdateRule,
        config: TrainConfig,
        rng: np.random.Generator,
        scheme: Scheme | None = None,
    ) -> None:
        if tuple(backend.network.roles.clamps) != task.clamp_nodes:
            raise ValueError("backend clamp nodes differ from the task's clamp nodes")
        self.backend = backend
        self.task = task
        self.rule = rule
        self.config = config
        self.rng = rng
        self._incidence = backend.network.incidence
        self._pair = twin_bench(backend)  # free and clamped twins measured together, or None
        self._twin = self._pair is not None
        self.scheme = scheme
        if scheme is not None:
            scheme.check(self._twin, backend.edges, rule)
        self.backoff = None if config.backoff is None else Backoff(config.backoff)
        self.reversal = None if config.reversal_backoff is None else ReversalBackoff(config.reversal_backoff, config.reversal_arm)
        self._applied: np.ndarray | None = None  # the last step's applied update

    def _scaled(self, signal: np.ndarray) -> np.ndarray:
        """The contrastive signal times the safeguards' learning-rate scales."""
        if self.backoff is not None:
            signal = signal * self.backoff.scale
        if self.reversal is not None:
            signal = signal * self.reversal.scale
        return signal

    def evaluate(self, dataset: Dataset) -> tuple[float, float | None]:
        """(cost, accuracy) of the free network on a dataset."""
        free = self.backend.measure(self.task.source_voltages(dataset.x))
        outputs = self.task.outputs(free)
        return self.task.cost(outputs, dataset.y), self.task.accuracy(outputs, dataset)

    def _batch(self) -> Dataset:
        train = self.task.train
        if self.config.batch_size >= len(train):
            return train
        idx = self.rng.choice(len(train), size=self.config.batch_size, replace=False)
        return train.take(np.sort(idx))

    def step(self, index: int) -> StepRecord:
        """One update step on a batch; returns its record (without test evaluation)."""
        batch = self._batch()
        sources = self.task.source_voltages(batch.x)
        if self.scheme is not None:
            return self._scheme_step(index, batch, sources, self.scheme)
        eta = self.config.eta
        free, clamped, clamps = self._measure_pair(
            sources, lambda f: self.task.clamp_voltages(f, batch.y, eta), swap=False)
        signal = contrastive_signal(free, clamped, self._incidence)
        edges = self.backend.edges
        state = self.backend.read_edges() if edges.is_stepped else None
        _finite(index, "the learning signal", signal)
        commands = _finite(index, "the update", self.rule.commands(self._scaled(signal), self.config.eta,
                                                                  edges, state))
        return self._applied_step(index, batch, free, clamps, commands, None)

    def _applied_step(self, index: int, batch: Dataset, free: Measurement, clamps: np.ndarray,
                      commands: np.ndarray, teaching: int | None) -> StepRecord:
        """Apply one step's commands and record it: the batch error of the free state,
        the rms nudge the clamps imposed, the applied update and its clipped edges."""
        applied = self.backend.adjust(commands)
        self._applied = applied.commands
        squares = (clamps - free.at_nodes(self.task.clamp_nodes)) ** 2
        return StepRecord(
            step=index,
            error=self.task.cost(self.task.outputs(free), batch.y),
            nudge=math.sqrt(np.add.reduce(squares, axis=None) / squares.size),  # rms, as np.mean sums
            update_norm=_norm(applied.commands),
            n_clipped=int(np.count_nonzero(applied.clipped)),
            teaching=teaching,
        )

    def _measure_pair(self, sources: np.ndarray, clamp_rule: Callable[[Measurement], np.ndarray],
                      swap: bool) -> tuple[Measurement, Measurement, np.ndarray]:
        """Free and clamped measurements (both twins at once on a twin bench, the twins'
        roles exchanged when ``swap``) and the clamps (B, n_clamps) V that were imposed."""
        if self._pair is not None:
            imposed: list[np.ndarray] = []

            def rule(free: Measurement) -> np.ndarray:
                imposed.append(np.asarray(clamp_rule(free), dtype=float))
                return imposed[-1]

            free, clamped = (self._pair.measure_twin(sources, rule, swap=True) if swap
                             else self._pair.measure_twin(sources, rule))
            return free, clamped, imposed[-1]
        free = self.backend.measure(sources)
        clamps = np.asarray(clamp_rule(free), dtype=float)
        return free, self.backend.measure(sources, clamps), clamps

    def _measure_clamped(self, sources: np.ndarray, clamps: np.ndarray, swap: bool) -> Measurement:
        """One clamped measurement (on the clamped twin of a twin bench)."""
        if self._twin:
            return self._measure_pair(sources, lambda _free: clamps, swap)[1]
        return self.backend.measure(sources, clamps)

    def _scheme_step(self, index: int, batch: Dataset, sources: np.ndarray,
                     scheme: Scheme) -> StepRecord:
        """One update step through a bias-suppression scheme (see :class:`Scheme`)."""
        task = self.task
        eta = scheme.eta(self.config.eta)
        overclamp = scheme.overclamp
        if overclamp is not None and overclamp.needs_noise:  # margin "auto": measure the noise once
            overclamp.observe_noise(np.stack([task.outputs(self.backend.measure(sources))
                                              for _ in range(overclamp.noise_readings)]))
        if scheme.auto_zero is not None and scheme.auto_zero.due(index):
            phases = (0, 1) if scheme.chop is not None else (0,)
            for phase in phases:  # zero nudge: clamped nodes held at their free voltages
                zf, zc, held = self._measure_pair(
                    sources, lambda f: f.at_nodes(task.clamp_nodes), swap=phase == 1)
                if scheme.overclamp is not None and scheme.overclamp.symmetric:
                    # the same estimator as the update: two clamped states, here both at zero nudge
                    zf = self._measure_clamped(sources, held, swap=phase == 1)
                    zero = 0.5 * contrastive_signal(zf, zc, self._incidence)
                else:
                    zero = contrastive_signal(zf, zc, self._incidence)
                scheme.auto_zero.observe(phase, zero)
        nudges: list[Nudge] = []

        def clamp_rule(free: Measurement) -> np.ndarray:
            nudges.append(scheme.clamps(task, free, batch, eta))
            return nudges[-1].clamps

        swap = scheme.phase == 1
        free, clamped, clamps = self._measure_pair(sources, clamp_rule, swap)
        nudge = nudges[-1]
        weights = nudge.sample_weights()
        teaching = len(batch) if nudge.teaching is None else nudge.teaching
        edges = self.backend.edges
        if teaching:
            if nudge.anti is None:
                signal = contrastive_signal(free, clamped, self._incidence, weights)
            else:  # symmetric: half the difference of the mirrored and the nudged states
                mirrored = self._measure_clamped(sources, nudge.anti, swap)
                signal = 0.5 * contrastive_signal(mirrored, clamped, self._incidence, weights)
            signal = _finite(index, "the learning signal",
                             self._scaled(scheme.correct(signal * scheme.weight_scale(nudge))))
            taps = self.backend.read_edges().taps if scheme.residuals is not None else None
            commands = _finite(index, "the update", scheme.commands(self.rule, signal, eta, edges, taps))
        else:  # nothing teaches: no update at all, so no bias is applied either
            commands = np.zeros(self.backend.network.n_edges, dtype=edges.command_dtype)
        record = self._applied_step(index, batch, free, clamps, commands, teaching)
        scheme.advance()
        return record

    def run(
        self,
        callbacks: Sequence[StepCallback] = (),
        *,
        start_step: int = 0,
        on_initial_test: Callable[[float, float | None], None] | None = None,
        resumed_tests: tuple[float, float] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train until ``config.steps``, the target test error, or ``should_stop()``.

        Every step is passed to the callbacks (recording, progress, checkpoints);
        steps with a test evaluation or snapshot carry those too. ``should_stop`` is
        asked after each step's callbacks, so a stop always falls on a step boundary.
        A resumed run passes ``start_step`` and ``resumed_tests`` = (initial, last test
        error) and makes no extra measurement.
        """
        cfg = self.config
        t0 = time.perf_counter()
        if resumed_tests is None:
            initial_test, initial_acc = self.evaluate(self.task.test)
            _finite(0, "the initial test error", initial_test)
            if on_initial_test is not None:
                on_initial_test(initial_test, initial_acc)
            last_test = initial_test
        else:
            initial_test, last_test = resumed_tests
        record: StepRecord | None = None
        # a resumed run that had already reached its target (stopped before it was marked
        # completed) takes no further step
        stopped = resumed_tests is not None and cfg.target_error is not None and last_test <= cfg.target_error
        interrupted = False
        for index in range(start_step + 1, cfg.steps + 1 if not stopped else start_step + 1):
            record = self.step(index)
            _finite(index, "the batch error", record.error)
            if self.backoff is not None:
                self.backoff.observe(record.error, record.update_norm)
            if self.reversal is not None and self._applied is not None:
                self.reversal.observe(record.error, self._applied)
            last = index == cfg.steps
            if index % cfg.test_every == 0 or last:
                last_test, acc = self.evaluate(self.task.test)
                _finite(index, "the test error", last_test)
                stopped = cfg.target_error is not None and last_test <= cfg.target_error
                record = _with(record, test_error=last_test, test_accuracy=acc)
            if index % cfg.snapshot_every == 0 or last or stopped:
                state = self.backend.read_edges()
                record = _with(record, conductances=state.conductances, taps=state.taps)
            for cb in callbacks:
                cb(record)
            if stopped:
                break
            if should_stop is not None and index < cfg.steps and should_stop():
                interrupted = True
                break
        return TrainResult(
            steps_done=record.step if record else start_step,
            initial_test_error=initial_test,
            final_test_error=last_test,
            final_train_error=record.error if record else float("nan"),
            stopped_on_target=stopped,
            wall_time=time.perf_counter() - t0,
            interrupted=interrupted,
        )


def _finite(step: int, what: str, values: np.ndarray | float) -> np.ndarray:
    """``values`` as an array; DivergedError naming the step when any is NaN or infinite."""
    array = np.asarray(values)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array))
        where = f" of edge {int(bad[0])}" if array.ndim else ""
        raise DivergedError(f"training diverged at step {step}: {what}{where} is "
                            f"{float(array.flat[bad[0]])!r}; nothing more was sent to the edges")
    return array


def _norm(x: np.ndarray) -> float:
    """np.linalg.norm of a vector (the same dot product and square root) without its
    Python layers: after a large network's solves, each distinct numpy function a step
    calls costs 20-30 us of cold caches."""
    if x.ndim == 1 and x.dtype == np.float64:
        return math.sqrt(x.dot(x))
    return float(np.linalg.norm(x))


def _with(record: StepRecord, **changes: object) -> StepRecord:
    return replace(record, **changes)  # type: ignore[arg-type]
