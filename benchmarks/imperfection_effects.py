"""Each imperfection's effect on the 2x2 regression, against the ideal simulator.

Trains ``protocols/regression-2x2.toml`` (continuous edges, coupled rule) and
``protocols/pot-bench-regression.toml`` (potentiometer edges, stepped rule) with one
imperfection model switched on at a time, at its docs/hardware.md default, then with whole
presets, and prints a Markdown table of the final test error (median of the last
quarter of the test evaluations) and its ratio to the ideal run of the same family.

Usage: python benchmarks/imperfection_effects.py [--steps N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from clln.compose import build_experiment
from clln.controller import Trainer
from clln.protocol import parse_protocol
from clln.simulator.imperfections import PRESETS

PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"
POT = PRESETS["pot-bench"]

CONTINUOUS: list[tuple[str, str, dict[str, Any]]] = [
    ("ideal", "ideal", {}),
    ("edge tolerance +-20 %", "ideal", {"tolerance": POT["tolerance"]}),
    ("thermal drift (100 ppm/K, 0.5 K, 60 s period)", "ideal",
     {"tempco": POT["tempco"], "drift_kelvin": 0.5, "drift_period": 60.0}),
    ("AI noise 244 uV, 16-sample average", "ideal", {"ai_noise_rms": POT["ai_noise_rms"], "averaging": 16}),
    ("AI noise 244 uV, no averaging", "ideal", {"ai_noise_rms": POT["ai_noise_rms"], "averaging": 1}),
    ("AI gain 75 ppm + offset 20 ppm of range", "ideal",
     {"ai_gain_error": POT["ai_gain_error"], "ai_offset_error": POT["ai_offset_error"]}),
    ("16-bit AI and AO quantization", "ideal", {"ai_bits": 16, "ao_bits": 16}),
    ("multiplexer settling (10 us, 100 pF)", "ideal",
     {"mux_settle_time": POT["mux_settle_time"], "ai_capacitance": POT["ai_capacitance"]}),
    ("AO gain + offset", "ideal", {"ao_gain_error": POT["ao_gain_error"], "ao_offset_error": POT["ao_offset_error"]}),
    ("source output impedance 1 ohm", "ideal", {"source_impedance": POT["source_impedance"]}),
    ("twin mismatch (+-20 % twins)", "ideal", {"twin": True, "tolerance": POT["tolerance"]}),
    ("learning bias b_j, rms 1e-6 V^2", "ideal", {"learning_bias": 1e-6}),
    ("pot-bench preset (all of the above but twins and bias)", "pot-bench", {}),
    ("twin-bench preset", "twin-bench", {}),
]
STEPPED: list[tuple[str, str, dict[str, Any]]] = [
    ("ideal potentiometers (nominal taps)", "ideal", {}),
    ("R_AB tolerance +-20 %", "ideal", {"tolerance": POT["tolerance"]}),
    ("wiper resistance 75 +- 25 ohm", "ideal", {"r_wiper_spread": POT["r_wiper_spread"]}),
    ("tap nonlinearity +-1 LSB", "ideal", {"inl_lsb": POT["inl_lsb"]}),
    ("AI noise 244 uV, 16-sample average", "ideal", {"ai_noise_rms": POT["ai_noise_rms"], "averaging": 16}),
    ("pot-bench preset", "pot-bench", {}),
]


def final_error(base_text: str, preset: str, params: dict[str, Any], steps: int | None,
                seed: int) -> float:
    text = base_text.split("[simulator]")[0] + f'[simulator]\npreset = "{preset}"\n'
    if params:
        text += "[simulator.parameters]\n" + "".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}\n" for k, v in params.items())
    proto = parse_protocol(text, "bench")
    exp = build_experiment(proto, source="bench", base_dir=PROTOCOLS, steps=steps, seed=seed)
    errors: list[float] = []
    Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run(
        [lambda r: errors.append(r.test_error) if r.test_error is not None else None])
    tail = np.array(errors[-max(3, len(errors) // 4):])
    return float(np.median(tail))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps per run")
    parser.add_argument("--seeds", type=int, default=5, help="protocol seeds per row (median)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"| imperfection (one at a time, docs/hardware.md defaults) | edges, rule "
          f"| final test MSE (V^2), median of {args.seeds} seeds | rms output error | vs ideal |")
    print("| --- | --- | --- | --- | --- |")
    for family, name, rows in (("continuous, coupled", "regression-2x2", CONTINUOUS),
                               ("potentiometer, stepped", "pot-bench-regression", STEPPED)):
        text = (PROTOCOLS / f"{name}.toml").read_text()
        ideal = None
        for label, preset, params in rows:
            err = float(np.median([final_error(text, preset, params, args.steps, seed)
                                   for seed in range(1, args.seeds + 1)]))
            ideal = err if ideal is None else ideal
            ratio = f"{err / ideal:.3g}x" if ideal > 1e-20 else "(ideal is at round-off)"
            print(f"| {label} | {family} | {err:.3g} | {np.sqrt(err) * 1e3:.3g} mV | {ratio} |",
                  flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
