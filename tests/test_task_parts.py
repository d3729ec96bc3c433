"""A task's readout, inputs and cost, and an edge kind's behaviour, are chosen once from
the kind; each part is checked against numbers worked out here by hand or by indexing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clln.controller import ContinuousEdges, Dataset, GateEdges, Measurement, SteppedEdges, Task
from clln.controller.errors import ProtocolError
from clln.controller.readouts import (
    ComplementInputs,
    CosineCost,
    DirectInputs,
    EdgeDropReadout,
    MirroredInputs,
    NodeReadout,
    SquaredError,
)


def data(rng: np.random.Generator, n: int = 6, features: int = 2, outputs: int = 2) -> Dataset:
    labels = rng.integers(0, outputs, n)
    return Dataset(rng.uniform(0, 1, (n, features)), rng.uniform(0, 0.5, (n, outputs)), labels)


@pytest.mark.parametrize(("kind", "complement", "parts"), [
    ("regression", False, (NodeReadout, DirectInputs, SquaredError)),
    ("allostery", False, (EdgeDropReadout, DirectInputs, SquaredError)),
    ("classification", False, (NodeReadout, MirroredInputs, CosineCost)),
    ("classification", True, (NodeReadout, ComplementInputs, CosineCost)),
])
def test_each_kind_gets_its_parts_and_keeps_them_through_replace(kind, complement, parts) -> None:  # noqa: ANN001
    d = data(np.random.default_rng(0))
    task = Task(kind, d, d, output_nodes=(4, 5), output_edges=((4, 5), (6, 7)), complement=complement)
    assert tuple(type(p) for p in (task.readout, task.inputs, task.cost_model)) == parts
    again = replace(task, train=d.take(np.arange(3)))
    assert tuple(type(p) for p in (again.readout, again.inputs, again.cost_model)) == parts
    assert task.classifies == (kind == "classification")
    assert (task.labels(d) is d.labels) == (kind == "classification")


def test_allostery_clamps_move_each_drop_by_the_nudge_and_keep_its_midpoint() -> None:
    rng = np.random.default_rng(1)
    v = rng.uniform(0, 1, (5, 9))  # (B, n) free node voltages
    pairs = ((2, 7), (5, 1))
    d = Dataset(np.zeros((5, 1)), rng.uniform(-0.5, 0.5, (5, 2)))
    task = Task("allostery", d, d, output_edges=pairs)
    eta = 0.3
    clamps = task.clamp_voltages(Measurement(v), d.y, eta)
    assert task.clamp_nodes == (2, 7, 5, 1)
    for k, (a, b) in enumerate(pairs):
        free_drop = v[:, a] - v[:, b]
        drop = clamps[:, 2 * k] - clamps[:, 2 * k + 1]
        np.testing.assert_allclose(drop, free_drop + eta * (d.y[:, k] - free_drop), rtol=0, atol=1e-15)
        np.testing.assert_allclose(clamps[:, 2 * k] + clamps[:, 2 * k + 1], v[:, a] + v[:, b],
                                   rtol=0, atol=1e-15)
    with pytest.raises(ProtocolError, match="must not share nodes"):
        Task("allostery", d, d, output_edges=((1, 2), (2, 3)))


def test_classification_inputs_and_the_hinge() -> None:
    x = np.array([[0.2, 0.7]])
    labels = np.array([0, 0, 0, 1])
    outputs = np.array([[0.30, 0.10], [0.10, 0.30], [0.20, 0.19], [0.20, 0.19]])
    d = Dataset(np.zeros((4, 2)), np.eye(2)[labels] * 0.3, labels)
    mirrored = Task("classification", d, d, output_nodes=(0, 1), high_ground=0.9)
    complement = Task("classification", d, d, output_nodes=(0, 1), high_ground=0.9, complement=True)
    assert mirrored.source_voltages(x).tolist() == [[0.2, 0.7, -0.2, -0.7, 0.9]]
    np.testing.assert_allclose(complement.source_voltages(x), [[0.2, 0.7, 0.7, 0.2]], rtol=0, atol=1e-15)
    assert (mirrored.n_sources, complement.n_sources) == (5, 4)
    # leads of the correct output over the other: 0.2, -0.2, 0.01, -0.01
    assert mirrored.wrong(outputs, d, 0.05).tolist() == [False, True, True, True]
    assert mirrored.accuracy(outputs, d) == 0.5


def test_edge_kinds_move_clip_and_step_on_their_own_units() -> None:
    table = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])  # S; the second falls with the tap
    stepped = SteppedEdges(table)
    taps, applied, clipped = stepped.move(np.array([1, 1]), np.array([5, -1]))
    assert taps.tolist() == [3, 0] and applied.tolist() == [2, -1] and clipped.tolist() == [True, False]
    assert stepped.conductance_at(taps).tolist() == [4.0, 4.0]
    assert stepped.step_commands(np.array([1.0, 1.0]), 2).tolist() == [2, -2]  # both towards more S
    assert stepped.nearest_taps(np.array([2.4, 2.6])).tolist() == [1, 1]
    assert stepped.command_dtype is np.int64 and stepped.is_stepped

    cont = ContinuousEdges(0.5, 2.5)
    g, dg, cut = cont.move(np.array([1.0, 2.0]), np.array([0.25, 1.0]))
    assert g.tolist() == [1.25, 2.5] and dg.tolist() == [0.25, 0.5] and cut.tolist() == [False, True]
    assert cont.step_commands(np.array([1.0, -1.0]), 4).tolist() == [4 * 2.0 / 128, -4 * 2.0 / 128]
    gate = GateEdges(0.0, 5.12)
    assert gate.step_commands(np.array([-1.0]), 1).tolist() == [-0.04]
    assert cont.taps_of(g) is None and gate.taps_of(g) is None


def test_the_steps_sums_are_numpys_to_the_bit() -> None:
    """The step record's sums, written without numpy's Python layers (which cost 20-30
    us each with the caches cold after a large network's solves), are np.mean's and
    np.linalg.norm's to the bit: per-sample squared error, batch cost, rms nudge, update
    norm (float and integer updates), and the simulated clock's one-sample stamps."""
    import math

    from clln.controller.readouts import SquaredError
    from clln.controller.trainer import _norm
    from clln.simulator.backend import SimClock

    rng = np.random.default_rng(3)
    for _ in range(200):
        b, k = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        outputs, y = rng.normal(size=(2, b, k)) * 10.0 ** rng.integers(-6, 2)
        errors = SquaredError().sample_errors(outputs, y)
        np.testing.assert_array_equal(errors, np.mean((outputs - y) ** 2, axis=1))
        assert float(np.add.reduce(errors) / errors.size) == float(np.mean(errors))
        nudge = rng.normal(size=(b, k))
        squares = nudge**2
        assert math.sqrt(np.add.reduce(squares, axis=None) / squares.size) == float(np.sqrt(np.mean(squares)))
        update = rng.normal(size=int(rng.integers(1, 5000))) * 10.0 ** rng.integers(-9, 1)
        assert _norm(update) == float(np.linalg.norm(update))
        taps = rng.integers(-3, 4, size=50)
        assert _norm(taps) == float(np.linalg.norm(taps))
    clock = SimClock(3.7e-4)
    clock.now = now = 0.123
    for _ in range(50):
        want = now + clock.settle_time * np.arange(1, 2)  # the stamps of any number of samples
        np.testing.assert_array_equal(clock.advance(1), want)
        now = float(want[-1])
        assert clock.now == now
