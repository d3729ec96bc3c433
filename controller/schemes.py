"""Bias-suppression schemes (docs/science.md, "Learning bias", "Bias-suppression schemes").

A real CLLN forms its update with an uncontrolled but *deterministic* per-edge error b_j
(V^2): twin-network mismatch, offsets of the per-edge signal circuits, asymmetric
actuators. With coupled learning the learning signal shrinks with the error while b_j
does not, so b_j sets an error floor (~ |b| / eta), drives the conductances along the
task's null space (representational drift) and, when tasks alternate, onto a limit
cycle. A scheme changes how the trainer forms and applies the update, using only the
measurements the controller takes anyway (no model of the bias):

* :class:`Overclamp` (the default remedy): the clamp target is pushed well past the
  desired output (effective nudge ``eta`` >> 1, optionally clipped at the source
  ``rails``); a sample teaches only while it is wrong by more than ``margin``; the
  update is averaged over the samples still teaching (learning rate normalised by
  their number). The learning signal then stays large against b_j, and once every
  sample is inside the margin nothing is updated, so nothing accumulates bias.
* :class:`AutoZero`: every ``every`` steps the controller measures the update with the
  clamps equal to the free outputs -- pure bias -- and subtracts a running estimate of
  b_j from every later update.
* :class:`Chop` (twin benches): every other step the twins exchange roles (free <->
  clamped), and with them the polarity of the per-edge signal circuits
  (``measure_twin(..., swap=True)``, see :class:`~clln.controller.backend.NetworkBackend`);
  a fixed circuit offset then cancels exactly and a fixed twin mismatch to first order
  over two steps.
* :class:`Residuals` (stepped actuators): a continuous rule's conductance change is
  turned into whole taps and each edge keeps the fractional remainder, so rounding
  neither stalls small updates nor biases them.

Components compose in one :class:`Scheme`, which the trainer consults every step. A
scheme's state (running bias estimate, residuals, chop phase) is kept in the scheme and
round-trips through :meth:`Scheme.state_dict` / :meth:`Scheme.load_state_dict`, so a
checkpoint can save it with the conductances. :class:`Overclamp` and the clamped-phase
boundary conditions it returns (:class:`Nudge`) live in :mod:`clln.controller.overclamp`
and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clln.controller.backend import EdgeActuators, Measurement, SteppedEdges
from clln.controller.errors import ProtocolError
from clln.controller.overclamp import Nudge, Overclamp
from clln.controller.rules import SteppedRule, UpdateRule
from clln.controller.task import Dataset, Task

__all__ = ["AutoZero", "Chop", "Nudge", "Overclamp", "Residuals", "Scheme", "boundary_bounds", "nearest_tap"]


@dataclass
class AutoZero:
    """Running estimate of the bias b_j from zero-nudge measurements.

    Every ``every`` steps (from the first) the trainer measures the update with the
    clamped nodes held at their free voltages; with no nudge the ideal update is zero, so
    what is measured is the bias (plus noise). The estimate is the mean of the first
    ``window`` such measurements, then an exponential average with weight 1 / window
    (it follows a slowly changing bias). With :class:`Chop`, each twin arrangement has
    its own estimate.

    Attributes
    ----------
    every : steps between zero measurements (>= 1).
    window : number of zero measurements the running average spans (>= 1).
    estimate : {phase: (m,) V^2} the current estimates.
    count : {phase: int} zero measurements taken.
    """

    every: int = 10
    window: int = 10
    estimate: dict[int, np.ndarray] = field(default_factory=dict)
    count: dict[int, int] = field(default_factory=dict)
    name: str = "auto-zero"

    def __post_init__(self) -> None:
        if self.every < 1 or self.window < 1:
            raise ProtocolError(f"auto-zero every and window must be >= 1, got {self.every}, {self.window}")

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based) starts with a zero measurement."""
        return (step - 1) % self.every == 0

    def observe(self, phase: int, zero_signal: np.ndarray) -> None:
        """Fold one zero-nudge signal (m,) V^2 into the estimate of ``phase``."""
        n = self.count.get(phase, 0) + 1
        old = self.estimate.get(phase)
        weight = 1.0 / min(n, self.window)
        self.estimate[phase] = (np.array(zero_signal, dtype=float) if old is None
                                else old + weight * (zero_signal - old))
        self.count[phase] = n

    def correct(self, phase: int, signal: np.ndarray) -> np.ndarray:
        """The signal (m,) minus the bias estimate of ``phase`` (unchanged before the first)."""
        est = self.estimate.get(phase)
        return signal if est is None else signal - est

    def state_dict(self) -> dict[str, Any]:
        return {"estimate": {str(k): v.copy() for k, v in self.estimate.items()},
                "count": {str(k): int(v) for k, v in self.count.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.estimate = {int(k): np.array(v, dtype=float) for k, v in state["estimate"].items()}
        self.count = {int(k): int(v) for k, v in state["count"].items()}

    def describe(self) -> dict[str, Any]:
        return {"every": self.every, "window": self.window}


@dataclass
class Chop:
    """Alternate the twins' roles (and the signal circuits' polarity) every step.

    Attributes
    ----------
    phase : 0 -- twin 0 free, twin 1 clamped (the bench's normal arrangement); 1 --
        swapped. Advances after every update step.
    """

    phase: int = 0
    name: str = "chop"

    @property
    def swap(self) -> bool:
        return self.phase == 1

    def advance(self) -> None:
        self.phase ^= 1

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase = int(state["phase"])

    def describe(self) -> dict[str, Any]:
        return {}


@dataclass
class Residuals:
    """Residual accumulation for stepped actuators driven by a continuous rule.

    The rule's conductance change is added to each edge's carried remainder; the edge
    moves to the tap whose nominal conductance is nearest to the result, and the
    difference is carried to the next step. Over any number of steps the commanded
    changes equal the realised nominal change plus the carried remainder (at most half a
    tap step per edge), except what is cut at the ends of the tap range (then the
    remainder is dropped: that is clipping, not rounding).

    Attributes
    ----------
    remainder : (m,) siemens carried per edge, or None before the first step.
    """

    remainder: np.ndarray | None = None
    name: str = "residuals"

    def taps(self, dg: np.ndarray, edges: SteppedEdges, taps: np.ndarray) -> np.ndarray:
        """(m,) integer Δtaps realising the conductance changes ``dg`` (m,) S from ``taps``."""
        m = edges.table.shape[0]
        rows = np.arange(m)
        taps = np.asarray(taps, dtype=np.int64)
        carried = np.zeros(m) if self.remainder is None else self.remainder
        target = edges.table[rows, taps] + np.asarray(dg, dtype=float) + carried
        new = nearest_tap(edges, target)
        reached = edges.table[rows, new]
        lo = edges.table.min(axis=1)
        hi = edges.table.max(axis=1)
        beyond = (target < lo) | (target > hi)
        self.remainder = np.where(beyond, 0.0, target - reached)
        return new - taps

    def state_dict(self) -> dict[str, Any]:
        return {"remainder": None if self.remainder is None else self.remainder.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        r = state["remainder"]
        self.remainder = None if r is None else np.array(r, dtype=float)

    def describe(self) -> dict[str, Any]:
        return {}


def nearest_tap(edges: SteppedEdges, target: np.ndarray) -> np.ndarray:
    """(m,) per edge, the tap nearest in conductance to ``target`` (m,) S
    (:meth:`SteppedEdges.nearest_taps`)."""
    return edges.nearest_taps(target)


def boundary_bounds(task: Task, eta: float, scheme: Scheme | None = None) -> tuple[float, float]:
    """(low, high) V: every boundary voltage a training step can apply, sources (with
    ground) and clamps, with nudge ``eta`` and ``scheme`` (None: plain coupled learning).
    What a bench's limit check must admit before a run starts."""
    src = task.source_bounds()
    clamps = task.clamp_bounds(eta) if scheme is None else scheme.clamp_bounds(task, eta)
    return min(src[0], clamps[0]), max(src[1], clamps[1])


class Scheme:
    """A composition of bias-suppression components, consulted by the trainer each step.

    Parameters
    ----------
    overclamp, auto_zero, chop, residuals : the components in use (None: not used).
        With none of them the scheme is plain coupled learning.
    """

    def __init__(self, *, overclamp: Overclamp | None = None, auto_zero: AutoZero | None = None,
                 chop: Chop | None = None, residuals: Residuals | None = None) -> None:
        self.overclamp = overclamp
        self.auto_zero = auto_zero
        self.chop = chop
        self.residuals = residuals

    @property
    def names(self) -> list[str]:
        """Names of the components in use, in the order the trainer applies them."""
        parts = (self.overclamp, self.auto_zero, self.chop, self.residuals)
        return [p.name for p in parts if p is not None]

    def check(self, twin: bool, edges: EdgeActuators, rule: UpdateRule) -> None:
        """Raise ProtocolError when the scheme cannot run on this backend with this rule."""
        if self.chop is not None and not twin:
            raise ProtocolError(
                "scheme 'chop' needs a twin bench (free and clamped twins measured together); "
                "on the simulator use preset 'twin-bench' or parameters.twin = true"
            )
        if self.residuals is not None and not edges.is_stepped:
            raise ProtocolError("scheme 'residuals' applies to stepped edges only")
        if (edges.is_stepped and not isinstance(rule, SteppedRule)
                and self.residuals is None):
            raise ProtocolError(
                f"rule '{rule.name}' on stepped edges needs scheme 'residuals' "
                "(or use rule 'stepped')"
            )

    # -- what the trainer asks -------------------------------------------------

    def eta(self, eta: float) -> float:
        """The nudge used for the clamps and the rule: overclamp's, else the protocol's."""
        return self.overclamp.eta if self.overclamp is not None else eta

    @property
    def phase(self) -> int:
        """The twin arrangement of this step (0 normal, 1 swapped)."""
        return self.chop.phase if self.chop is not None else 0

    def clamps(self, task: Task, free: Measurement, batch: Dataset, eta: float) -> Nudge:
        """The clamped-phase boundary conditions of this step."""
        if self.overclamp is not None:
            return self.overclamp.clamps(task, free, batch)
        return Nudge(task.clamp_voltages(free, batch.y, eta))

    def clamp_bounds(self, task: Task, eta: float) -> tuple[float, float]:
        """(low, high) V: every clamp voltage this scheme's steps can ask for with the
        protocol's nudge ``eta`` (free outputs within the task's source bounds). Auto-zero
        holds the clamped nodes at their free voltages, which lie within the source bounds."""
        if self.overclamp is not None:
            return self.overclamp.clamp_bounds(task)
        return task.clamp_bounds(eta)

    def weight_scale(self, nudge: Nudge) -> float:
        """Factor turning the signal averaged with :meth:`Nudge.sample_weights` into the
        update's: the sum of those weights over the samples that teach (normalised), or
        over the whole batch (not normalised: the update shrinks as samples drop out)."""
        w = nudge.sample_weights()
        if w is None:
            return 1.0
        normalise = self.overclamp is None or self.overclamp.normalise
        count = nudge.teaching if normalise and nudge.teaching is not None else w.size
        return float(w.sum()) / count if count else 0.0

    def correct(self, signal: np.ndarray) -> np.ndarray:
        """Subtract the running bias estimate (auto-zero) from a signal (m,) V^2."""
        return signal if self.auto_zero is None else self.auto_zero.correct(self.phase, signal)

    def commands(self, rule: UpdateRule, signal: np.ndarray, eta: float, edges: EdgeActuators,
                 taps: np.ndarray | None) -> np.ndarray:
        """(m,) edge commands; through residual accumulation for a continuous rule on
        stepped edges."""
        if self.residuals is None or isinstance(rule, SteppedRule) or not isinstance(edges, SteppedEdges):
            return rule.commands(signal, eta, edges)
        assert taps is not None
        return self.residuals.taps(rule.commands(signal, eta, edges.continuous_view()), edges, taps)

    def advance(self) -> None:
        """Called after every update step."""
        if self.chop is not None:
            self.chop.advance()

    # -- record and checkpoint -------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """JSON-ready description recorded with the run: component -> parameters."""
        parts = (self.overclamp, self.auto_zero, self.chop, self.residuals)
        return {p.name: p.describe() for p in parts if p is not None}

    def state_dict(self) -> dict[str, Any]:
        """The scheme's mutable state (numpy arrays and numbers), for checkpoints."""
        parts = (self.overclamp, self.auto_zero, self.chop, self.residuals)
        return {p.name: p.state_dict() for p in parts if p is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (same components). A checkpoint
        written before the overclamp had state (fixed margins only) restores without it."""
        parts = {p.name: p for p in (self.overclamp, self.auto_zero, self.chop, self.residuals)
                 if p is not None}
        optional = {"overclamp"} - set(state)
        if set(state) != set(parts) - optional:
            raise ValueError(f"scheme state has components {sorted(state)}, expected {sorted(parts)}")
        for name, part in parts.items():
            if name in state:
                part.load_state_dict(state[name])
