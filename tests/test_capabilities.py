"""Optional backend capabilities are declared Protocols, asked for by type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from wrapping import SeamOnly

from clln.compose import build_experiment
from clln.controller import NetworkBackend, Trainer
from clln.controller.backend import Measurement
from clln.controller.capabilities import (
    CapabilityError,
    Checkpointable,
    KeepsAlive,
    LearnsInPlace,
    MeasuresTwin,
    require,
    supports,
    twin_bench,
)
from clln.controller.checkpoint import trainer_state
from clln.drivers.hardware import HardwareBackend
from clln.protocol import parse_protocol

PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"


def experiment(extra: str = ""):  # type: ignore[no-untyped-def]
    text = (PROTOCOLS / "demo.toml").read_text() + extra
    return build_experiment(parse_protocol(text, "demo.toml"), source="demo.toml", base_dir=PROTOCOLS, steps=3)


def test_the_simulator_declares_its_capabilities() -> None:
    backend = experiment().backend
    assert isinstance(backend, NetworkBackend)
    assert supports(backend, Checkpointable) and supports(backend, MeasuresTwin)
    assert not supports(backend, KeepsAlive) and not supports(backend, LearnsInPlace)
    assert twin_bench(backend) is None  # declares twin measurement, but has one network
    twin = experiment("parameters = { twin = true }\n").backend
    assert twin_bench(twin) is twin



def test_the_bench_declares_a_watchdog_to_keep_fed_and_its_state() -> None:
    """HardwareBackend's members cover KeepsAlive and Checkpointable (checked on the class:
    an instance needs a bench)."""
    for capability in (KeepsAlive, Checkpointable):
        members = {m for m in vars(capability) if not m.startswith("_")}
        assert members and members <= set(dir(HardwareBackend)), capability


def test_require_names_what_needs_the_capability() -> None:
    plain = SeamOnly(experiment().backend)
    with pytest.raises(CapabilityError, match=r"^a checkpoint needs a bench that declares Checkpointable; "
                                              r"this backend \(SeamOnly\) does not$"):
        require(plain, Checkpointable, what="a checkpoint")
    assert require(plain.inner, Checkpointable, what="a checkpoint") is plain.inner


def test_a_backend_without_declared_state_is_not_checkpointed_silently() -> None:
    exp = experiment()
    trainer = Trainer(SeamOnly(exp.backend), exp.task, exp.rule, exp.config, exp.batch_rng)
    with pytest.raises(CapabilityError, match="Checkpointable"):
        trainer_state(trainer)
    state = trainer_state(Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng))
    assert state["backend"].keys() == exp.backend.state_dict().keys()


def test_a_twin_bench_behind_the_bare_seam_is_measured_twin_by_twin() -> None:
    """Twin measurement is used only when declared: the same twin simulator trains with
    measure_twin directly, and with separate free and clamped measurements behind a
    wrapper that declares only the seam (the trainer does not probe for it)."""
    calls: list[str] = []
    twin = experiment("parameters = { twin = true }\n")

    class Counting(SeamOnly):
        def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> Measurement:
            calls.append("measure")
            return super().measure(sources, clamps)

    trainer = Trainer(Counting(twin.backend), twin.task, twin.rule, twin.config, twin.batch_rng)
    trainer.step(1)
    assert calls == ["measure", "measure"]  # free, then clamped
    assert Trainer(twin.backend, twin.task, twin.rule, twin.config, twin.batch_rng)._pair is twin.backend
