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
from clln.controller.insitu import InSituRecord, run_loop
from clln.controller.store import RunStore
from clln.drivers.errors import DriverError, FirmwareError
from clln.drivers.insitu import (
    VOLT_LSB,
    ExperimentTooLarge,
    InSituBench,
    InSituCmd,
    encode_experiment,
    record_size,
)
from clln.drivers.potbank import open_port
from clln.drivers.wire import FrameReader
from clln.insitu import TRANSISTOR_STREAM, emulated_stream, insitu_experiment
from clln.protocol import parse_protocol
from clln.simulator import avr
from clln.simulator.bench import Faults
from clln.simulator.insitu_transistor import TransistorTwinPhysics

pytestmark = pytest.mark.slow  # subprocesses: left out of -m "not slow"

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "protocols" / "insitu-pot-regression.toml").read_text()
BAD_EXPERIMENT, OUT_OF_RANGE, BAD_LENGTH = 0x07, 0x03, 0x02
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
    for wide in (b"\x08", bytes([0x08, 0, 8])):  # taps travel as f32 only, whole or sliced
        with pytest.raises(FirmwareError) as info:
            dev.driver.bank._exchange(InSituCmd.GET_STATE, wide)
        assert info.value.status == OUT_OF_RANGE
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


def stopped_and_resumed(exp: Experiment, driver: InSituBench, store_dir: Path, text: str,
                        stop_after: int) -> dict:  # type: ignore[type-arg]
    """The experiment through the trainer on ``driver``: stopped after ``stop_after``
    steps, then resumed to its end; the run store's record of the run (asserted: every
    step in its history, the in-situ serial backend)."""
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= stop_after

    streamed = replace(exp, backend=driver)
    with RunStore(store_dir) as store:
        part = run_training(streamed, store, protocol_text=text, protocol_path="p.toml", should_stop=stop)
        assert (part.status, part.result.steps_done) == ("interrupted", stop_after)
        done = resume_training(streamed, store, part.run_id)
        hist = store.history(part.run_id)
        run = store.run(part.run_id)
    assert done.status == "completed"
    assert list(hist.steps) == list(range(1, exp.config.steps + 1))
    assert run["backend"]["kind"] == "insitu-serial"
    assert "clln in-situ controller mega2560" in run["backend"]["firmware"]
    return run


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
    run = stopped_and_resumed(exp, dev.driver, tmp_path, TEXT, 3)
    np.testing.assert_array_equal(run["final_taps"], expected)
    np.testing.assert_array_equal(dev.physics.taps, expected)  # what the front end's edges hold


# -- a gate-voltage bench: transistor-16 learning in place (flag bits 4 and 5, §12.6) ------

TRANSISTOR_TEXT = (ROOT / "protocols" / "insitu-transistor-regression.toml").read_text()
CLOCK_HZ = 16_000_000  # the simulated Mega 2560
# Gate volts, compiled firmware against the Python loop on the same physics:
# - with the AVR's float32 volts and nudges modelled, only where Newton started differs (the
#   firmware settles one sample at a time, the loop a batch): solves converged to 1e-10 V
#   steps agree far below this;
NEWTON_GATE_TOL_V = 1e-12
# - against the loop's float64: a clamp differs by float32 rounding (2^-24 of volts below
#   5 V, a few roundings: under 1e-6 V), and a gate moves less than its clamp does
F32_GATE_TOL_V = 1e-6
LEARN_EXTRA_CYCLES = 5  # LEARN stays high 8 ticks + 5 cycles (PROTOCOL.md §12.7)


def transistor_experiment(steps: int, eta: str = "1.0") -> Experiment:
    """insitu-transistor-regression (noise off: its parts' default) cut to ``steps`` steps,
    3 training and 4 test samples, a test pass every 2 steps (and another ``eta``)."""
    text = (TRANSISTOR_TEXT.replace("train = 8", "train = 3").replace("test = 40", "test = 4")
            .replace("steps = 60", f"steps = {steps}").replace("test_every = 10", "test_every = 2")
            .replace("snapshot_every = 10", "snapshot_every = 1").replace("eta = 1.0", f"eta = {eta}"))
    return build_experiment(parse_protocol(text, "t.toml"), source="t.toml", base_dir=ROOT)


class Recorder:
    """An open serial port that keeps every byte read from it."""

    def __init__(self, port: object) -> None:
        self._port = port
        self.received = bytearray()

    def read(self, size: int = 1) -> bytes:
        data = self._port.read(size)  # type: ignore[attr-defined]
        self.received += data
        return data

    def packets(self) -> list:  # type: ignore[type-arg]
        """Every intact packet received."""
        return FrameReader().feed(bytes(self.received))

    def __getattr__(self, name: str) -> object:
        return getattr(self._port, name)

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("_port", "received"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._port, name, value)


class GateDevice(Device):
    """The compiled firmware on a front end serving the transistor bench's physics (a
    replica of the experiment's), through the driver with the transistor stream's
    settings (float64 states, STEP_PART records)."""

    def __init__(self, build: avr.Build, exp: Experiment, faults: Faults | None = None) -> None:
        backend = exp.backend
        self.sim = avr.SimavrInSitu.twin_of(backend, build)
        assert self.sim.front_end is not None
        self.physics = self.sim.front_end.physics
        self.wire = Recorder(open_port(self.sim.path))  # what the host receives, before any fault
        self.port = self.wire if faults is None else avr.FaultyPort(self.wire, faults)  # type: ignore[arg-type]
        self.driver = InSituBench(self.port, self.physics.network, backend.edges,  # type: ignore[attr-defined]
                                  **TRANSISTOR_STREAM)
        self.driver.bank.reply_timeout = 0.5
        self.driver.connect()


class AvrLoop:
    """The transistor physics as the compiled loop drives it, for the Python loop
    (float64) to run on: node voltages reach the loop as float32 (the front end's link);
    the clamps (and their mirror) are the AVR's float32 nudge ``out + eta (y - out)`` of
    those; every learning window lasts what the harness measured for the LEARN line
    (``cycles / 16 MHz``), in order. Steps without an amplifier only. With ``float32``
    False, only the windows are the measured ones (volts and nudges in float64)."""

    def __init__(self, physics: TransistorTwinPhysics, ex: object, cycles: list[int],
                 float32: bool = True) -> None:
        self.physics = physics
        self.float32 = float32
        self.ex = ex
        self.cycles = list(cycles)
        self.step = -1  # counted by the training set's free passes
        self._out: dict[bytes, np.ndarray] = {}  # float32 outputs of a sample's free measurement
        self._clamps: tuple[np.ndarray, np.ndarray] | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.physics, name)

    def _nudge(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The float32 clamps and mirrored clamps the AVR computes for the sample."""
        ex = self.ex
        i = int(np.flatnonzero((ex.train_sources == sources[0]).all(axis=1))[0])  # type: ignore[attr-defined]
        out, y = self._out[sources.tobytes()], ex.train_targets[i].astype(np.float32)  # type: ignore[attr-defined]
        eta = np.float32(ex.eta(self.step))  # type: ignore[attr-defined]  # code / levels, rounded once
        nudge = eta * (y - out)
        return out + nudge, out - nudge

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> np.ndarray:
        sources = np.atleast_2d(sources)
        if not self.float32:
            return self.physics.measure(sources, clamps)
        if clamps is None:
            if sources.shape == self.ex.train_sources.shape and np.array_equal(sources, self.ex.train_sources):  # type: ignore[attr-defined]
                self.step += 1
            v = self.physics.measure(sources).astype(np.float32)
            outs = list(self.physics.output_nodes)
            for row, volts in zip(sources, v, strict=True):
                self._out[row[None].tobytes()] = volts[outs]
            return v.astype(float)
        self._clamps = self._nudge(sources)
        return self.physics.measure(sources, self._clamps[0][None]).astype(np.float32).astype(float)

    def learn(self, sources: np.ndarray, clamps: np.ndarray, duration_s: float,
              free_clamps: np.ndarray | None = None) -> None:
        cycles = self.cycles.pop(0)
        assert 0 <= cycles - CYCLES_PER_TICK * round(duration_s / 0.5e-6) < CYCLES_PER_TICK
        if not self.float32:
            self.physics.learn(sources, clamps, cycles / CLOCK_HZ, free_clamps)
            return
        assert self._clamps is not None
        held, mirror = self._clamps
        self.physics.learn(sources, held, cycles / CLOCK_HZ, None if free_clamps is None else mirror)


@pytest.fixture
def gate_factory(firmware: avr.Build) -> Iterator:  # type: ignore[type-arg]
    made: list[GateDevice] = []

    def make(exp: Experiment, faults: Faults | None = None) -> GateDevice:
        made.append(GateDevice(firmware, exp, faults))
        return made[-1]

    yield make
    for device in made:
        device.close()


GATE_RUNS = {
    # the shipped protocol's nudge (eta 1: the clamps are the targets)
    "shipped eta": ("1.0", None),
    # a nudge the AVR computes in float32; 1 % of the bytes corrupted both ways
    "eta 0.5, noisy link": ("0.5", Faults(corrupt=0.01, seed=7)),
}


@pytest.mark.parametrize("name", list(GATE_RUNS))
def test_compiled_firmware_learns_transistor_gates_in_place(gate_factory, firmware: avr.Build,
                                                            name: str) -> None:
    """insitu-transistor-regression (3 steps, 3 training samples, noise off) on the compiled
    firmware, its records as float64 gate volts in STEP_PART frames, against the Python
    loop on the same physics: every record in order; gate volts within float32 rounding of
    the node voltages and nudges the AVR computes with (the loop's float64 at the LEARN
    high times the harness measured), and within the 5 cycles LEARN stays high beyond each
    window (the emulator's nominal windows); the f64 state relayed bit for bit."""
    eta, faults = GATE_RUNS[name]
    steps = 3
    exp = transistor_experiment(steps, eta)
    ex = insitu_experiment(exp.protocol, exp.task, steps, "t.toml")
    start = exp.backend.physics.replica()  # type: ignore[attr-defined]
    dev = gate_factory(exp, faults)
    compiled = list(dev.driver.run_insitu(ex, 0, steps))
    assert [r.step for r in compiled] == list(range(steps + 1))  # every record, in order
    # on the wire: every record as STEP_PART frames of at most 64 record bytes (bit 5)
    size = record_size(ex.n_train, 16, 32, wide=True)  # 16 nodes, 32 edges, f64 gates
    parts = {}
    for packet in dev.wire.packets():
        assert packet.cmd != InSituCmd.STEP
        if packet.cmd == InSituCmd.STEP_PART:
            record, part, count = struct.unpack_from("<IBB", packet.payload)
            assert len(packet.payload) - 6 <= 64 and count == -(-size // 64)
            parts.setdefault(record, set()).add(part)
    assert parts == {r: set(range(-(-size // 64))) for r in range(steps + 1)}
    if faults is not None:
        assert dev.driver.resends > 0  # the faults did hit
    cycles = list(dev.sim.front_end.windows)
    assert len(cycles) == sum(r.n_teaching for r in compiled) == 3 * steps
    assert not dev.sim.front_end.errors
    # GET_STATE relays the front end's f64 gates bit for bit (no f32 on the way), read in
    # 8-edge slices over the same line (the handshake read them so too)
    np.testing.assert_array_equal(dev.driver.read_state(), dev.physics.read_state())
    # the Python loop on the same parts: with the AVR's float32 volts and nudges at the
    # measured windows; float64 at the measured windows; the emulator (nominal windows)
    avr_loop = list(run_loop(AvrLoop(start.replica(), ex, cycles), ex, 0, steps))  # type: ignore[arg-type]
    measured = list(run_loop(AvrLoop(start.replica(), ex, cycles, float32=False), ex, 0, steps))  # type: ignore[arg-type]
    emulated = python_records(exp, credit=4)

    def worst(records: list[InSituRecord]) -> float:
        return max(float(np.abs(fw.state - py.state).max()) for fw, py in zip(compiled, records, strict=True))

    moved = np.abs(compiled[-1].state - compiled[0].state).max()
    print(f"{name}: gates moved up to {moved:.3e} V; compiled vs the loop with the AVR's float32: "
          f"{worst(avr_loop):.3e} V, vs float64 at the measured windows: {worst(measured):.3e} V, "
          f"vs the emulator (nominal windows): {worst(emulated):.3e} V")
    assert moved > 0.1
    assert worst(avr_loop) <= NEWTON_GATE_TOL_V
    assert worst(measured) <= F32_GATE_TOL_V
    # the emulator's windows are nominal: each real one is 5 cycles longer, so a gate moves
    # up to 5 / (8 ticks) more per window (twice that allowed, for the drive's curvature)
    ticks = round(compiled[1].window_s / 0.5e-6)
    assert worst(emulated) <= 2 * moved * LEARN_EXTRA_CYCLES / (CYCLES_PER_TICK * ticks)
    # the stack (f64 replies built in the receive buffer) kept off the static data, and the
    # firmware to its 2048 bytes
    lowest, ram = dev.sim.lowest_stack(), static_ram(firmware)
    print(f"{name}: static RAM {ram} B, stack down {RAMEND - lowest} B, "
          f"firmware share {ram - 6144 + RAMEND - lowest} B, {firmware.size}")
    assert lowest > avr.SRAM_START + ram
    assert ram - 6144 + (RAMEND - lowest) <= FIRMWARE_SHARE
    for fw, py in zip(compiled, avr_loop, strict=True):
        assert fw.n_teaching == py.n_teaching and fw.window_s == pytest.approx(py.window_s, rel=1e-6)
        assert fw.train_error == pytest.approx(py.train_error, rel=1e-5)
        np.testing.assert_allclose(np.nan_to_num(fw.free), np.nan_to_num(py.free), rtol=0, atol=VOLT_LSB * 1.001)


def test_gate_state_relay_refusals_and_resume(gate_factory) -> None:
    """A gate bench's f64 state through the compiled firmware: SET_STATE charges the front
    end's gates to the volts sent, bit for bit, and GET_STATE reads them back so; volts
    beyond the rails, the f32 forms, an experiment without flag bit 4 or with an undefined
    flag, and records that do not fit beside the experiment are refused; a run resumed
    from a record's state continues the uninterrupted run (within the Newton solves' warm
    starts, which a SET_STATE of gate volts does not carry)."""
    steps = 3
    exp = transistor_experiment(steps)
    ex = insitu_experiment(exp.protocol, exp.task, steps, "t.toml")
    dev = gate_factory(exp)
    bank, m = dev.driver.bank, dev.physics.network.n_edges
    whole = list(dev.driver.run_insitu(ex, 0, steps))
    gates = np.random.default_rng(3).uniform(0.5, 4.5, m)  # every bit of a float64 in use
    bank._exchange(InSituCmd.SET_STATE, struct.pack("<I", 7) + gates.astype("<f8").tobytes())
    np.testing.assert_array_equal(dev.physics.gates, np.tile(gates, (2, 1)))  # both twins
    body = bank._exchange(InSituCmd.GET_STATE, b"\x08")
    assert struct.unpack_from("<I", body)[0] == 7 and body[4:] == gates.astype("<f8").tobytes()
    # in 8-edge slices (the driver's read), and one edge past the front end's first 8
    assert dev.driver.read_state().tobytes() == body[4:]
    assert bank._exchange(InSituCmd.GET_STATE, bytes([0x08, 9, 3])) == body[:4] + body[4 + 72:4 + 96]
    refused = [
        (InSituCmd.GET_STATE, bytes([0x08, 0, 0]), OUT_OF_RANGE),  # no edge
        (InSituCmd.GET_STATE, bytes([0x08, m - 7, 8]), OUT_OF_RANGE),  # past the last edge
        (InSituCmd.GET_STATE, bytes([0x08, 255, 255]), OUT_OF_RANGE),
        (InSituCmd.GET_STATE, bytes([0x08, 0]), BAD_LENGTH),
        (InSituCmd.GET_STATE, bytes([0x04, 0, 8]), BAD_LENGTH),
        (InSituCmd.SET_STATE, struct.pack("<I", 0) + np.full(m, 5.5).astype("<f8").tobytes(), OUT_OF_RANGE),
        (InSituCmd.SET_STATE, struct.pack("<I", 0) + gates.astype("<f4").tobytes(), BAD_LENGTH),
        (InSituCmd.GET_STATE, b"", OUT_OF_RANGE),
        (InSituCmd.GET_STATE, b"\x04", OUT_OF_RANGE),
    ]
    for cmd, payload, expected in refused:
        with pytest.raises(FirmwareError) as info:
            bank._exchange(cmd, payload)
        assert info.value.status == expected, (cmd, payload[:8])
    np.testing.assert_array_equal(dev.physics.read_state(), gates)  # nothing refused was set

    def commit(blob: bytes) -> None:
        bank._exchange(InSituCmd.EXP_BEGIN, struct.pack("<IH", len(blob), binascii.crc_hqx(blob, 0xFFFF)))
        for offset in range(0, len(blob), 64):
            bank._exchange(InSituCmd.EXP_CHUNK, struct.pack("<I", offset) + blob[offset:offset + 64])
        bank._exchange(InSituCmd.EXP_COMMIT)

    for blob in (encode_experiment(ex, wide=False, split=True),  # f32 states of gate volts
                 bytes([*encode_experiment(ex, wide=True, split=True)[:4], 0x70])
                 + encode_experiment(ex, wide=True, split=True)[5:]):  # bit 6
        with pytest.raises(FirmwareError) as info:
            commit(blob)
        assert info.value.status == BAD_EXPERIMENT
    # the memory model: the host's check and the firmware's agree on the last credit that fits
    commit(encode_experiment(ex, wide=True, split=True))
    bank._exchange(InSituCmd.SET_STATE, struct.pack("<I", 0) + whole[0].state.astype("<f8").tobytes())
    record = record_size(ex.n_train, 16, m, wide=True)
    credit = (6144 - len(encode_experiment(ex, wide=True, split=True))) // record
    dev.driver.credit = credit + 1
    with pytest.raises(ExperimentTooLarge, match="device memory"):  # one record more than fits
        dev.driver.fits(ex)
    with pytest.raises(FirmwareError) as info:
        bank._exchange(InSituCmd.RUN, struct.pack("<IIH", 0, 1, credit + 1))
    assert info.value.status == OUT_OF_RANGE
    dev.driver.credit = credit
    dev.driver.fits(ex)
    bank._exchange(InSituCmd.RUN, struct.pack("<IIH", 0, 1, credit))  # waits for an ACK
    dev.driver.credit = TRANSISTOR_STREAM["credit"]
    # resume from record 1's state
    dev.driver.load_state_dict({"state": whole[1].state})
    rest = list(dev.driver.run_insitu(ex, 1, steps - 1))
    assert [r.step for r in rest] == [2, 3]
    for rec in rest:
        np.testing.assert_allclose(rec.state, whole[rec.step].state, rtol=0, atol=1e-9)


def test_a_transistor_run_on_the_compiled_firmware_is_recorded_and_resumed(gate_factory,
                                                                           tmp_path: Path) -> None:
    """The trainer's in-situ mode on the compiled firmware with gate volts: every streamed
    step lands in the run store; stopped after step 2 and resumed (SET_STATE of the f64
    checkpoint), the run ends with the gates of an uninterrupted run on the simulator
    within the AVR's float32 and the 4-5 extra cycles of every window."""
    steps = 4
    exp = transistor_experiment(steps)
    ex = insitu_experiment(exp.protocol, exp.task, steps, "t.toml")
    dev = gate_factory(exp)
    expected = list(transistor_experiment(steps).backend.run_insitu(ex, 0, steps))  # type: ignore[attr-defined]
    stopped_and_resumed(exp, dev.driver, tmp_path, TRANSISTOR_TEXT, 2)
    moved = np.abs(expected[-1].state - expected[0].state).max()
    window_cycles = CYCLES_PER_TICK * round(expected[1].window_s / 0.5e-6)
    bound = 2 * moved * LEARN_EXTRA_CYCLES / window_cycles
    np.testing.assert_allclose(dev.physics.read_state(), expected[-1].state, rtol=0, atol=bound)
    np.testing.assert_array_equal(dev.driver.read_state(), dev.physics.read_state())
