"""Learning tasks: what the sources are driven with and what the outputs should do.

Three kinds (docs/science.md, "Tasks"):

* ``regression``: output *node* voltages should equal a linear map of the inputs;
  cost MSE (V^2).
* ``allostery``: voltage *drops across output edges* should equal a linear map of
  the inputs; both end nodes of an output edge are clamped; cost MSE (V^2).
* ``classification``: one output node per class, winner-take-all readout, cosine
  cost. Inputs are duplicated as +x and -x sources plus a constant "high ground"
  source, because positive conductances allow only positive slopes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from clln.controller.backend import Measurement
from clln.controller.errors import ProtocolError
from clln.controller.readouts import (
    ComplementInputs,
    CosineCost,
    Cost,
    DirectInputs,
    EdgeDropReadout,
    Inputs,
    MirroredInputs,
    NodeReadout,
    Readout,
    SquaredError,
)

TaskKind = Literal["regression", "allostery", "classification"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs x (N, n_features) volts-like features and targets y (N, n_outputs) volts."""

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.x[idx], self.y[idx], None if self.labels is None else self.labels[idx])


@dataclass(frozen=True, eq=False)
class Task:
    """A task on a network whose node roles are already set.

    Attributes
    ----------
    kind : regression, allostery or classification (recorded and printed; the behaviour
        is in ``readout``, ``inputs`` and ``cost``, chosen once from it).
    output_nodes : (k,) output nodes (regression, classification).
    output_edges : (k, 2) output node pairs (allostery); the output is v[a] - v[b].
    train, test : datasets.
    high_ground : volts of the constant "high ground" source (classification).
    complement : classification inputs drive x and high_ground - x (no separate high
        ground) instead of +x, -x and the high ground: sources stay within
        [0, high_ground], as on a bench with one supply (transistor networks).
    readout, inputs, cost : the task's parts (:mod:`clln.controller.readouts`).
    """

    kind: TaskKind
    train: Dataset
    test: Dataset
    output_nodes: tuple[int, ...] = ()
    output_edges: tuple[tuple[int, int], ...] = ()
    high_ground: float = 1.0
    complement: bool = False
    readout: Readout = field(init=False, repr=False)
    inputs: Inputs = field(init=False, repr=False)
    cost_model: Cost = field(init=False, repr=False)

    def __post_init__(self) -> None:
        readout: Readout
        if self.kind == "allostery":
            readout = EdgeDropReadout(tuple(self.output_edges))
        elif not self.output_nodes:
            raise ProtocolError(f"a {self.kind} task needs output nodes")
        else:
            readout = NodeReadout(tuple(self.output_nodes))
        inputs: Inputs = DirectInputs()
        cost: Cost = SquaredError()
        if self.kind == "classification":
            inputs = ComplementInputs(self.high_ground) if self.complement else MirroredInputs(self.high_ground)
            cost = CosineCost()
        object.__setattr__(self, "readout", readout)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "cost_model", cost)

    @property
    def n_outputs(self) -> int:
        return self.readout.n_outputs

    @property
    def n_features(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def n_sources(self) -> int:
        """Number of source nodes the task drives."""
        return self.inputs.n_sources(self.n_features)

    @property
    def clamp_nodes(self) -> tuple[int, ...]:
        """Nodes held in the clamped phase, in the order of the ``clamps`` columns."""
        return self.readout.clamp_nodes

    @property
    def classifies(self) -> bool:
        """Whether the task sorts samples into labelled classes (winner-take-all)."""
        return self.cost_model.classifies

    def labels(self, dataset: Dataset) -> np.ndarray | None:
        """The dataset's class labels when the task classifies, else None."""
        return self.cost_model.labels(dataset)

    def source_voltages(self, x: np.ndarray) -> np.ndarray:
        """(B, n_sources) volts for the inputs x (B, n_features)."""
        return self.inputs.voltages(np.asarray(x, dtype=float))

    def outputs(self, measurement: Measurement) -> np.ndarray:
        """(B, n_outputs) output voltages (node voltages or edge drops)."""
        return self.readout.outputs(measurement)

    def clamp_voltages(
        self, free: Measurement, y: np.ndarray, eta: float | np.ndarray
    ) -> np.ndarray:
        """(B, n_clamps) clamp voltages O^C = O^F + eta (y - O^F).

        For output edges the nudge is split evenly between the two end nodes.
        ``eta`` may be a scalar or a (B, 1) / (B, n_outputs) array.
        """
        out_free = self.outputs(free)
        return self._nudged(out_free, self.readout.held(free, out_free), y, eta)

    def _nudged(self, out_free: np.ndarray, ends: np.ndarray, y: np.ndarray,
                eta: float | np.ndarray) -> np.ndarray:
        """The clamp formula of :meth:`clamp_voltages` from free outputs (B, n_outputs),
        the free voltages of the clamped nodes ``ends`` (B, n_clamps) and targets y."""
        nudge = np.asarray(eta) * (np.asarray(y) - out_free)
        return self.readout.place(out_free, ends, nudge)

    def source_bounds(self) -> tuple[float, float]:
        """(low, high) V: every source voltage of the train and test sets, with ground
        (0 V). A free node voltage of a passive network lies within them."""
        sources = np.vstack([self.source_voltages(self.train.x), self.source_voltages(self.test.x)])
        return min(float(sources.min()), 0.0), max(float(sources.max()), 0.0)

    def clamp_bounds(self, eta: float, *, mirrored: bool = False) -> tuple[float, float]:
        """(low, high) V: every clamp voltage :meth:`clamp_voltages` can ask for with nudge
        ``eta`` (and, with ``mirrored``, every mirrored clamp held - nudge of symmetric
        overclamping), when the free outputs lie within :meth:`source_bounds`.

        The clamp formula is affine in the free voltages of the clamped nodes and in the
        targets, so its extremes over that box are at its corners: the formula itself is
        evaluated there (the free nodes at either source bound, every target at the
        lowest or highest target of the datasets).
        """
        lo, hi = self.source_bounds()
        y = np.concatenate([self.train.y.ravel(), self.test.y.ravel()])
        width = self.readout.nodes_per_output
        corners = np.array(list(itertools.product((lo, hi), repeat=width)))  # (2^width, width)
        targets = np.array([y.min(), y.max()])
        ends = np.repeat(corners, len(targets), axis=0)  # every corner with every target
        ty = np.tile(targets, len(corners))[:, None]
        out_free = self.readout.corner_outputs(ends)
        clamped = self._nudged(out_free, ends, ty, eta)
        reach = [clamped, 2.0 * ends - clamped] if mirrored else [clamped]
        return float(min(r.min() for r in reach)), float(max(r.max() for r in reach))

    def sample_errors(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(B,) per-sample cost: squared error mean (V^2), or cosine distance."""
        return self.cost_model.sample_errors(outputs, y)

    def cost(self, outputs: np.ndarray, y: np.ndarray) -> float:
        """Mean cost over a batch: MSE (V^2) or mean cosine distance."""
        errors = self.sample_errors(outputs, y)
        return float(np.add.reduce(errors) / errors.size)  # np.mean's sum and division

    def wrong(self, outputs: np.ndarray, batch: Dataset, margin: float) -> np.ndarray:
        """(B,) bool: the samples of ``batch`` whose free outputs (B, n_outputs) V are not
        yet right by ``margin`` V (a regression output off by more than it; a classified
        sample misclassified or leading the runner-up by no more than it)."""
        return self.cost_model.wrong(outputs, batch, margin)

    def accuracy(self, outputs: np.ndarray, dataset: Dataset) -> float | None:
        """Winner-take-all accuracy for classification, None otherwise."""
        labels = self.labels(dataset)
        if labels is None:
            return None
        return float(np.mean(np.argmax(outputs, axis=1) == labels))


def linear_map_dataset(
    rng: np.random.Generator,
    n_features: int,
    n_outputs: int,
    n_train: int,
    n_test: int,
    *,
    input_range: tuple[float, float] = (0.0, 1.0),
    signed: bool = False,
    weight_range: tuple[float, float] = (0.05, 0.4),
) -> tuple[Dataset, Dataset, np.ndarray]:
    """Train and test sets for y = A x with a random A a resistor network can realise.

    With ``signed=False`` (node outputs against a 0 V ground) A has positive entries
    whose row sums stay below 1; with ``signed=True`` (edge drops) entries take
    random signs. Returns (train, test, A).
    """
    lo, hi = weight_range
    amap = rng.uniform(lo, hi, size=(n_outputs, n_features))
    row = amap.sum(axis=1, keepdims=True)
    amap = np.where(row > 0.9, amap * 0.9 / row, amap)
    if signed:
        amap = amap * rng.choice([-1.0, 1.0], size=amap.shape)
    x = rng.uniform(*input_range, size=(n_train + n_test, n_features))
    y = x @ amap.T
    return Dataset(x[:n_train], y[:n_train]), Dataset(x[n_train:], y[n_train:]), amap


def blobs_dataset(
    rng: np.random.Generator,
    n_features: int,
    n_classes: int,
    n_train: int,
    n_test: int,
    *,
    spread: float = 0.08,
    target_high: float = 0.3,
    target_low: float = 0.0,
) -> tuple[Dataset, Dataset]:
    """Gaussian clusters in [0, 1]^d, one per class, with one-hot voltage targets."""
    centers = rng.uniform(0.2, 0.8, size=(n_classes, n_features))
    labels = rng.integers(0, n_classes, size=n_train + n_test)
    x = np.clip(centers[labels] + spread * rng.standard_normal((len(labels), n_features)), 0, 1)
    y = np.full((len(labels), n_classes), target_low)
    y[np.arange(len(labels)), labels] = target_high
    return (
        Dataset(x[:n_train], y[:n_train], labels[:n_train]),
        Dataset(x[n_train:], y[n_train:], labels[n_train:]),
    )


def xor_dataset(
    rng: np.random.Generator, n_train: int, n_test: int, *, spread: float = 0.05,
    low: float = 0.0, high: float = 1.0, target_high: float = 0.3, target_low: float = 0.0,
) -> tuple[Dataset, Dataset]:
    """XOR of two inputs: points scattered (``spread`` V rms) around the four corners of
    [low, high]^2; class 1 where exactly one input is high. One-hot voltage targets.
    No linear readout separates the classes."""
    labels_in = rng.integers(0, 2, size=(n_train + n_test, 2))
    x = np.where(labels_in == 1, high, low) + spread * rng.standard_normal(labels_in.shape)
    labels = labels_in[:, 0] ^ labels_in[:, 1]
    y = np.full((len(labels), 2), target_low)
    y[np.arange(len(labels)), labels] = target_high
    return (Dataset(x[:n_train], y[:n_train], labels[:n_train]),
            Dataset(x[n_train:], y[n_train:], labels[n_train:]))


def quadratic_dataset(
    rng: np.random.Generator, n_train: int, n_test: int, *,
    input_range: tuple[float, float] = (0.0, 1.0), offset: float = 0.35, curvature: float = -0.6,
) -> tuple[Dataset, Dataset]:
    """Nonlinear regression: u uniform in [0, 1], sources (low + u span, low + (1 - u) span)
    and target y = offset + curvature (u - 1/2)^2 volts (by default a cap, 0.35 V at
    u = 1/2 and 0.2 V at the ends). Every output of a linear network is affine in u, so
    its mean squared error cannot fall below curvature^2 / 180 V^2 (2.0e-3 V^2 here)."""
    lo, hi = input_range
    u = rng.uniform(0.0, 1.0, size=n_train + n_test)
    x = lo + (hi - lo) * np.c_[u, 1.0 - u]
    y = (offset + curvature * (u - 0.5) ** 2)[:, None]
    return Dataset(x[:n_train], y[:n_train]), Dataset(x[n_train:], y[n_train:])


def seed002_pair_dataset() -> tuple[Dataset, Dataset]:
    """Seed 002's two tasks on its small network, as measured: sources (high, low, input)
    = (0.4351, 0.0181, input) volts; task alpha: input 0.4351 V -> output 0.31 V, task
    beta: input 0.0181 V -> output 0.14 V. Both tasks in one set (train = test)."""
    x = np.array([[0.4351, 0.0181, 0.4351], [0.4351, 0.0181, 0.0181]])
    y = np.array([[0.31], [0.14]])
    return Dataset(x, y), Dataset(x.copy(), y.copy())
