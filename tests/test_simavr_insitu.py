"""The compiled in-situ firmware (drivers/firmware/potbank built with INSITU=1 for the Mega
2560, protocol 1.2) under simavr, driven by the project's driver (clln.drivers.insitu)
over the harness's pty. Its analog front end is served on the harness's second pty by
the comparator-twin physics the Python emulator of the device runs on, so the compiled
loop is compared with the Python one on the same physics model."""

from __future__ import annotations

import binascii
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tool

from clln.compose import Experiment, build_experiment, resume_training, run_training
from clln.controller.insitu import InSituRecord
from clln.controller.store import RunStore
from clln.drivers.errors import DriverError, FirmwareError
from clln.drivers.insitu import VOLT_LSB, InSituBench, InSituCmd, encode_experiment
from clln.drivers.potbank import open_port
from clln.insitu import emulated_stream, insitu_experiment
from clln.protocol import parse_protocol
from clln.simulator import avr
from clln.simulator.bench import Faults

pytestmark = pytest.mark.slow  # subprocesses: left out of -m "not slow"

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "protocols" / "insitu-pot-regression.toml").read_text()
BAD_EXPERIMENT, OUT_OF_RANGE = 0x07, 0x03
RAMEND = 0x21FF  # last SRAM byte of the ATmega2560
FIRMWARE_SHARE = 2048  # PROTOCOL.md §12.2: what the firmware may use beside the 6144 bytes
CYCLES_PER_TICK = 8  # Timer1 at 16 MHz / 8


# XOR on the same lattice: complement-encoded inputs on the corners, one output per class
XOR_TASK = """[task]
kind = "classification"
dataset = "xor"
inputs = 2
encoding = "complement"
source_nodes = [0, 2, 6, 8]
ground_nodes = [4]
output_nodes = [1, 7]
classes = 2
train = 4
test = 8
input_range = [0.0, 1.0]
high_ground = 1.0
target_high = 0.5
target_low = 0.3
spread = 0.05

"""


def experiment(steps: int, task: str | None = None, **insitu: str) -> Experiment:
    """insitu-pot-regression at noise off, 4 training and 8 test samples (or another
    ``[task]``), with ``[training.insitu]`` keys replaced or added."""
    text = TEXT if task is None else re.sub(r"\[task\].*?\n\n", task, TEXT, flags=re.S)
    text = (text.replace("train = 8", "train = 4").replace("test = 40", "test = 8")
            .replace("steps = 60", f"steps = {steps}").replace("test_every = 10", "test_every = 4")
            .replace("noise_rms = 1e-3", "noise_rms = 0.0"))
    for key, value in insitu.items():
        line = f"{key} = {value}"
        text, found = re.subn(rf"^{key} = .*$", line, text, flags=re.M)
        if not found:
            text = text.replace("[training.insitu]\n", f"[training.insitu]\n{line}\n")
    return build_experiment(parse_protocol(text, "p.toml"), source="p.toml", base_dir=ROOT)


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> avr.Build:
    require_tool("simavr", *avr.TOOLS)
    require_tool(*avr.missing_tools())  # libraries and headers; nothing when all are there
    return avr.build(tmp_path_factory.mktemp("avr-insitu"), insitu=True)


class Device:
    """The simulated board (harness, front end) and the driver connected to it."""

    def __init__(self, build: avr.Build, exp: Experiment, faults: Faults | None = None,
                 **options: object) -> None:
        bench = exp.backend.physics  # type: ignore[attr-defined]
        self.sim = avr.SimavrInSitu.twin_of(exp.backend, build)  # the same parts and taps
        assert self.sim.front_end is not None
        self.physics = self.sim.front_end.physics
        port = open_port(self.sim.path)
        self.port = port if faults is None else avr.FaultyPort(port, faults)
        self.driver = InSituBench(self.port, bench.network, bench.nominal_table(),  # type: ignore[arg-type]
                                  **options)  # type: ignore[arg-type]
        self.driver.bank.reply_timeout = 0.5  # a step can take a second on a loaded machine
        self.driver.connect()

    def close(self) -> None:
        self.port.close()
        self.sim.close()


@pytest.fixture
def device_factory(firmware: avr.Build) -> Iterator:  # type: ignore[type-arg]
    made: list[Device] = []

    def make(exp: Experiment, faults: Faults | None = None, **options: object) -> Device:
        made.append(Device(firmware, exp, faults, record_timeout=0.05, **options))
        return made[-1]

    yield make
    for device in made:
        device.close()


def python_records(exp: Experiment, credit: int) -> list[InSituRecord]:
    """The whole experiment on the Python emulator of the device, over its pty."""
    ex = insitu_experiment(exp.protocol, exp.task, exp.config.steps, "p.toml")
    device, driver = emulated_stream(exp, credit=credit)
    try:
        return list(driver.run_insitu(ex, 0, ex.steps))
    finally:
        device.close()


def device_step(dev: Device) -> int:
    """The step the device is at (GET_STATE)."""
    return struct.unpack_from("<I", dev.driver.bank._exchange(InSituCmd.GET_STATE))[0]


def static_ram(build: avr.Build) -> int:
    return int(re.search(r"static RAM (\d+)", build.size).group(1))  # type: ignore[union-attr]


SCHEDULES = {
    # every sample teaches, one window per sample; 1 % of the bytes corrupted both ways
    "plain, noisy link": ({}, Faults(corrupt=0.01, seed=5)),
    # classification: hinge gating on misclassified samples, test accuracy
    "XOR classification, hinge": ({"hinge": "true", "learn_time_us": "300.0", "task": XOR_TASK}, None),
    # hinge gating, NOR, anti-clamp, an eta schedule through a 10x amplifier, a window
    # schedule
    "hinge NOR anti-clamp amplified": (
        {"hinge": "true", "margin": "0.08", "normalise": "true", "anti_clamp": "true",
         "amplifier_gain": "10.0", "eta": "[0.5, 0.5, 0.5, 2.0, 2.0, 0.75]",
         "learn_time_us": "[500.0, 500.0, 500.0, 400.0, 400.0, 400.0]"}, None),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_compiled_firmware_runs_the_loop_of_the_python_emulator(device_factory, firmware: avr.Build,
                                                                 name: str) -> None:
    """The same experiment, noise off, on the compiled firmware and on the Python emulator:
    identical taps after every step; the same samples teach; node voltages within one
    250 uV count (the firmware rounds f32 volts, the emulator f64); errors within f32
    rounding; every learning window's LEARN high time 8 CPU cycles per Timer1 tick, to
    within one tick."""
    keys, faults = SCHEDULES[name]
    steps = 6
    exp = experiment(steps, **keys)  # type: ignore[arg-type]
    ex = insitu_experiment(exp.protocol, exp.task, steps, "p.toml")
    dev = device_factory(exp, faults, credit=4)
    compiled = list(dev.driver.run_insitu(ex, 0, steps))
    emulated = python_records(exp, credit=4)
    assert [r.step for r in compiled] == list(range(steps + 1))  # every record, in order
    assert np.count_nonzero(compiled[-1].state != compiled[0].state) >= 3  # the taps moved
    windows = []
    for fw, py in zip(compiled, emulated, strict=True):
        np.testing.assert_array_equal(fw.state, py.state)
        assert fw.n_teaching == py.n_teaching
        assert fw.eta == pytest.approx(py.eta, rel=1e-6)
        assert fw.window_s == pytest.approx(py.window_s, rel=1e-6)
        assert fw.train_error == pytest.approx(py.train_error, rel=1e-5)
        assert (fw.test_error is None) == (py.test_error is None)
        if py.test_error is not None:
            assert fw.test_error == pytest.approx(py.test_error, rel=1e-5)
            assert fw.test_accuracy == py.test_accuracy
        for a, b in ((fw.free, py.free), (fw.clamped, py.clamped)):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=0, atol=VOLT_LSB * 1.001)
        windows += [round(py.window_s / 0.5e-6)] * py.n_teaching
    if "NOR" in name:
        assert len({r.window_s for r in compiled[1:]}) > 2  # NOR and the schedule did vary it
    if "hinge" in name:
        assert any(r.n_teaching < 4 for r in compiled[1:])  # hinge gating did gate
    if "XOR" in name:
        assert compiled[0].test_accuracy is not None
    # every window the front end saw: LEARN high for 8 cycles per tick, to within one tick
    cycles = np.array(dev.sim.front_end.windows)
    assert len(cycles) == len(windows) and not dev.sim.front_end.errors
    extra = cycles - CYCLES_PER_TICK * np.array(windows)
    assert np.all((extra >= 0) & (extra < CYCLES_PER_TICK)), extra
    if faults is not None:
        assert dev.driver.resends > 0  # the faults did hit
    # the stack never reached the static data, and the firmware kept to its 2048 bytes
    lowest = dev.sim.lowest_stack()
    ram = static_ram(firmware)
    assert lowest > avr.SRAM_START + ram
    assert ram - 6144 + (RAMEND - lowest) <= FIRMWARE_SHARE


def test_download_refuses_a_corrupted_or_foreign_experiment(device_factory) -> None:
    exp = experiment(4)
    ex = insitu_experiment(exp.protocol, exp.task, 4, "p.toml")
    dev = device_factory(exp)
    bank = dev.driver.bank
    assert bank.info is not None and bank.info.version == (1, 2)  # HELLO: minor 2
    assert bank.info.name == "clln in-situ controller mega2560"
    dev.driver.download(ex)  # committed: its CRC and layout check out
    blob = bytearray(encode_experiment(ex))

    def send(data: bytes, crc: int) -> None:
        bank._exchange(InSituCmd.EXP_BEGIN, struct.pack("<IH", len(data), crc))
        for offset in range(0, len(data), 64):
            bank._exchange(InSituCmd.EXP_CHUNK, struct.pack("<I", offset) + data[offset:offset + 64])
        bank._exchange(InSituCmd.EXP_COMMIT)

    good_crc = binascii.crc_hqx(bytes(blob), 0xFFFF)
    blob[60] ^= 0x10  # one bit flipped on its way, CRC of the original
    with pytest.raises(FirmwareError) as info:
        send(bytes(blob), good_crc)
    assert info.value.status == BAD_EXPERIMENT
    blob[60] ^= 0x10
    # layouts the firmware cannot run, each with a matching CRC: three sources (not what
    # this front end has), a 1 us timer (not Timer1's 0.5 us), an eta code above the divider
    head = struct.Struct("<4sBHHBBIIHffIIHH")
    fields = head.unpack_from(blob)
    eta_run = len(blob) - 8 * fields[14] - 7 * fields[13]  # the first eta run's offset
    for field, value in ((4, 3), (11, 1000), (None, 200)):
        bad = bytearray(blob)
        if field is None:
            struct.pack_into("<H", bad, eta_run + 4, value)
        else:
            head.pack_into(bad, 0, *(value if k == field else v for k, v in enumerate(fields)))
        with pytest.raises(FirmwareError) as info:
            send(bytes(bad), binascii.crc_hqx(bytes(bad), 0xFFFF))
        assert info.value.status == BAD_EXPERIMENT, field
    with pytest.raises(FirmwareError) as info:  # nothing committed: no run
        bank._exchange(InSituCmd.RUN, struct.pack("<IIH", 0, 4, 4))
    assert info.value.status == OUT_OF_RANGE
    dev.driver.download(ex)
    with pytest.raises(FirmwareError) as info:  # 40 records of 218 bytes do not fit beside it
        bank._exchange(InSituCmd.RUN, struct.pack("<IIH", 0, 4, 40))
    assert info.value.status == OUT_OF_RANGE
    taps = np.full(dev.physics.network.n_edges, 100.0, dtype="<f4")  # the pots have 100 taps
    with pytest.raises(FirmwareError) as info:
        bank._exchange(InSituCmd.SET_STATE, struct.pack("<I", 0) + taps.tobytes())
    assert info.value.status == OUT_OF_RANGE
    with pytest.raises(FirmwareError) as info:  # beyond the 6144 bytes of §12.2
        bank._exchange(InSituCmd.EXP_BEGIN, struct.pack("<IH", 6145, 0))
    assert info.value.status == OUT_OF_RANGE
    with pytest.raises(FirmwareError) as info:  # a chunk past the announced size
        bank._exchange(InSituCmd.EXP_BEGIN, struct.pack("<IH", 100, 0))
        bank._exchange(InSituCmd.EXP_CHUNK, struct.pack("<I", 90) + bytes(11))
    assert info.value.status == OUT_OF_RANGE
    assert dev.sim.front_end.windows == []  # nothing ever learned


def test_flow_control_resume_from_get_state_and_park(device_factory) -> None:
    """Credit 2: the device runs at most two records ahead of the host. The host stops
    after record 3 and checkpoints; GET_STATE reports the step the device ran ahead to and
    its taps; SET_STATE and RUN continue from the checkpoint to the uninterrupted result.
    PARK ends a run: learning disarmed, the host pauses; so does the watchdog."""
    steps = 8
    exp = experiment(steps)
    ex = insitu_experiment(exp.protocol, exp.task, steps, "p.toml")
    dev = device_factory(exp, credit=2)
    uninterrupted = [r.state for r in exp.backend.run_insitu(ex, 0, steps)]
    stream = dev.driver.run_insitu(ex, 0, steps)
    first = [next(stream) for _ in range(4)]
    stream.close()  # the host stops after record 3
    deadline = time.monotonic() + 30.0
    while device_step(dev) < 5 and time.monotonic() < deadline:
        # it holds 0..3, so the device may reach record 5; an ACK lost is sent again
        dev.driver._send(InSituCmd.ACK, struct.pack("<I", 4))
        time.sleep(0.2)
    time.sleep(0.5)
    assert device_step(dev) == 3 + 2  # ran ahead exactly as far as the credit allows
    np.testing.assert_array_equal(dev.driver.read_state(), dev.physics.taps)  # the front end's taps
    np.testing.assert_array_equal(dev.physics.taps, uninterrupted[5])
    np.testing.assert_array_equal(first[3].state, uninterrupted[3])
    dev.driver.load_state_dict({"state": first[3].state})  # the host's checkpoint
    rest = list(dev.driver.run_insitu(ex, 3, steps - 3))
    assert [r.step for r in rest] == list(range(4, steps + 1))
    for rec in rest:
        np.testing.assert_array_equal(rec.state, uninterrupted[rec.step])
    # PARK mid-run: the device stops, learning is disarmed, the host gives up and pauses
    dev.driver.load_state_dict({"state": first[3].state})
    stream = dev.driver.run_insitu(ex, 3, steps - 3)
    assert next(stream).step == 4
    releases = dev.sim.front_end.releases
    dev.driver.retries = 5
    dev.driver.safe()
    with pytest.raises(DriverError, match="did not arrive after 5 requests; the run is paused"):
        list(stream)
    assert dev.sim.front_end.releases > releases
    assert device_step(dev) < steps  # the run ended before its last step
    # the watchdog ends a run whose host went silent, as PARK does
    dev.driver.retries = 200
    dev.driver.bank.set_watchdog(300)
    dev.driver.load_state_dict({"state": first[3].state})
    stream = dev.driver.run_insitu(ex, 3, steps - 3)
    assert next(stream).step == 4
    releases = dev.sim.front_end.releases
    deadline = time.monotonic() + 30.0
    while dev.sim.front_end.releases == releases and time.monotonic() < deadline:
        time.sleep(0.1)  # the host says nothing
    status = dev.driver.bank.status()
    assert status.watchdog_tripped and status.parked
    assert device_step(dev) <= 4 + 2  # it stopped within its credit, before the last step


def test_a_run_on_the_compiled_firmware_is_recorded_and_resumed_like_any_run(device_factory,
                                                                            tmp_path: Path) -> None:
    """The trainer's in-situ mode on the compiled firmware: every streamed step lands in
    the run store; stopped after step 3 and resumed, the run ends with the taps of an
    uninterrupted run on the simulator."""
    steps = 6
    exp = experiment(steps)
    ex = insitu_experiment(exp.protocol, exp.task, steps, "p.toml")
    dev = device_factory(exp, credit=3)
    expected = list(experiment(steps).backend.run_insitu(ex, 0, steps))[-1].state
    calls = {"n": 0}

    def stop_at_3() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    streamed = replace(exp, backend=dev.driver)
    with RunStore(tmp_path) as store:
        part = run_training(streamed, store, protocol_text=TEXT, protocol_path="p.toml",
                            should_stop=stop_at_3)
        assert (part.status, part.result.steps_done) == ("interrupted", 3)
        done = resume_training(streamed, store, part.run_id)
        hist = store.history(part.run_id)
        run = store.run(part.run_id)
    assert done.status == "completed"
    assert list(hist.steps) == list(range(1, steps + 1))
    assert run["backend"]["kind"] == "insitu-serial"
    assert "clln in-situ controller mega2560" in run["backend"]["firmware"]
    np.testing.assert_array_equal(run["final_taps"], expected)
    np.testing.assert_array_equal(dev.physics.taps, expected)  # what the front end's edges hold
