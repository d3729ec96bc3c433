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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
                 bench_seed: int = 0, v_t: float = 0.7, resistor_ohm: float = 500.0) -> TransistorTwinPhysics:
    """The twin pair that learns in place (V_T = 0.7 V as the seed's notebook; the input
    joined to the output through ``resistor_ohm``)."""
    return TransistorTwinPhysics(pair_network(), SeedTransistor(v_t=v_t), np.array(gates), params,
                                 bench_seed=bench_seed, fixed_resistors=[(3, 2, 1.0 / resistor_ohm)])


@dataclass(frozen=True)
class Cycle:
    """One steady limit cycle: its period, gates (steps, 2) along it, D^2 and MSE."""

    tau: float
    gates: np.ndarray
    d2: float
    mse: float


Tasks = Sequence[tuple[float, float]]


def _sources(task: int, tasks: Tasks = TASKS, rails: tuple[float, float] = (HIGH, LOW)) -> np.ndarray:
    return np.array([rails[0], rails[1], tasks[task][0]])


def task_errors(physics: TransistorTwinPhysics, tasks: Tasks = TASKS,
                rails: tuple[float, float] = (HIGH, LOW)) -> np.ndarray:
    """(2,) squared output error (V^2) of both tasks at the present gates."""
    out = physics.measure(np.stack([_sources(0, tasks, rails), _sources(1, tasks, rails)]))[:, 2]
    return (out - np.array([t[1] for t in tasks])) ** 2


def limit_cycle(physics: TransistorTwinPhysics, tau: float, *, step_rate: float = 1e3,
                eta: float = 0.5, burn_in_s: float = 2.0, learn_fraction: float = 0.5,
                tasks: Tasks = TASKS, rails: tuple[float, float] = (HIGH, LOW)) -> Cycle:
    """Alternate the tasks with period ``tau`` (s) at ``step_rate`` steps per second
    (learning enabled ``learn_fraction`` of each step) for ``burn_in_s`` and then one
    measured cycle; ``tau * step_rate`` must be an even number of steps. ``tasks`` are
    the (input V, target output V) of alpha and beta, ``rails`` the high and low
    sources (V)."""
    half = int(round(tau * step_rate / 2))
    if half < 1:
        raise ValueError(f"tau {tau:g} s holds no step at {step_rate:g} steps/s")
    window = learn_fraction / step_rate
    hold = physics.params.hold_time

    def step(task: int) -> None:
        src = _sources(task, tasks, rails)
        out = physics.measure(src)[0, 2]
        clamp = out + eta * (tasks[task][1] - out)
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
            errors.append(task_errors(physics, tasks, rails).mean())
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


def interpolate_loglog(table: np.ndarray, tau: float) -> float:
    """A measured (tau, value) table at ``tau``, interpolated linearly in log-log."""
    return float(np.exp(np.interp(np.log(tau), np.log(table[:, 0]), np.log(table[:, 1]))))


def overlay_numbers(cycles: Sequence[Cycle], measured: dict[int, tuple[np.ndarray, np.ndarray]], *,
                    reference: int, small_tau_max_s: float, small_fraction: float,
                    slope_range: tuple[float, float] = (1.5, 2.1)) -> dict[str, Any]:
    """The model beside the measurements: one row per model tau (the reference
    experiment interpolated there), D^2 log-log slope at small tau, saturation (last /
    previous D^2), MSE flat (second / first tau) then rising (last / first).

    ``measured`` maps experiment number -> (D^2 table, MSE table), columns tau (s) and
    value (V^2). The model's slope is fitted over its taus up to ``small_tau_max_s``;
    each experiment's over the smallest ``small_fraction`` of its taus."""
    tau = np.array([c.tau for c in cycles])
    d2 = np.array([c.d2 for c in cycles])
    mse = np.array([c.mse for c in cycles])
    small = tau <= small_tau_max_s
    slope = loglog_slope(tau[small], d2[small])
    ref_d2, ref_mse = measured[reference]
    rows = [{"tau_s": float(t), "model_d2": float(d), "measured_d2": interpolate_loglog(ref_d2, t),
             "model_mse": float(e), "measured_mse": interpolate_loglog(ref_mse, t)}
            for t, d, e in zip(tau, d2, mse, strict=True)]
    experiments = {}
    for k, (md, mm) in sorted(measured.items()):
        few = md[md[:, 0] <= np.quantile(md[:, 0], small_fraction)]
        experiments[f"exp{k}"] = {
            "d2_slope_small_tau": loglog_slope(few[:, 0], few[:, 1]),
            "d2_saturation": float(md[-1, 1] / md[-2, 1]),
            "mse_rise": float(mm[-1, 1] / mm[0, 1]),
        }
    return {
        "reference": f"exp{reference}",
        "rows": rows,
        "model": {
            "d2_slope_small_tau": slope,
            "small_tau_max_s": small_tau_max_s,
            "d2_slope_within": list(slope_range),
            "d2_slope_ok": bool(slope_range[0] <= slope <= slope_range[1]),
            "d2_saturation": float(d2[-1] / d2[-2]) if len(d2) > 1 else None,
            "mse_flat": float(mse[1] / mse[0]) if len(mse) > 1 else None,
            "mse_rise": float(mse[-1] / mse[0]) if len(mse) > 1 else None,
        },
        "measured": experiments,
    }


def overlay_lines(numbers: dict[str, Any]) -> list[str]:
    """The overlay as printable lines: the table, then the shape numbers."""
    ref = numbers["reference"]
    lines = [f"tau (s) | model D2 | measured D2 ({ref}) | model MSE | measured MSE ({ref})   [V^2]"]
    for r in numbers["rows"]:
        lines.append(f"{r['tau_s']:7.3f} | {r['model_d2']:.2e} | {r['measured_d2']:.2e} | "
                     f"{r['model_mse']:.2e} | {r['measured_mse']:.2e}")
    m = numbers["model"]

    def fmt(x: float | None, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    lo, hi = m["d2_slope_within"]
    taus = [r["tau_s"] for r in numbers["rows"]]
    lines.append(f"model: D2 log-log slope over tau <= {m['small_tau_max_s']:g} s: "
                 f"{m['d2_slope_small_tau']:.2f} ({'within' if m['d2_slope_ok'] else 'OUTSIDE'} "
                 f"{lo:g}-{hi:g}); D2({taus[-1]:g} s) / D2({taus[-2]:g} s) = {fmt(m['d2_saturation'])} "
                 f"(tau^2 would give {(taus[-1] / taus[-2]) ** 2:.2f}); MSE({taus[1]:g}) / MSE({taus[0]:g}) = "
                 f"{fmt(m['mse_flat'])}; MSE({taus[-1]:g}) / MSE({taus[0]:g}) = {fmt(m['mse_rise'], '.1f')}")
    for name, e in numbers["measured"].items():
        lines.append(f"measured {name}: D2 slope over its smallest taus {e['d2_slope_small_tau']:.2f}; "
                     f"D2 last/previous {e['d2_saturation']:.2f}; MSE last/first {e['mse_rise']:.2f}")
    return lines


def overlay_figures(cycles: Sequence[Cycle], measured: dict[int, tuple[np.ndarray, np.ndarray]],
                    bowties: Sequence[Path], bowtie_taus: Sequence[float], folder: Path,
                    prefix: str = "seed002") -> list[Path]:
    """``{prefix}-d2-mse.png`` (D^2 and MSE against tau, model and every experiment) and
    ``{prefix}-bowtie.png`` (the model's orbits at ``bowtie_taus`` beside the measured
    ``bowties``, both centred); returns their paths."""
    from clln.analysis.figures import _save, plt

    folder.mkdir(parents=True, exist_ok=True)
    tau = np.array([c.tau for c in cycles])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for k, (md, mm) in sorted(measured.items()):
        axes[0].loglog(md[:, 0], md[:, 1], "o", ms=3, label=f"measured exp{k}")
        axes[1].loglog(mm[:, 0], mm[:, 1], "o", ms=3, label=f"measured exp{k}")
    axes[0].loglog(tau, [c.d2 for c in cycles], "k-", label="model")
    axes[1].loglog(tau, [c.mse for c in cycles], "k-", label="model")
    axes[0].set(xlabel="tau (s)", ylabel="D^2 (V^2)")
    axes[1].set(xlabel="tau (s)", ylabel="MSE (V^2)")
    axes[0].legend(fontsize=7)
    paths = [_save(fig, folder / f"{prefix}-d2-mse.png")]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for path in bowties:
        g = read_bowtie(path)
        ax.plot(g[:, 0] - g[:, 0].mean(), g[:, 1] - g[:, 1].mean(), ".", ms=2, label=f"measured {path.stem}")
    for c in (c for c in cycles if any(np.isclose(c.tau, t) for t in bowtie_taus)):
        ax.plot(c.gates[:, 0] - c.gates[:, 0].mean(), c.gates[:, 1] - c.gates[:, 1].mean(), "-",
                label=f"model tau {c.tau:g} s")
    ax.set(xlabel="gate 1 - mean (V)", ylabel="gate 2 - mean (V)")
    ax.legend(fontsize=6)
    paths.append(_save(fig, folder / f"{prefix}-bowtie.png"))
    return paths
