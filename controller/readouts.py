"""What a task reads, drives and scores, one class per behaviour (docs/science.md, "Tasks").

A :class:`~clln.controller.task.Task` picks its parts once, from its kind:

* ``regression``: :class:`NodeReadout`, :class:`DirectInputs`, :class:`SquaredError`;
* ``allostery``: :class:`EdgeDropReadout`, :class:`DirectInputs`, :class:`SquaredError`;
* ``classification``: :class:`NodeReadout`, :class:`MirroredInputs` (or
  :class:`ComplementInputs`), :class:`CosineCost`.

Readouts say which voltages are the outputs, which nodes the clamped phase holds and
where a nudge of the outputs puts those nodes; inputs turn features into source volts;
costs score outputs against targets and say which samples are still wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

from clln.controller.backend import Measurement
from clln.controller.errors import ProtocolError

if TYPE_CHECKING:
    from clln.controller.task import Dataset


class Readout(Protocol):
    """Which voltages a task reads as its outputs and which nodes its clamps hold."""

    @property
    def n_outputs(self) -> int: ...

    @property
    def clamp_nodes(self) -> tuple[int, ...]:
        """Nodes held in the clamped phase, in the order of the clamp columns."""
        ...

    @property
    def nodes_per_output(self) -> int:
        """Clamped nodes per output: 1 (a node) or 2 (the ends of an edge)."""
        ...

    def outputs(self, measurement: Measurement) -> np.ndarray:
        """(B, n_outputs) output voltages, V."""
        ...

    def held(self, free: Measurement, out_free: np.ndarray) -> np.ndarray:
        """(B, n_clamps) free voltages of the clamped nodes, given the free outputs."""
        ...

    def corner_outputs(self, ends: np.ndarray) -> np.ndarray:
        """(K, n_outputs) outputs of clamped-node voltages ``ends`` (K, nodes_per_output)."""
        ...

    def place(self, out_free: np.ndarray, ends: np.ndarray, nudge: np.ndarray) -> np.ndarray:
        """(B, n_clamps) clamp voltages that move the free outputs (B, n_outputs) by
        ``nudge`` (B, n_outputs), from the clamped nodes' free voltages ``ends``."""
        ...


@dataclass(frozen=True)
class NodeReadout:
    """Outputs are node voltages against ground; each output node is clamped."""

    nodes: tuple[int, ...]
    nodes_per_output: ClassVar[int] = 1

    @property
    def n_outputs(self) -> int:
        return len(self.nodes)

    @property
    def clamp_nodes(self) -> tuple[int, ...]:
        return tuple(self.nodes)

    def outputs(self, measurement: Measurement) -> np.ndarray:
        return measurement.at_nodes(self.nodes)

    def held(self, free: Measurement, out_free: np.ndarray) -> np.ndarray:
        return out_free

    def corner_outputs(self, ends: np.ndarray) -> np.ndarray:
        return ends

    def place(self, out_free: np.ndarray, ends: np.ndarray, nudge: np.ndarray) -> np.ndarray:
        return out_free + nudge


@dataclass(frozen=True)
class EdgeDropReadout:
    """Outputs are voltage drops v[a] - v[b] across (a, b) node pairs; both ends of an
    output edge are clamped and a nudge is split evenly between them."""

    edges: tuple[tuple[int, int], ...]
    nodes_per_output: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if not self.edges:
            raise ProtocolError("an allostery task needs output edges")
        ends = [n for e in self.edges for n in e]
        if len(set(ends)) != len(ends):
            raise ProtocolError("output edges of an allostery task must not share nodes")

    @property
    def n_outputs(self) -> int:
        return len(self.edges)

    @property
    def clamp_nodes(self) -> tuple[int, ...]:
        return tuple(n for e in self.edges for n in e)

    def outputs(self, measurement: Measurement) -> np.ndarray:
        return measurement.drops_at(np.array(self.edges))

    def held(self, free: Measurement, out_free: np.ndarray) -> np.ndarray:
        return free.at_nodes(self.clamp_nodes)

    def corner_outputs(self, ends: np.ndarray) -> np.ndarray:
        return ends[:, :1] - ends[:, 1:]

    def place(self, out_free: np.ndarray, ends: np.ndarray, nudge: np.ndarray) -> np.ndarray:
        pairs = ends.reshape(len(out_free), -1, 2)
        clamped = pairs + 0.5 * nudge[:, :, None] * np.array([1.0, -1.0])
        return clamped.reshape(len(out_free), -1)


class Inputs(Protocol):
    """How a task's features become source voltages."""

    def n_sources(self, n_features: int) -> int: ...

    def voltages(self, x: np.ndarray) -> np.ndarray:
        """(B, n_sources) volts for float features x (B, n_features)."""
        ...


@dataclass(frozen=True)
class DirectInputs:
    """Each feature drives one source at its own value, volts."""

    def n_sources(self, n_features: int) -> int:
        return n_features

    def voltages(self, x: np.ndarray) -> np.ndarray:
        return x


@dataclass(frozen=True)
class MirroredInputs:
    """+x and -x sources plus a constant "high ground" source at ``high_ground`` V:
    positive conductances allow only positive slopes, so each feature comes with its
    negative."""

    high_ground: float

    def n_sources(self, n_features: int) -> int:
        return 2 * n_features + 1

    def voltages(self, x: np.ndarray) -> np.ndarray:
        high = np.full((x.shape[0], 1), self.high_ground)
        return np.hstack([x, -x, high])


@dataclass(frozen=True)
class ComplementInputs:
    """x and high_ground - x sources (no separate high ground): every source stays within
    [0, high_ground] V, as on a bench with one supply."""

    high_ground: float

    def n_sources(self, n_features: int) -> int:
        return 2 * n_features

    def voltages(self, x: np.ndarray) -> np.ndarray:
        return np.hstack([x, self.high_ground - x])


class Cost(Protocol):
    """How outputs are scored against targets, and which samples are still wrong."""

    @property
    def classifies(self) -> bool:
        """Whether the task sorts samples into labelled classes."""
        ...

    def sample_errors(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(B,) per-sample cost."""
        ...

    def labels(self, dataset: Dataset) -> np.ndarray | None:
        """The class labels the cost uses, None when it uses none."""
        ...

    def wrong(self, outputs: np.ndarray, batch: Dataset, margin: float) -> np.ndarray:
        """(B,) bool: the samples not yet right by ``margin`` V."""
        ...


@dataclass(frozen=True)
class SquaredError:
    """Mean squared error over the outputs, V^2; a sample is wrong while some output is
    more than the margin away from its target."""

    classifies: ClassVar[bool] = False

    def sample_errors(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        squares = (outputs - y) ** 2
        return np.add.reduce(squares, axis=1) / squares.shape[1]  # np.mean's sum and division

    def labels(self, dataset: Dataset) -> np.ndarray | None:
        return None

    def wrong(self, outputs: np.ndarray, batch: Dataset, margin: float) -> np.ndarray:
        return np.max(np.abs(batch.y - outputs), axis=1) > margin


@dataclass(frozen=True)
class CosineCost:
    """Cosine distance between outputs and one-hot targets; winner-take-all readout. A
    labelled sample is wrong while it is misclassified or its correct output leads the
    runner-up by no more than the margin (a hinge)."""

    classifies: ClassVar[bool] = True

    def sample_errors(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        num = np.sum(outputs * y, axis=1)
        den = np.linalg.norm(outputs, axis=1) * np.linalg.norm(y, axis=1)
        return 1.0 - num / np.where(den > 0, den, 1.0)

    def labels(self, dataset: Dataset) -> np.ndarray | None:
        return dataset.labels

    def wrong(self, outputs: np.ndarray, batch: Dataset, margin: float) -> np.ndarray:
        if batch.labels is None:
            return SquaredError().wrong(outputs, batch, margin)
        rows = np.arange(len(batch))
        correct = outputs[rows, batch.labels]
        others = outputs.copy()
        others[rows, batch.labels] = -np.inf
        lead = correct - others.max(axis=1) if outputs.shape[1] > 1 else np.full(len(batch), np.inf)
        return lead <= margin
