"""Presets from protocols: recorded in runs, overridable, and invisible when absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clln.compose import build_experiment
from clln.controller import ProtocolError, Trainer
from clln.protocol import load_protocol, parse_protocol

GOLDEN = Path(__file__).parent / "data" / "ideal_golden.npz"
GOLDEN_STEPS = {"regression-2x2": 300, "classification-3": 100, "allostery": 200}


def train(text: str, source: str, base: Path, steps: int | None = None):
    proto = parse_protocol(text, source)
    exp = build_experiment(proto, source=source, base_dir=base, steps=steps)
    result = Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run()
    return exp, result


@pytest.mark.parametrize("name", sorted(GOLDEN_STEPS))
def test_protocols_without_imperfections_are_unchanged(name: str, protocols_dir: Path) -> None:
    """Final conductances equal those recorded before imperfection models existed.

    They matched bit for bit when the models were added; faster solver paths since
    then round differently in the last bits, so the comparison allows round-off.
    """
    path = protocols_dir / f"{name}.toml"
    text = path.read_text()
    assert "[simulator.parameters]" not in text
    exp, _ = train(text, str(path), protocols_dir, GOLDEN_STEPS[name])
    expected = np.load(GOLDEN)[name]
    assert np.allclose(exp.backend.read_edges().conductances, expected, rtol=1e-9, atol=0)


def test_no_simulator_section_is_the_ideal_preset_bit_for_bit(protocols_dir: Path) -> None:
    text = (protocols_dir / "regression-2x2.toml").read_text()
    without = text.split("[simulator]")[0]
    explicit = without + '[simulator]\npreset = "ideal"\n[simulator.parameters]\ntolerance = 0.0\n'
    a, _ = train(without, "a.toml", protocols_dir, 150)
    b, _ = train(explicit, "b.toml", protocols_dir, 150)
    assert np.array_equal(a.backend.read_edges().conductances, b.backend.read_edges().conductances)


def test_preset_parameters_are_recorded_and_overridable(protocols_dir: Path) -> None:
    text = (protocols_dir / "pot-bench-regression.toml").read_text()
    text += "\n[simulator.parameters]\nai_noise_rms = 1e-4\naveraging = 4\n"
    proto = parse_protocol(text, "p.toml")
    exp = build_experiment(proto, source="p.toml", base_dir=protocols_dir, steps=5)
    described = exp.backend.describe()["imperfections"]
    assert described["preset"] == "pot-bench"
    assert described["ai_noise_rms"] == 1e-4 and described["averaging"] == 4
    assert described["tolerance"] == 0.2 and described["r_wiper_spread"] == 25.0


def test_unknown_imperfection_parameter_names_the_key() -> None:
    text = (Path(__file__).parents[1] / "protocols" / "demo.toml").read_text()
    text += "\n[simulator.parameters]\nnoise = 1e-4\n"
    with pytest.raises(ProtocolError) as err:
        parse_protocol(text, "demo.toml")
    message = str(err.value)
    assert message.startswith("demo.toml: simulator.parameters.noise: unknown key; allowed:")
    assert "ai_noise_rms" in message and "\n" not in message


def test_bad_preset_lists_the_presets() -> None:
    text = (Path(__file__).parents[1] / "protocols" / "demo.toml").read_text()
    text = text.replace('preset = "ideal"', 'preset = "lab"')
    with pytest.raises(ProtocolError, match="'ideal', 'pot-bench', 'twin-bench', 'comparator-twin', "
                                            "'transistor-16', 'transistor-pair', 'transistor-16-insitu' "
                                            "or 'transistor-pair-insitu'"):
        parse_protocol(text, "demo.toml")


def test_pot_bench_regression_converges_to_a_floor(protocols_dir: Path) -> None:
    path = protocols_dir / "pot-bench-regression.toml"
    proto, text = load_protocol(path)
    exp, result = train(text, str(path), protocols_dir, 600)
    assert exp.backend.describe()["imperfections"]["preset"] == "pot-bench"
    assert result.final_test_error < result.initial_test_error / 30


def test_same_seed_same_noisy_run(protocols_dir: Path) -> None:
    path = protocols_dir / "pot-bench-regression.toml"
    text = path.read_text()
    a, _ = train(text, str(path), protocols_dir, 40)
    b, _ = train(text, str(path), protocols_dir, 40)
    assert np.array_equal(a.backend.read_edges().taps, b.backend.read_edges().taps)
