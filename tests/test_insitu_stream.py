"""The streaming in-situ bench (PROTOCOL.md §12): the driver against the emulated device
on a pty, which runs the same loop on the same simulated comparator twin bench."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clln.compose import Experiment, build_experiment, resume_training, run_training
from clln.controller.store import RunStore
from clln.drivers.errors import DriverError, FirmwareError, PotBankTimeout
from clln.drivers.insitu import VOLT_LSB, ExperimentTooLarge, InSituBench, InSituCmd
from clln.drivers.potbank import open_port
from clln.insitu import (
    TRANSISTOR_STREAM,
    RecordFile,
    StreamSession,
    emulated_stream,
    insitu_experiment,
)
from clln.protocol import parse_protocol
from clln.resume import rebuild
from clln.simulator.bench import Faults

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "protocols" / "insitu-pot-regression.toml").read_text()
OUT_OF_RANGE, BAD_LENGTH = 0x03, 0x02


def experiment(train: int = 8, steps: int = 20, noise: float = 0.0) -> Experiment:
    text = (TEXT.replace("train = 8", f"train = {train}").replace("steps = 60", f"steps = {steps}")
            .replace("noise_rms = 1e-3", f"noise_rms = {noise}"))
    return build_experiment(parse_protocol(text, "p.toml"), source="p.toml", base_dir=ROOT)


def emulated(exp: Experiment, faults: Faults | None = None, **options: object):  # noqa: ANN201
    return emulated_stream(exp, faults, **options)


def both(exp: Experiment, faults: Faults | None = None, **options: object):  # noqa: ANN201
    """(simulated records, streamed records, driver) of the whole experiment, both from the
    same start."""
    ex = insitu_experiment(exp.protocol, exp.task, exp.config.steps, "p.toml")
    device, driver = emulated(exp, faults, **options)
    try:
        streamed = list(driver.run_insitu(ex, 0, ex.steps))
    finally:
        device.close()
    simulated = list(exp.backend.run_insitu(ex, 0, ex.steps))
    assert [r.step for r in streamed] == list(range(ex.steps + 1))  # every record, in order
    return simulated, streamed, driver


def test_simulator_and_emulated_stream_give_identical_trajectories() -> None:
    simulated, streamed, _ = both(experiment(noise=0.0))
    moved = simulated[-1].state - simulated[0].state
    assert np.count_nonzero(moved) >= 3  # the taps really moved
    for sim, emu in zip(simulated, streamed, strict=True):
        np.testing.assert_array_equal(emu.state, sim.state)  # tracked taps, exactly
        np.testing.assert_allclose(emu.free, sim.free, atol=VOLT_LSB / 2 + 1e-9)
        np.testing.assert_allclose(emu.clamped, sim.clamped, atol=VOLT_LSB / 2 + 1e-9)
        assert emu.n_teaching == sim.n_teaching
        assert (emu.test_error is None) == (sim.test_error is None)


@pytest.mark.slow
def test_no_record_is_lost_under_corrupted_bytes() -> None:
    simulated, streamed, driver = both(experiment(train=2, steps=60), Faults(corrupt=0.01, seed=4),
                                       credit=16)
    assert driver.resends > 0  # the faults did hit
    for sim, emu in zip(simulated, streamed, strict=True):
        np.testing.assert_array_equal(emu.state, np.float32(sim.state))


def test_experiment_too_large_for_the_device_is_refused_before_sending() -> None:
    exp = experiment(train=30)
    ex = insitu_experiment(exp.protocol, exp.task, exp.config.steps, "p.toml")
    device, driver = emulated(exp)
    try:
        before = device.firmware.frames_ok
        with pytest.raises(ExperimentTooLarge) as info:
            next(iter(driver.run_insitu(ex, 0, ex.steps)))
        assert device.firmware.frames_ok == before  # nothing was sent
        assert device.firmware.experiment is None
    finally:
        device.close()
    message = str(info.value)
    assert "\n" not in message and "training.insitu" in message and "at most 512" in message
    small = experiment(train=12, steps=2)
    ex = insitu_experiment(small.protocol, small.task, small.config.steps, "p.toml")
    device, driver = emulated(small, credit=40)
    try:
        with pytest.raises(ExperimentTooLarge, match=r"allowed: 6144 \(ATmega2560: 8192 bytes SRAM"):
            driver.run_insitu(ex, 0, ex.steps)
    finally:
        device.close()


def test_streamed_run_is_recorded_like_any_run(tmp_path: Path) -> None:
    exp = experiment(steps=12, noise=1e-3)
    device, driver = emulated(exp)
    try:
        streamed = replace(exp, backend=driver)
        with RunStore(tmp_path) as store:
            outcome = run_training(streamed, store, protocol_text=TEXT, protocol_path="p.toml")
            hist = store.history(outcome.run_id)
            run = store.run(outcome.run_id)
    finally:
        device.close()
    assert outcome.status == "completed"
    assert list(hist.steps) == list(range(1, 13))
    assert run["backend"]["kind"] == "insitu-serial"
    # the final taps the store kept are those the device's edges hold
    np.testing.assert_array_equal(run["final_taps"], device.firmware.physics.taps)
    assert np.isfinite(hist.test_error).all() and len(hist.test_error) >= 2


def test_park_ends_the_run_and_the_host_pauses() -> None:
    exp = experiment(train=2, steps=40)
    ex = insitu_experiment(exp.protocol, exp.task, exp.config.steps, "p.toml")
    device, driver = emulated(exp, credit=2, retries=5)
    try:
        stream = driver.run_insitu(ex, 0, ex.steps)
        assert [next(stream).step for _ in range(3)] == [0, 1, 2]
        driver.safe()  # PARK: learning off, the run ends
        with pytest.raises(DriverError, match="did not arrive after 5 requests; the run is paused"):
            list(stream)
        assert device.firmware.step < ex.steps
    finally:
        device.close()


def test_streamed_run_resumes_from_its_checkpoint_after_the_device_ran_ahead(tmp_path: Path) -> None:
    """Stopped at step 8 while the device ran ahead (credit 4), then resumed: SET_STATE puts
    the device back at the checkpoint and the run ends where an uninterrupted one ends."""
    reference = experiment(steps=20)
    ex = insitu_experiment(reference.protocol, reference.task, 20, "p.toml")
    expected = [r.state for r in experiment(steps=20).backend.run_insitu(ex, 0, 20)]
    device, driver = emulated(reference, credit=4)
    calls = {"n": 0}

    def stop_at_8() -> bool:
        calls["n"] += 1
        return calls["n"] >= 8

    try:
        streamed = replace(reference, backend=driver)
        with RunStore(tmp_path) as store:
            part = run_training(streamed, store, protocol_text=TEXT, protocol_path="p.toml",
                                should_stop=stop_at_8)
            assert (part.status, part.result.steps_done) == ("interrupted", 8)
            assert device.firmware.step > 8  # it ran ahead
            done = resume_training(streamed, store, part.run_id)
            final = store.run(part.run_id)["final_taps"]
    finally:
        device.close()
    assert done.status == "completed"
    np.testing.assert_array_equal(final, expected[-1])


# -- the twin transistor bench through the stream ---------------------------------------

TRANSISTOR = ROOT / "protocols" / "insitu-transistor-regression.toml"


def transistor(steps: int, noise: float = 0.0) -> tuple[Experiment, str]:
    """insitu-transistor-regression (8 training samples, 4x4 periodic lattice) cut to
    ``steps``; readout noise ``noise`` V rms (0: off, as the protocol ships)."""
    text = TRANSISTOR.read_text().replace("steps = 60", f"steps = {steps}")
    if noise:
        text += f"noise_rms = {noise}\n"  # the file ends in [simulator.edge_circuit]
    return build_experiment(parse_protocol(text, "t.toml"), source="t.toml", base_dir=ROOT), text


def test_transistor_stream_gives_the_simulators_gate_trajectory_bit_for_bit() -> None:
    """The same protocol on the simulator and through the emulated device (float64 gates,
    records in STEP_PART frames) over a line corrupting 1 % of the bytes from the
    handshake on: every step's gate voltages identical to the last bit, no record lost;
    the state read back over the same line after the run (the device may still be
    answering the stream's last RESENDs) is the device's, bit for bit."""
    exp, _ = transistor(steps=3)
    ex = insitu_experiment(exp.protocol, exp.task, 3, "t.toml")
    device, driver = emulated(exp, Faults(corrupt=0.01, seed=5))
    try:
        streamed = list(driver.run_insitu(ex, 0, ex.steps))
        read_back = driver.read_state()
        on_device = device.firmware.physics.state_dict()
    finally:
        device.close()
    simulated = list(exp.backend.run_insitu(ex, 0, ex.steps))
    assert [r.step for r in streamed] == [0, 1, 2, 3]
    assert driver.resends > 0  # the corruption did hit
    assert np.max(np.abs(simulated[-1].state - simulated[0].state)) > 1e-3  # the gates moved
    for sim, emu in zip(simulated, streamed, strict=True):
        assert emu.state.dtype == np.float64
        assert emu.state.tobytes() == sim.state.tobytes(), sim.step
        np.testing.assert_allclose(emu.free, sim.free, atol=VOLT_LSB / 2 + 1e-9)
        assert emu.n_teaching == sim.n_teaching == (8 if sim.step else 0)
    assert on_device["gates"].tobytes() == exp.backend.physics.state_dict()["gates"].tobytes()
    assert read_back.tobytes() == on_device["gates"][0].tobytes()


def test_wide_state_read_in_slices_equals_the_whole_read() -> None:
    """A gate bench's f64 state read 8 edges per GET_STATE (``0x08, first, count``) is
    the one-frame read (``0x08``) bit for bit, after the gates moved; a slice of no edge
    or past the last edge is refused, and so is a malformed one."""
    exp, _ = transistor(steps=1)
    ex = insitu_experiment(exp.protocol, exp.task, 1, "t.toml")
    device, driver = emulated(exp)
    try:
        list(driver.run_insitu(ex, 0, 1))
        bank, m = driver.bank, exp.backend.network.n_edges
        whole = bank._exchange(InSituCmd.GET_STATE, b"\x08")
        sliced = driver.read_state()
        assert sliced.dtype == np.float64 and sliced.tobytes() == whole[4:]
        assert whole[4:] == device.firmware.physics.read_state().astype("<f8").tobytes()
        assert struct.unpack_from("<I", whole)[0] == 1
        body = bank._exchange(InSituCmd.GET_STATE, bytes([0x08, m - 1, 1]))  # the last edge alone
        assert body == whole[:4] + whole[-8:]
        for payload, status in ((bytes([0x08, 0, 0]), OUT_OF_RANGE), (bytes([0x08, m - 7, 8]), OUT_OF_RANGE),
                                (bytes([0x08, m, 1]), OUT_OF_RANGE), (bytes([0x08, 0]), BAD_LENGTH),
                                (bytes([0x04, 0, 8]), BAD_LENGTH)):
            with pytest.raises(FirmwareError) as info:
                bank._exchange(InSituCmd.GET_STATE, payload)
            assert info.value.status == status, payload
    finally:
        device.close()


NOISY_HANDSHAKES = 20


def test_handshakes_over_a_noisy_line_read_the_gates_in_slices() -> None:
    """20 handshakes (HELLO, then the f64 state) with the emulated gate bench over a line
    corrupting 1 % of the bytes both ways, from a fixed fault seed: the state in one
    266-byte frame (about one try in 15 intact) fails several of them within its 21
    attempts; read in 8-edge slices (about one try in two intact), none."""
    exp, _ = transistor(steps=1)
    device, driver = emulated(exp)
    expected = device.firmware.physics.read_state().astype("<f8").tobytes()
    bank = driver.bank
    failed = {"whole": 0, "sliced": 0}
    try:
        device.link.faults = Faults(corrupt=0.01, seed=11)
        for _ in range(NOISY_HANDSHAKES):  # the host before the sliced form
            try:
                bank.connect()
                body = bank._exchange(InSituCmd.GET_STATE, b"\x08")
                assert body[4:] == expected
            except PotBankTimeout:
                failed["whole"] += 1
        device.link.faults = Faults(corrupt=0.01, seed=12)
        for _ in range(NOISY_HANDSHAKES):
            try:
                driver.connect()
                assert driver.state_dict()["state"].tobytes() == expected
            except PotBankTimeout:
                failed["sliced"] += 1
    finally:
        device.close()
    print(f"failed handshakes of {NOISY_HANDSHAKES}: {failed}, retries {bank.retries_used}")
    assert failed["whole"] >= 2
    assert failed["sliced"] == 0


def _same_bench_state(a: dict, b: dict) -> None:
    """Two transistor benches' state_dicts agree bit for bit: gates of both twins, the
    readout-noise generator, the clock and the solver warm starts."""
    assert a["gates"].tobytes() == b["gates"].tobytes()
    assert a["noise"] == b["noise"] and a["time_s"] == b["time_s"]
    assert len(a["warm"]) == len(b["warm"])
    for x, y in zip(a["warm"], b["warm"], strict=True):
        assert (x["twin"], x["clamped"]) == (y["twin"], y["clamped"])
        assert x["sources"].tobytes() == y["sources"].tobytes()
        assert x["voltages"].tobytes() == y["voltages"].tobytes()


@pytest.mark.slow
def test_transistor_run_stopped_and_resumed_ends_bit_identical(tmp_path: Path) -> None:
    """On the simulator, readout noise on: stopped after step 2 of 4 and resumed from its
    checkpoint in a freshly built experiment, the run ends where the uninterrupted one
    ends, its bench state included."""
    full_exp, text = transistor(steps=4, noise=1e-4)
    calls = {"n": 0}

    def stop_at_2() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2

    with RunStore(tmp_path) as store:
        full = run_training(full_exp, store, protocol_text=text, protocol_path="t.toml")
        part = run_training(transistor(steps=4, noise=1e-4)[0], store, protocol_text=text,
                            protocol_path="t.toml", should_stop=stop_at_2)
        assert (part.status, part.result.steps_done) == ("interrupted", 2)
        resumed = transistor(steps=4, noise=1e-4)[0]
        done = resume_training(resumed, store, part.run_id)
        assert done.status == "completed"
        ends = [np.asarray(store.run(r)["final_state"]) for r in (full.run_id, part.run_id)]
        errors = [store.history(r).error for r in (full.run_id, part.run_id)]
    assert ends[0].tobytes() == ends[1].tobytes()
    assert errors[0].tobytes() == errors[1].tobytes()
    _same_bench_state(resumed.backend.state_dict(), full_exp.backend.state_dict())


@pytest.mark.slow
def test_transistor_stream_resumes_bit_identical_after_the_device_ran_ahead(tmp_path: Path) -> None:
    """Through the stream, readout noise on: the host stops after step 2 of 6 while the
    device runs ahead (credit 4) and goes away; a new host connects to the device and
    resumes from the run's checkpoint (SET_STATE with float64 gates puts the device back
    at step 2, its physics whole). The run ends bit-identical to the uninterrupted
    simulator run."""
    reference, text = transistor(steps=6, noise=1e-4)
    ex = insitu_experiment(reference.protocol, reference.task, 6, "t.toml")
    device, driver = emulated(reference)
    uninterrupted = transistor(steps=6, noise=1e-4)[0]
    expected = [r.state for r in uninterrupted.backend.run_insitu(ex, 0, 6)]
    calls = {"n": 0}

    def stop_at_2() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2

    try:
        with RunStore(tmp_path) as store:
            part = run_training(replace(reference, backend=driver), store, protocol_text=text,
                                protocol_path="t.toml", should_stop=stop_at_2)
            assert (part.status, part.result.steps_done) == ("interrupted", 2)
            assert device.firmware.step > 2  # it ran ahead
            driver.close()
            host = InSituBench(open_port(device.port), driver.network, driver.edges, **TRANSISTOR_STREAM)
            host.connect()
            done = resume_training(replace(reference, backend=host), store, part.run_id)
            final = np.asarray(store.run(part.run_id)["final_state"])
            kept = RecordFile(store.run_dir(part.run_id) / "insitu.sqlite").read()
        on_device = device.firmware.physics.state_dict()
    finally:
        device.close()
    assert done.status == "completed"
    assert final.tobytes() == expected[-1].tobytes()
    assert [r.step for r in kept] == list(range(7))
    for rec, want in zip(kept, expected, strict=True):
        assert rec.state.tobytes() == want.tobytes(), rec.step
    _same_bench_state(on_device, uninterrupted.backend.state_dict())


@pytest.mark.slow
def test_clln_train_emulate_streams_an_in_situ_protocol_and_resumes(tmp_path: Path) -> None:
    """``clln train PROTOCOL --emulate`` (no bench file) runs an in-situ protocol through
    the emulated streaming device and ends where the simulator ends, bit for bit; a host
    protocol with --emulate alone exits 2 with one line. ``clln resume`` of such a run
    (rebuilt in process here) meets a fresh device, put back by SET_STATE alone: it ends
    at the uninterrupted gates to round-off (the solver starts cold)."""
    exp, text = transistor(steps=3)
    path = tmp_path / "t.toml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run([sys.executable, "-m", "clln.cli", "train", str(path), "--emulate", "--out",
                           str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    ex = insitu_experiment(exp.protocol, exp.task, 3, "t.toml")
    expected = [r.state for r in exp.backend.run_insitu(ex, 0, 3)]
    with RunStore(tmp_path / "runs") as store:
        run = store.run("latest")
        assert run["backend"]["kind"] == "insitu-serial" and run["info"]["insitu_stream"]
        assert np.asarray(run["final_state"]).tobytes() == expected[-1].tobytes()
        session = StreamSession(transistor(steps=3)[0], "t.toml")
        try:
            part = run_training(session.experiment, store, protocol_text=text, protocol_path=str(path),
                                should_stop=lambda: True, extra_info=session.info)
        finally:
            session.close()
        assert (part.status, part.result.steps_done) == ("interrupted", 1)
        again, stream, _ = rebuild(store, part.run_id)
        try:
            resumed = resume_training(again, store, part.run_id)
        finally:
            stream.close()  # type: ignore[union-attr]
        assert resumed.status == "completed"
        np.testing.assert_allclose(store.run(part.run_id)["final_state"], expected[-1], rtol=0, atol=1e-12)
    bad = subprocess.run([sys.executable, "-m", "clln.cli", "train", str(ROOT / "protocols" / "demo.toml"),
                          "--emulate", "--out", str(tmp_path / "runs2")], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--emulate needs --bench" in bad.stderr
    big = tmp_path / "big.toml"  # 30 samples: a record of 2,202 bytes, more than 32 parts
    big.write_text(text.replace("train = 8", "train = 30"))
    bad = subprocess.run([sys.executable, "-m", "clln.cli", "train", str(big), "--emulate", "--out",
                          str(tmp_path / "runs3")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "big.toml: training.insitu: a step record of 30 samples" in bad.stderr
    assert not (tmp_path / "runs3").exists()  # refused before a run was recorded
