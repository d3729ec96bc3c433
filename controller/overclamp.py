"""Overclamping with margin gating, the default bias-suppression remedy (docs/science.md,
"Bias-suppression schemes"), and :class:`Nudge`, the clamped-phase boundary conditions
of one step that every :class:`~clln.controller.schemes.Scheme` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from clln.controller.backend import Measurement
from clln.controller.errors import ProtocolError
from clln.controller.task import Dataset, Task


@dataclass(eq=False)
class Overclamp:
    """Overclamping with margin gating (docs/science.md, "Bias-suppression schemes").

    Clamps O^C = O^F + eta (y - O^F), clipped to ``rails`` when given (``eta`` very large
    with rails is pure rail clamping). A regression (or allostery) sample teaches while
    max_o |y_o - O^F_o| > margin; a classification sample while it is misclassified or
    its correct output leads the runner-up by less than ``margin`` (a hinge).

    The margin is either a requested precision in volts or ``"auto"``: ``noise_margin``
    times the rms noise of an output reading, which the controller measures once, before
    its first update, by reading the free state of the first batch ``noise_readings``
    times (:meth:`observe_noise`). A sample is then right when its error cannot be told
    from the measurement's own noise: gating stops the bias from accumulating once the
    task is solved to what the bench can resolve, and on a noise-free bench (the ideal
    simulator) the margin is 0 and the scheme trains to round-off like plain coupled
    learning. The measured noise is part of the scheme's state (checkpoints, resume).

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
    margin : V, or "auto"; samples within it stop teaching.
    noise_margin : with margin "auto", the margin in units of the measured rms output
        noise (default 5: a sample that is right is taken for wrong by noise about once
        in 2 million readings).
    noise_readings : with margin "auto", free readings of the first batch used to
        measure the noise (>= 2).
    rails : optional (low, high) volts the clamp voltages are clipped to.
    normalise : average the update over the samples still teaching (True), or over the
        whole batch (False: the update shrinks as samples drop out).
    symmetric : clamp on both sides of the free outputs (see above).
    noise : measured rms output noise, V (None until measured; state).
    """

    eta: float = 10.0
    margin: float | Literal["auto"] = "auto"
    rails: tuple[float, float] | None = None
    normalise: bool = True
    symmetric: bool = True
    noise_margin: float = 5.0
    noise_readings: int = 4
    noise: float | None = None
    name: str = "overclamp"

    def __post_init__(self) -> None:
        if not self.eta > 0:
            raise ProtocolError(f"overclamp eta must be > 0, got {self.eta}")
        if self.margin != "auto" and not (isinstance(self.margin, (int, float)) and self.margin >= 0):
            raise ProtocolError(f"overclamp margin must be >= 0 V or 'auto', got {self.margin!r}")
        if not self.noise_margin >= 0:
            raise ProtocolError(f"overclamp noise_margin must be >= 0, got {self.noise_margin}")
        if self.noise_readings < 2:
            raise ProtocolError(f"overclamp noise_readings must be >= 2, got {self.noise_readings}")
        if self.rails is not None and not self.rails[0] < self.rails[1]:
            raise ProtocolError(f"overclamp rails must be [low, high] with low < high, got {list(self.rails)}")

    @property
    def needs_noise(self) -> bool:
        """Whether the noise must still be measured before the margin is known."""
        return self.margin == "auto" and self.noise is None

    def observe_noise(self, readings: np.ndarray) -> float:
        """Measure the rms output noise from ``readings`` (R, B, n_outputs) V: repeated
        free readings of the same batch. The pooled standard deviation over the R
        readings (R - 1 degrees of freedom per output and sample). Returns it, V."""
        readings = np.asarray(readings, dtype=float)
        if readings.ndim != 3 or readings.shape[0] < 2:
            raise ValueError(f"need (R >= 2, B, n_outputs) readings, got shape {readings.shape}")
        self.noise = float(np.sqrt(np.mean(np.var(readings, axis=0, ddof=1))))
        return self.noise

    @property
    def gate(self) -> float:
        """The margin in use, V."""
        if self.margin != "auto":
            return float(self.margin)
        if self.noise is None:
            raise RuntimeError("overclamp margin 'auto': the output noise has not been measured yet")
        return self.noise_margin * self.noise

    def teaching(self, task: Task, outputs: np.ndarray, batch: Dataset) -> np.ndarray:
        """(B,) bool: the samples that still teach.

        Parameters
        ----------
        outputs : (B, n_outputs) free outputs, V.
        batch : the samples, with labels for classification.
        """
        return task.wrong(outputs, batch, self.gate)

    def clamps(self, task: Task, free: Measurement, batch: Dataset) -> Nudge:
        """The clamp voltages (and the mirrored ones when symmetric), which samples teach,
        and each sample's gain.

        With ``rails``, a sample whose clamps would leave them has its whole nudge scaled
        down by one factor c (0 < c < 1) until they fit (its direction across the outputs
        kept), and its signal is multiplied by the gain min(1 / c, eta). In a linear
        network the signal is proportional to the nudge, so the sample teaches as it would
        have unclipped: the rails bound the voltages, not the learning rate. The gain is
        capped at eta so that a sample nudged by less than its own error (its output
        nearer a rail than that) learns less rather than amplifying the noise.
        """
        held = free.at_nodes(task.clamp_nodes)
        nudge = task.clamp_voltages(free, batch.y, self.eta) - held
        weights = self.teaching(task, task.outputs(free), batch).astype(float)
        gains = None
        if self.rails is not None:
            lo, hi = self.rails
            up, down = hi - held, held - lo  # room towards each rail, V
            room = np.minimum(up, down) if self.symmetric else np.where(nudge > 0, up, down)
            size = np.abs(nudge)
            with np.errstate(divide="ignore", invalid="ignore"):
                fits = np.where(size > 0, np.maximum(room, 0.0) / size, np.inf)
            c = np.minimum(1.0, fits.min(axis=1))
            nudge = nudge * c[:, None]
            with np.errstate(divide="ignore"):
                gains = np.where(c > 0, np.minimum(1.0 / c, max(self.eta, 1.0)), 1.0)

        def bound(v: np.ndarray) -> np.ndarray:  # the rails hold exactly, round-off included
            return v if self.rails is None else np.clip(v, *self.rails)

        anti = bound(held - nudge) if self.symmetric else None
        return Nudge(bound(held + nudge), anti, weights, gains)

    def clamp_bounds(self, task: Task) -> tuple[float, float]:
        """(low, high) V: every clamp voltage :meth:`clamps` can ask for: its ``rails``
        (the clamps are clipped to them), else the task's clamps with this eta, mirrored
        too when symmetric (:meth:`Task.clamp_bounds`)."""
        if self.rails is not None:
            return float(self.rails[0]), float(self.rails[1])
        return task.clamp_bounds(self.eta, mirrored=self.symmetric)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"eta": self.eta, "margin": self.margin,
                               "rails": None if self.rails is None else list(self.rails),
                               "normalise": self.normalise, "symmetric": self.symmetric}
        if self.margin == "auto":
            out.update(noise_margin=self.noise_margin, noise_readings=self.noise_readings,
                       measured_noise=self.noise, margin_used=None if self.noise is None else self.gate)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"noise": self.noise}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise = None if state.get("noise") is None else float(state["noise"])


@dataclass(frozen=True, eq=False)
class Nudge:
    """The clamped-phase boundary conditions of one step.

    Attributes
    ----------
    clamps : (B, n_clamps) clamp voltages, V.
    anti : (B, n_clamps) mirrored clamp voltages (symmetric overclamping), or None.
    weights : (B,) sample weights (1 teaching, 0 not), or None for all samples.
    gains : (B,) factors on each sample's signal (restoring what rail clipping took), or
        None for 1.
    """

    clamps: np.ndarray
    anti: np.ndarray | None = None
    weights: np.ndarray | None = None
    gains: np.ndarray | None = None

    @property
    def teaching(self) -> int | None:
        """How many samples teach (None: all)."""
        return None if self.weights is None else int(np.count_nonzero(self.weights))

    def sample_weights(self) -> np.ndarray | None:
        """(B,) the weights of the samples' signals in the update: teaching times gain."""
        if self.gains is None:
            return self.weights
        return self.gains if self.weights is None else self.weights * self.gains
