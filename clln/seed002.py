"""Seed 002's limit-cycle experiment as a file (``protocols/seed002/limit-cycles.toml``):
the twin transistor pair that learns in place, two tasks alternated with period tau, the
tau list and the parts; read, validated, run and overlaid on the seed's measurements
(:mod:`clln.analysis.seed002`). ``clln analyze FILE`` and ``benchmarks/seed002.py`` run it.

Not a training protocol: nothing is trained toward a target and no run is recorded, so
the goldens of ``benchmarks/goldens.py`` (``protocols/*.toml``, ``protocols/bias``) do
not cover it; its numbers are in ``analysis.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import model_validator

from clln.analysis.seed002 import (
    Cycle,
    limit_cycle,
    overlay_figures,
    overlay_numbers,
    pair_physics,
)
from clln.controller.errors import ProtocolError
from clln.protocol import EdgeCircuitSpec, Seed
from clln.simulator.insitu_transistor import EdgeCircuitParams
from clln.tomlfile import (
    Float,
    Int,
    PositiveInt,
    Str,
    StrictModel,
    read_file,
    read_toml,
    validate,
)

FORMAT_VERSION = 1
KIND = "limit-cycles"
MEASURED_BYTES_MAX = 1 << 20  # a measured csv above 1 MiB is not seed 002's
Task = tuple[Float, Float]


class PairSpec(StrictModel):
    """``[network]``: seed 002's small network (two transistors beside a fixed resistor)."""

    preset: Literal["transistor-pair"] = "transistor-pair"
    v_t: Float = 0.7            # V, threshold of both devices (nominal)
    resistor_ohm: Float = 500.0  # the fixed resistor joining input and output
    gates: tuple[Float, Float] = (3.0, 3.0)  # V, initial gate voltages

    @model_validator(mode="after")
    def _ranges(self) -> PairSpec:
        if not 0.0 < self.v_t < 5.0:
            raise ValueError(f"network.v_t: {self.v_t!r} V is not allowed; allowed: 0 < v_t < 5")
        if not 1.0 <= self.resistor_ohm <= 1e9:
            raise ValueError(f"network.resistor_ohm: {self.resistor_ohm!r} is not allowed; allowed: 1 to 1e9 ohm")
        if not all(0.0 <= g <= 5.0 for g in self.gates):
            raise ValueError(f"network.gates: {list(self.gates)!r} is not allowed; allowed: 0 to 5 V each")
        return self


class TasksSpec(StrictModel):
    """``[tasks]``: the high and low sources and the (input, target output) of the two
    alternated tasks, V."""

    high: Float = 0.4351
    low: Float = 0.0181
    alpha: Task = (0.4351, 0.31)
    beta: Task = (0.0181, 0.14)

    @model_validator(mode="after")
    def _ranges(self) -> TasksSpec:
        for key, values in (("high", (self.high,)), ("low", (self.low,)), ("alpha", self.alpha),
                            ("beta", self.beta)):
            if not all(0.0 <= v <= 5.0 for v in values):
                raise ValueError(f"tasks.{key}: {values!r} is not allowed; allowed: 0 to 5 V")
        return self


class CycleSpec(StrictModel):
    """``[cycle]``: the periods and the rig's step timing."""

    taus_s: list[Float]
    step_rate_hz: Float = 1000.0
    learn_fraction: Float = 0.5
    burn_in_s: Float = 0.3
    eta: Float = 0.5

    @model_validator(mode="after")
    def _ranges(self) -> CycleSpec:
        if not 1.0 <= self.step_rate_hz <= 1e6:
            raise ValueError(f"cycle.step_rate_hz: {self.step_rate_hz!r} is not allowed; allowed: 1 to 1e6")
        if not 0.0 < self.learn_fraction <= 1.0:
            raise ValueError(f"cycle.learn_fraction: {self.learn_fraction!r} is not allowed; allowed: 0 < f <= 1")
        if not 0.0 <= self.burn_in_s <= 100.0:
            raise ValueError(f"cycle.burn_in_s: {self.burn_in_s!r} is not allowed; allowed: 0 to 100 s")
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(f"cycle.eta: {self.eta!r} is not allowed; allowed: 0 < eta <= 1 "
                             "(the pair has no nudge amplifier)")
        taus = self.taus_s
        if len(taus) < 2 or any(b <= a for a, b in zip(taus, taus[1:])):
            raise ValueError(f"cycle.taus_s: {taus!r} is not allowed; allowed: at least 2 periods, increasing")
        for tau in taus:
            steps = tau * self.step_rate_hz
            if not 2 <= steps <= 1e6 or abs(steps / 2 - round(steps / 2)) > 1e-6:
                raise ValueError(
                    f"cycle.taus_s: {tau!r} s holds {steps:g} steps at {self.step_rate_hz:g} steps/s; "
                    "allowed: an even number of steps, 2 to 1e6 (each task half the period)")
        return self


class MeasuredSpec(StrictModel):
    """``[measured]``: where seed 002's measurements are and how they are compared."""

    data: Str = "../../benchmarks/data/seed002"  # relative to the experiment file
    experiments: list[PositiveInt] = [1, 2, 3]
    reference: PositiveInt = 1          # the experiment tabulated beside the model
    small_tau_max_s: Float = 0.02       # the model's D^2 slope is fitted up to this tau
    small_fraction: Float = 0.3         # each experiment's slope: its smallest taus
    bowtie_taus_s: list[Float] = []     # model orbits drawn beside the measured bowties

    @model_validator(mode="after")
    def _ranges(self) -> MeasuredSpec:
        if not self.experiments:
            raise ValueError("measured.experiments: empty; allowed: experiment numbers, e.g. [1, 2, 3]")
        if self.reference not in self.experiments:
            raise ValueError(f"measured.reference: {self.reference} is not allowed; allowed: one of "
                             f"measured.experiments {self.experiments}")
        if not 0.0 < self.small_fraction <= 1.0:
            raise ValueError(f"measured.small_fraction: {self.small_fraction!r} is not allowed; allowed: 0 < f <= 1")
        return self


class LimitCycleSpec(StrictModel):
    """A whole seed 002 limit-cycle file."""

    format: Int
    kind: Literal["limit-cycles"]
    name: Str
    description: Str = ""
    seed: Seed = 0  # the bench seed: the pair's drawn parts
    network: PairSpec = PairSpec()
    tasks: TasksSpec = TasksSpec()
    cycle: CycleSpec
    edge_circuit: EdgeCircuitSpec | None = None  # type: ignore[valid-type]
    measured: MeasuredSpec = MeasuredSpec()

    @model_validator(mode="after")
    def _across(self) -> LimitCycleSpec:
        small = [t for t in self.cycle.taus_s if t <= self.measured.small_tau_max_s]
        if len(small) < 2:
            raise ValueError(f"measured.small_tau_max_s: {self.measured.small_tau_max_s!r} s leaves "
                             f"{len(small)} of cycle.taus_s for the slope; allowed: at least 2 taus at or below it")
        missing = [t for t in self.measured.bowtie_taus_s if not np.isclose(self.cycle.taus_s, t).any()]
        if missing:
            raise ValueError(f"measured.bowtie_taus_s: {missing!r} not in cycle.taus_s; allowed: "
                             f"{self.cycle.taus_s}")
        return self

    @property
    def params(self) -> EdgeCircuitParams:
        overrides = {} if self.edge_circuit is None else self.edge_circuit.model_dump(exclude_none=True)
        return EdgeCircuitParams(**{**asdict(EdgeCircuitParams()), **overrides})


def is_limit_cycle_file(path: Path) -> bool:
    """True for an existing ``.toml`` file (a seed 002 experiment is named as a file,
    a run by its id)."""
    return path.suffix == ".toml" and path.is_file()


def parse_limit_cycles(text: str, source: str) -> LimitCycleSpec:
    """Validate a limit-cycle file's text; ProtocolError naming ``source`` and the key."""
    data = read_toml(text, source, FORMAT_VERSION, KIND)
    if data.get("kind") != KIND:
        raise ProtocolError(f"{source}: kind: {data.get('kind')!r} is not allowed; allowed: '{KIND}' "
                            "(training protocols run with clln train)")
    return validate(LimitCycleSpec, data, source)


class LimitCycleExperiment:
    """A validated limit-cycle file with its measurements read (nothing run yet)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.spec = parse_limit_cycles(read_file(self.path, "seed 002 experiment"), str(self.path))
        m = self.spec.measured
        folder = (self.path.parent / m.data).resolve()
        self.data_dir = folder
        self.measured = {k: (self._table(f"measured-DG2-exp{k}.csv"), self._table(f"measured-MSE-exp{k}.csv"))
                         for k in m.experiments}
        self.bowties = sorted(folder.glob(f"bowtie-exp{m.reference}-*.csv"))

    def _table(self, name: str) -> np.ndarray:
        path = self.data_dir / name
        where = f"{self.path}: measured.data"
        if not path.is_file():
            raise ProtocolError(f"{where}: {name} not found in {self.data_dir}; allowed: a folder with "
                                "seed 002's measured-DG2-expK.csv and measured-MSE-expK.csv")
        if path.stat().st_size > MEASURED_BYTES_MAX:
            raise ProtocolError(f"{where}: {name} is larger than {MEASURED_BYTES_MAX} bytes")
        try:
            table = np.loadtxt(path, delimiter=",", ndmin=2)
        except ValueError as exc:
            raise ProtocolError(f"{where}: {name} is not a two-column csv of numbers ({exc})") from None
        if table.shape[1] != 2 or table.shape[0] < 3 or not np.all(np.isfinite(table)) or np.any(table <= 0):
            raise ProtocolError(f"{where}: {name} must hold at least 3 rows of positive tau (s), value")
        return table

    def cycles(self, progress: Callable[[Cycle, float], None] | None = None) -> list[Cycle]:
        """One steady limit cycle per tau, in order; ``progress(cycle, cpu_seconds)``
        after each."""
        s = self.spec
        found = []
        for tau in s.cycle.taus_s:
            t0 = time.process_time()
            physics = pair_physics(s.params, s.network.gates, bench_seed=s.seed, v_t=s.network.v_t,
                                   resistor_ohm=s.network.resistor_ohm)
            cycle = limit_cycle(physics, tau, step_rate=s.cycle.step_rate_hz, eta=s.cycle.eta,
                                burn_in_s=s.cycle.burn_in_s, learn_fraction=s.cycle.learn_fraction,
                                tasks=(s.tasks.alpha, s.tasks.beta), rails=(s.tasks.high, s.tasks.low))
            found.append(cycle)
            if progress is not None:
                progress(cycle, time.process_time() - t0)
        return found

    def overlay(self, cycles: list[Cycle]) -> dict[str, Any]:
        m = self.spec.measured
        return overlay_numbers(cycles, self.measured, reference=m.reference,
                               small_tau_max_s=m.small_tau_max_s, small_fraction=m.small_fraction)

    def write(self, cycles: list[Cycle], folder: Path,
              json_name: str | None = "analysis.json") -> tuple[dict[str, Any], list[Path], Path | None]:
        """Numbers, figures and (unless ``json_name`` is None) the numbers' JSON in ``folder``."""
        numbers = self.overlay(cycles)
        numbers = {"experiment": self.spec.name, "file": str(self.path), "seed": self.spec.seed,
                   "parameters": asdict(self.spec.params), **numbers}
        figures = overlay_figures(cycles, self.measured, self.bowties, self.spec.measured.bowtie_taus_s,
                                  folder)
        if json_name is None:
            return numbers, figures, None
        path = folder / json_name
        path.write_text(json.dumps(numbers, indent=2))
        return numbers, figures, path


def progress_line(cycle: Cycle, seconds: float) -> str:
    return (f"tau {cycle.tau:6.3f} s  steps/cycle {len(cycle.gates):5d}  D2 {cycle.d2:.3e} V^2  "
            f"MSE {cycle.mse:.3e} V^2  ({seconds:.1f} s CPU)")

