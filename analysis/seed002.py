"""Seed 002's limit cycles on the physical model of its small network.

Two tasks (alpha: input 0.4351 V -> output 0.31 V; beta: input 0.0181 V -> 0.14 V) are
alternated with period tau (a whole cycle: alpha for tau/2, then beta for tau/2) on the
twin transistor pair that learns in place
(:class:`~clln.simulator.insitu_transistor.TransistorTwinPhysics`). The rig runs its
loop at a fixed step rate: each step measures the free output, sets the clamp
O_C = O_F + eta (y - O_F) and enables learning for the rest of the step, so one period
holds tau x step_rate steps (tau/2 x step_rate per task).

After a burn-in the gates trace a closed orbit in gate-voltage space (the "bowtie").
D^2 is the squared span of that orbit (the largest squared distance between two of its
points, V^2) and MSE the squared output error of both tasks averaged over the orbit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clln.controller.network import Network, NodeRoles
from clln.simulator.devices import SeedTransistor
from clln.simulator.insitu_transistor import EdgeCircuitParams, TransistorTwinPhysics

HIGH, LOW = 0.4351, 0.0181  # V, the sources of seed 002's small network
#: (input V, target output V) of tasks alpha and beta
TASKS = ((0.4351, 0.31), (0.0181, 0.14))


def pair_network() -> Network:
    """Seed 002's small network: 0 high, 1 low, 2 output, 3 input, 4 ground (no edge);
    transistors high-output and low-output (the 500 ohm resistor input-output is a fixed
    resistor of the physics)."""
    return Network(5, np.array([[0, 2], [1, 2]]), roles=NodeRoles((0, 1, 3), (4,), (2,)))


def pair_physics(params: EdgeCircuitParams, gates: tuple[float, float] = (3.0, 3.0), *,
                 bench_seed: int = 0) -> TransistorTwinPhysics:
    """The twin pair that learns in place (V_T = 0.7 V, as the seed's notebook)."""
    return TransistorTwinPhysics(pair_network(), SeedTransistor(v_t=0.7), np.array(gates), params,
                                 bench_seed=bench_seed, fixed_resistors=[(3, 2, 1.0 / 500.0)])


@dataclass(frozen=True)
class Cycle:
    """One steady limit cycle: its period, gates (steps, 2) along it, D^2 and MSE."""

    tau: float
    gates: np.ndarray
    d2: float
    mse: float


def _sources(task: int) -> np.ndarray:
    return np.array([HIGH, LOW, TASKS[task][0]])


def task_errors(physics: TransistorTwinPhysics) -> np.ndarray:
    """(2,) squared output error (V^2) of both tasks at the present gates."""
    out = physics.measure(np.stack([_sources(0), _sources(1)]))[:, 2]
    return (out - np.array([t[1] for t in TASKS])) ** 2


def limit_cycle(physics: TransistorTwinPhysics, tau: float, *, step_rate: float = 1e3,
                eta: float = 0.5, burn_in_s: float = 2.0, learn_fraction: float = 0.5) -> Cycle:
    """Alternate the tasks with period ``tau`` (s) at ``step_rate`` steps per second
    (learning enabled ``learn_fraction`` of each step) for ``burn_in_s`` and then one
    measured cycle; ``tau * step_rate`` must be an even number of steps."""
    half = int(round(tau * step_rate / 2))
    if half < 1:
        raise ValueError(f"tau {tau:g} s holds no step at {step_rate:g} steps/s")
    window = learn_fraction / step_rate
    hold = physics.params.hold_time

    def step(task: int) -> None:
        src = _sources(task)
        out = physics.measure(src)[0, 2]
        clamp = out + eta * (TASKS[task][1] - out)
        physics.learn(src, np.array([clamp]), window)
        physics.hold(max(1.0 / step_rate - window - hold, 0.0))

    cycles = max(1, int(np.ceil(burn_in_s / (2 * half / step_rate))))
    for _ in range(cycles):
        for task in (0, 1):
            for _ in range(half):
                step(task)
    gates, errors = [], []
    for task in (0, 1):
        for _ in range(half):
            step(task)
            gates.append(physics.read_state())
            errors.append(task_errors(physics).mean())
    g = np.array(gates)
    span = np.max(np.sum((g[:, None, :] - g[None, :, :]) ** 2, axis=-1))
    return Cycle(tau, g, float(span), float(np.mean(errors)))


def loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def read_measured(directory: Path, kind: str, experiment: int) -> np.ndarray:
    """(k, 2) columns tau (s) and value of ``measured-{kind}-exp{experiment}.csv``."""
    return np.loadtxt(directory / f"measured-{kind}-exp{experiment}.csv", delimiter=",", ndmin=2)


def read_bowtie(path: Path) -> np.ndarray:
    """(k, 2) the two gates (V) along a measured orbit (the file holds one row per edge)."""
    return np.loadtxt(path, delimiter=",", ndmin=2).T
