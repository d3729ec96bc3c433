"""Bias-suppression schemes (SCIENCE.md, "Imperfection and learning bias", "Overclamping").

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
checkpoint can save it with the conductances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clln.controller.backend import ContinuousEdges, EdgeActuators, Measurement, SteppedEdges
from clln.controller.errors import ProtocolError
from clln.controller.rules import SteppedRule, UpdateRule
from clln.controller.task import Dataset, Task


@dataclass(frozen=True)
class Overclamp:
    """Overclamping with margin gating (SCIENCE.md, "Overclamping").

    Clamps O^C = O^F + eta (y - O^F), clipped to ``rails`` when given (``eta`` very large
    with rails is pure rail clamping). A regression (or allostery) sample teaches while
    max_o |y_o - O^F_o| > margin; a classification sample while it is misclassified or
    its correct output leads the runner-up by less than ``margin`` (a hinge).

    With ``symmetric`` the network is also clamped on the other side, at O^F - nudge,
    and the signal is half the difference of the two clamped states,
    s_j = [(dV_j^-)^2 - (dV_j^+)^2] / 2. In a linear network the squared drop of a
    clamped state is quadratic in the nudge, (dV_j + r_j nudge)^2, so the difference
    keeps exactly the part linear in the nudge (the coupled-learning gradient term) and
    drops the even part -r_j^2 nudge^2, which at large eta would push every edge the
    output depends on towards lower conductance whatever the sign of the error; a fixed
    offset of the signal circuits, present in both clamped measurements, cancels as
    well, and on a twin bench the twins' mismatch enters only multiplied by the nudge,
    so it vanishes at the solution. Costs one more clamped measurement per step.

    Attributes
    ----------
    eta : effective nudge, dimensionless (> 1 overclamps); also the eta of the rule's
        alpha / eta.
    margin : V; samples within it stop teaching.
    rails : optional (low, high) volts the clamp voltages are clipped to.
    normalise : average the update over the samples still teaching (True), or over the
        whole batch (False: the update shrinks as samples drop out).
    symmetric : clamp on both sides of the free outputs (see above).
    """

    eta: float = 10.0
    margin: float = 1e-3
    rails: tuple[float, float] | None = None
    normalise: bool = True
    symmetric: bool = True
    name: str = "overclamp"

    def __post_init__(self) -> None:
        if not self.eta > 0:
            raise ProtocolError(f"overclamp eta must be > 0, got {self.eta}")
        if not self.margin >= 0:
            raise ProtocolError(f"overclamp margin must be >= 0 V, got {self.margin}")
        if self.rails is not None and not self.rails[0] < self.rails[1]:
            raise ProtocolError(f"overclamp rails must be [low, high] with low < high, got {list(self.rails)}")

    def teaching(self, task: Task, outputs: np.ndarray, batch: Dataset) -> np.ndarray:
        """(B,) bool: the samples that still teach.

        Parameters
        ----------
        outputs : (B, n_outputs) free outputs, V.
        batch : the samples, with labels for classification.
        """
        if task.kind == "classification" and batch.labels is not None:
            rows = np.arange(len(batch))
            correct = outputs[rows, batch.labels]
            others = outputs.copy()
            others[rows, batch.labels] = -np.inf
            lead = correct - others.max(axis=1) if outputs.shape[1] > 1 else np.full(len(batch), np.inf)
            return lead <= self.margin
        return np.max(np.abs(batch.y - outputs), axis=1) > self.margin

    def clamps(self, task: Task, free: Measurement, batch: Dataset) -> Nudge:
        """The clamp voltages (and the mirrored ones when symmetric) and sample weights."""
        clamps = task.clamp_voltages(free, batch.y, self.eta)
        weights = self.teaching(task, task.outputs(free), batch).astype(float)
        if not self.symmetric:
            if self.rails is not None:
                clamps = np.clip(clamps, *self.rails)
            return Nudge(clamps, None, weights)
        held = free.at_nodes(task.clamp_nodes)
        nudge = clamps - held
        if self.rails is not None:  # both sides within the rails: the same |nudge| each way
            lo, hi = self.rails
            room = np.maximum(np.minimum(hi - held, held - lo), 0.0)
            nudge = np.clip(nudge, -room, room)
        return Nudge(held + nudge, held - nudge, weights)

    def describe(self) -> dict[str, Any]:
        return {"eta": self.eta, "margin": self.margin,
                "rails": None if self.rails is None else list(self.rails), "normalise": self.normalise,
                "symmetric": self.symmetric}


@dataclass(frozen=True, eq=False)
class Nudge:
    """The clamped-phase boundary conditions of one step.

    Attributes
    ----------
    clamps : (B, n_clamps) clamp voltages, V.
    anti : (B, n_clamps) mirrored clamp voltages (symmetric overclamping), or None.
    weights : (B,) sample weights (1 teaching, 0 not), or None for all samples.
    """

    clamps: np.ndarray
    anti: np.ndarray | None = None
    weights: np.ndarray | None = None


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
    """(m,) per edge, the tap whose conductance in the (monotone) table row is nearest to
    ``target`` (m,) S. Vectorised bisection: O(m log n_taps)."""
    table = edges.table
    m, n = table.shape
    rows = np.arange(m)
    sign = edges.direction.astype(float)  # key(t) = sign * g(t) rises with t
    key = sign * np.asarray(target, dtype=float)
    lo = np.zeros(m, dtype=np.int64)  # invariant: key(lo) <= key or lo == 0
    hi = np.full(m, n - 1, dtype=np.int64)
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        below = sign * table[rows, mid] <= key
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    d_lo = np.abs(table[rows, lo] - target)
    d_hi = np.abs(table[rows, hi] - target)
    return np.where(d_hi < d_lo, hi, lo)


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
        if self.residuals is not None and not isinstance(edges, SteppedEdges):
            raise ProtocolError("scheme 'residuals' applies to stepped edges only")
        if (isinstance(edges, SteppedEdges) and not isinstance(rule, SteppedRule)
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

    def weight_scale(self, weights: np.ndarray | None) -> float:
        """Factor on the weighted-average signal: 1 when normalised by the samples that
        teach, (teaching / batch) otherwise."""
        if weights is None or self.overclamp is None or self.overclamp.normalise:
            return 1.0
        return float(weights.sum()) / weights.size

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
        view = ContinuousEdges(float(edges.table.min()), float(edges.table.max()))
        return self.residuals.taps(rule.commands(signal, eta, view), edges, taps)

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
        parts = (self.auto_zero, self.chop, self.residuals)
        return {p.name: p.state_dict() for p in parts if p is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (same components)."""
        parts = {p.name: p for p in (self.auto_zero, self.chop, self.residuals) if p is not None}
        if set(state) != set(parts):
            raise ValueError(f"scheme state has components {sorted(state)}, expected {sorted(parts)}")
        for name, part in parts.items():
            part.load_state_dict(state[name])
