"""Learning bias and what it does (seed 002; docs/science.md, "Learning bias").

* :func:`alternate` trains one backend on several tasks in turn (task k for tau / n
  steps, then the next), the protocol of seed 002's limit cycles;
  :func:`limit_cycle` reads the cycle's squared span D^2 = |G(tau/2) - G(0)|^2 and the
  error averaged over the cycle off the result.
* :func:`null_space_drift` splits the displacement of the conductances into the part
  the task can see (the range of its output Jacobian) and the part it cannot (its null
  space): with a learning bias the second grows while the error stays flat.
* :func:`retention` trains a first task, then a second, and follows the first task's
  error: bias-driven drift erases it.
* :func:`direction_tasks` makes compatible tasks for these experiments: the same map
  shown along different input directions, so each task alone leaves a different null
  space.
* :func:`loglog_slope` and :func:`load_seed002` for the comparisons.

Units: conductances in siemens, D^2 in S^2, errors in the task's cost units (MSE: V^2).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from clln.analysis.cost import response_arrays, task_output_operator
from clln.analysis.susceptibility import GroundedGreen
from clln.controller.backend import NetworkBackend
from clln.controller.network import Network
from clln.controller.rules import UpdateRule
from clln.controller.schemes import Scheme
from clln.controller.task import Dataset, Task
from clln.controller.trainer import TrainConfig, Trainer


def direction_tasks(
    task: Task, directions: Sequence[Sequence[float]], rng: np.random.Generator, *,
    n_train: int = 10, n_test: int = 20, scale: tuple[float, float] = (0.2, 1.0),
) -> list[Task]:
    """Tasks that show a regression task's linear map along single input directions.

    The map A (n_outputs x n_features) is fitted to the task's training set (exact for
    the linear maps of :func:`~clln.controller.task.linear_map_dataset`); task k has
    inputs x = u d_k with u uniform in ``scale`` and targets A x. All of them are solved
    by the same network (the one that realises A), but each alone constrains only A d_k.

    Parameters
    ----------
    task : a regression or allostery task.
    directions : (K, n_features) input directions (normalised to unit max).
    """
    if task.classifies:
        raise ValueError("direction_tasks needs a regression or allostery task")
    amap, *_ = np.linalg.lstsq(task.train.x, task.train.y, rcond=None)  # (n_features, n_outputs)
    tasks = []
    for d in np.asarray(directions, dtype=float):
        d = d / np.abs(d).max()

        def data(n: int, d: np.ndarray = d) -> Dataset:
            x = rng.uniform(*scale, size=(n, 1)) * d[None, :]
            return Dataset(x, x @ amap)

        tasks.append(replace(task, train=data(n_train), test=data(n_test)))
    return tasks


@dataclass(frozen=True, eq=False)
class Alternation:
    """What :func:`alternate` recorded.

    Attributes
    ----------
    tau : period in steps (every task trained for tau / K steps per period).
    boundaries : (n_switch + 1, m) conductances (S) at the start and at every switch.
    errors : (steps,) each step's batch error on the task being trained (cost units).
    task_index : (steps,) the task trained at each step.
    updated : (steps,) bool, whether the step changed any edge.
    """

    tau: int
    boundaries: np.ndarray
    errors: np.ndarray
    task_index: np.ndarray
    updated: np.ndarray


def alternate(
    backend: NetworkBackend, tasks: Sequence[Task], rule: UpdateRule, config: TrainConfig,
    rng: np.random.Generator, *, tau: int, cycles: int, scheme: Scheme | None = None,
) -> Alternation:
    """Train ``tasks`` in turn on one backend: tau / K steps each, ``cycles`` periods.

    The tasks must share the backend's clamped nodes. One scheme (and its state) serves
    all tasks, as on a bench.

    Parameters
    ----------
    tau : period in steps; a multiple of the number of tasks K.
    config : eta and batch size (its step and test settings are not used).
    """
    k = len(tasks)
    if k < 1 or tau < k or tau % k:
        raise ValueError(f"tau must be a positive multiple of the number of tasks ({k}), got {tau}")
    trainers = [Trainer(backend, t, rule, config, rng, scheme=scheme) for t in tasks]
    half = tau // k
    boundaries = [backend.read_edges().conductances]
    errors, which, updated = [], [], []
    step = 0
    for _ in range(cycles):
        for i, trainer in enumerate(trainers):
            for _ in range(half):
                step += 1
                record = trainer.step(step)
                errors.append(record.error)
                which.append(i)
                updated.append(record.update_norm > 0)
            boundaries.append(backend.read_edges().conductances)
    return Alternation(tau, np.array(boundaries), np.array(errors), np.array(which),
                       np.array(updated, dtype=bool))


def limit_cycle(result: Alternation, last: int) -> tuple[float, float]:
    """(D^2, mean error) over the last ``last`` periods of an alternation.

    D^2 = |G(tau/K) - G(0)|^2 (S^2), the squared displacement over one task's share of
    the period, averaged over the task switches of the last periods; the error is the
    per-step training error averaged over the same steps.
    """
    b = result.boundaries
    k = int(result.task_index.max()) + 1
    switches = b.shape[0] - 1
    use = min(last * k, switches)
    steps = np.diff(b[-use - 1:], axis=0)
    d2 = float(np.mean(np.sum(steps**2, axis=1)))
    n = result.errors.size * use // switches
    return d2, float(np.mean(result.errors[-n:]))


@dataclass(frozen=True, eq=False)
class Drift:
    """Displacement of the conductances split by what a task can see.

    Attributes
    ----------
    range_norm : (T,) |P_range (G_t - G_0)|, S.
    null_norm : (T,) |P_null (G_t - G_0)|, S.
    rank : dimension of the range (stiff subspace) used.
    """

    range_norm: np.ndarray
    null_norm: np.ndarray
    rank: int


def task_jacobian(network: Network, conductances: np.ndarray, task: Task,
                  dataset: Dataset | None = None) -> np.ndarray:
    """(N n_out, m) output Jacobian dO/dg (V/S) of a task's samples at ``conductances``."""
    data = task.train if dataset is None else dataset
    green = GroundedGreen(network, conductances)
    arrays = response_arrays(green, task_output_operator(task, network.n_nodes))
    jac = arrays.jacobian(task.source_voltages(data.x))  # (N, n_out, m)
    return jac.reshape(-1, network.n_edges)


def null_space_drift(network: Network, states: np.ndarray, task: Task, *,
                     reference: int = 0, rtol: float = 1e-6) -> Drift:
    """Split G_t - G_ref of each state (T, m) into the range and the null space of the
    task's output Jacobian at G_ref (singular values above rtol x the largest)."""
    states = np.asarray(states, dtype=float)
    jac = task_jacobian(network, states[reference], task)
    _, sing, vt = np.linalg.svd(jac, full_matrices=False)
    rank = int(np.sum(sing > rtol * sing[0]))
    basis = vt[:rank].T  # (m, rank) orthonormal range
    delta = states - states[reference]
    in_range = delta @ basis @ basis.T
    return Drift(np.linalg.norm(in_range, axis=1), np.linalg.norm(delta - in_range, axis=1), rank)


@dataclass(frozen=True, eq=False)
class Retention:
    """Errors while training a second task after a first.

    Attributes
    ----------
    steps : (T,) steps into the second task at which the errors were measured.
    first, second : (T,) test errors of the first and second task (cost units).
    states : (T, m) conductances at those steps (S).
    """

    steps: np.ndarray
    first: np.ndarray
    second: np.ndarray
    states: np.ndarray


def retention(
    backend: NetworkBackend, first: Task, second: Task, rule: UpdateRule, config: TrainConfig,
    rng: np.random.Generator, *, steps_first: int, steps_second: int, every: int,
    scheme: Scheme | None = None,
) -> Retention:
    """Train ``first`` for ``steps_first`` steps, then ``second`` for ``steps_second``,
    evaluating both tasks' test errors every ``every`` steps of the second phase (and at
    its start)."""
    one = Trainer(backend, first, rule, config, rng, scheme=scheme)
    two = Trainer(backend, second, rule, config, rng, scheme=scheme)
    for i in range(1, steps_first + 1):
        one.step(i)
    marks, e1, e2, states = [], [], [], []

    def look(at: int) -> None:
        marks.append(at)
        e1.append(one.evaluate(first.test)[0])
        e2.append(two.evaluate(second.test)[0])
        states.append(backend.read_edges().conductances)

    look(0)
    for i in range(1, steps_second + 1):
        two.step(steps_first + i)
        if i % every == 0:
            look(i)
    return Retention(np.array(marks), np.array(e1), np.array(e2), np.array(states))


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def load_seed002(folder: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Seed 002's measured curves: {"D2": {"exp1": (n, 2) [tau s, D^2 V^2], ...},
    "MSE": {"exp1": (n, 2) [tau s, MSE V^2], ...}} from ``measured-*-expK.csv``."""
    folder = Path(folder)
    out: dict[str, dict[str, np.ndarray]] = {"D2": {}, "MSE": {}}
    for kind, prefix in (("D2", "measured-DG2-"), ("MSE", "measured-MSE-")):
        for path in sorted(folder.glob(f"{prefix}*.csv")):
            with path.open() as fh:
                rows = [[float(v) for v in row] for row in csv.reader(fh) if row]
            out[kind][path.stem.removeprefix(prefix)] = np.array(rows)
    if not out["D2"] or not out["MSE"]:
        raise FileNotFoundError(f"{folder}: no measured-DG2-*.csv / measured-MSE-*.csv files")
    return out
