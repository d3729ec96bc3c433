"""The bench stack end to end on the emulated bench: conformance, equivalence with the
simulator, limits, faults, SIGTERM, and the check command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conformance import BackendConformance

from clln.benchfile import load_bench, parse_bench
from clln.benchrun import bench_experiment, open_bench
from clln.controller import LimitError, Trainer
from clln.protocol import parse_protocol
from clln.simulator.bench import Faults

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "protocols" / "benches" / "example-16.toml"
DEMO = ROOT / "protocols" / "demo.toml"


class TestEmulatedBench(BackendConformance):
    volt_tolerance = 3e-3

    @pytest.fixture
    def backend(self) -> Iterator[object]:
        bench, text = load_bench(BENCH)
        session = open_bench(bench, text, target="emulate", initial_taps=np.full(16, 64))
        try:
            yield session.backend
        finally:
            session.close()


def train_on(target: str, steps: int, text: str | None = None, faults: Faults | None = None,
             after_step: object = None, bench_text: str | None = None) -> tuple[np.ndarray, list[float], object]:
    proto = parse_protocol(text or DEMO.read_text(), "demo.toml")
    btext = bench_text or BENCH.read_text()
    bench = parse_bench(btext, "bench")
    exp, session = bench_experiment(proto, bench, btext, source="demo.toml", bench_source="bench",
                                    target=target, steps=steps, faults=faults)
    errors: list[float] = []
    callbacks = [lambda r: errors.append(r.error)]
    if after_step is not None:
        callbacks.append(lambda r: after_step(session))
    try:
        Trainer(exp.backend, exp.task, exp.rule, exp.config, exp.batch_rng).run(callbacks)
        return exp.backend.read_edges().taps, errors, session
    finally:
        session.close()


def test_emulated_run_reproduces_the_simulated_one() -> None:
    """Same bench model and seed, noise on: the same taps after every step."""
    taps_sim, err_sim, _ = train_on("simulate", 60)
    taps_emu, err_emu, session = train_on("emulate", 60)
    assert np.array_equal(taps_sim, taps_emu)
    assert err_sim == err_emu
    assert session.emulator.daq.acquisitions > 120  # two per step plus the tests


def test_noise_off_runs_are_identical_too() -> None:
    quiet = BENCH.read_text().replace("seed = 1\n", "seed = 1\n[emulator.parameters]\nai_noise_rms = 0.0\n", 1)
    assert parse_bench(quiet, "bench").emulator.overrides == {"ai_noise_rms": 0.0}
    taps_sim, err_sim, _ = train_on("simulate", 40, bench_text=quiet)
    taps_emu, err_emu, _ = train_on("emulate", 40, bench_text=quiet)
    assert np.array_equal(taps_sim, taps_emu) and err_sim == err_emu


@pytest.mark.slow
def test_every_edge_at_its_commanded_tap_with_a_faulty_link() -> None:
    checked = []

    def verify(session: object) -> None:
        backend = session.backend
        assert np.array_equal(backend.potbank.get_all()[backend.chain], backend.read_edges().taps)
        assert np.array_equal(session.emulator.firmware.taps[backend.chain], backend.read_edges().taps)
        checked.append(1)

    text = DEMO.read_text()
    taps, _, session = train_on("emulate", 40, text, Faults(drop=0.005, corrupt=0.005, seed=2), verify)
    assert len(checked) == 40
    assert session.emulator.firmware.crc_errors > 0


def test_voltages_beyond_the_limits_are_refused_before_any_port_opens() -> None:
    text = DEMO.read_text().replace("input_range = [0.0, 1.0]", "input_range = [0.0, 2.5]")
    proto = parse_protocol(text, "hot.toml")
    bench, btext = load_bench(BENCH)
    with pytest.raises(LimitError, match="hot.toml on bench .*max_node_voltage = 2 V; nothing was sent"):
        bench_experiment(proto, bench, btext, source="hot.toml", bench_source="bench", target="emulate")


def test_a_measurement_beyond_the_limits_sends_nothing() -> None:
    bench, text = load_bench(BENCH)
    session = open_bench(bench, text, target="emulate", initial_taps=np.full(16, 0))
    try:
        log = session.emulator.log
        before = (len(log.of("ao")), len(log.of("serial-in")))
        with pytest.raises(LimitError, match="terminal window -0.3 ... 5.3 V"):
            session.backend.measure(np.array([[1.9, -1.9]]))  # within 2 V, but below the MCP4131's VSS
        with pytest.raises(LimitError, match="AO channel ao0 source 5.3 mA into its node's 3 edges"):
            session.backend.measure(np.array([[1.9, 0.0]]))  # 1.9 V into 3 x 1075 ohm at tap 0
        assert (len(log.of("ao")), len(log.of("serial-in"))) == before
    finally:
        session.close()


def cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "clln.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, **kw)


@pytest.mark.slow
def test_cli_refuses_a_hot_protocol_with_one_line_and_no_traffic(tmp_path: Path) -> None:
    hot = tmp_path / "hot.toml"
    hot.write_text(DEMO.read_text().replace("input_range = [0.0, 1.0]", "input_range = [0.0, 2.5]"))
    log = tmp_path / "traffic.jsonl"
    result = cli("train", str(hot), "--bench", str(BENCH), "--emulate", "--traffic-log", str(log),
                 "--out", str(tmp_path / "runs"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "max_node_voltage" in result.stderr and "Traceback" not in result.stderr
    assert not log.exists() or all(json.loads(x)["channel"] not in ("serial-in", "ao")
                                   for x in log.read_text().splitlines())


@pytest.mark.slow
def test_sigterm_leaves_the_outputs_at_zero_and_the_run_interrupted(tmp_path: Path) -> None:
    log = tmp_path / "traffic.jsonl"
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clln.cli", "train", str(DEMO), "--bench", str(BENCH), "--emulate",
         "--steps", "100000", "--traffic-log", str(log), "--out", str(runs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and sum(1 for x in log.read_text().splitlines() if '"ao"' in x) > 20:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "marked interrupted" in err and "Traceback" not in err
    ao = [json.loads(x) for x in log.read_text().splitlines() if json.loads(x)["channel"] == "ao"]
    assert ao[-1]["levels"] == [0.0] * 4 and ao[-1]["clamps"] is False
    shown = json.loads(cli("show", "latest", "--json", "--out", str(runs)).stdout)
    assert shown["status"] == "interrupted"


@pytest.mark.slow
def test_check_reads_every_channel_and_edge() -> None:
    result = cli("check", str(BENCH), "--emulate")
    assert result.returncode == 0, result.stderr
    assert "check passed: 9 AI channels, 16 edges and the chain order match the bench file" in result.stdout
    assert "clln bench emulator" in result.stdout and "protocol 1.1" in result.stdout


@pytest.mark.slow
def test_check_of_a_missing_port_is_one_line() -> None:
    result = cli("check", str(BENCH))
    assert result.returncode == 2
    assert result.stderr.startswith("error: serial port '/dev/ttyACM0'") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(("old", "new", "key"), [
    ('chip = "MCP4131"', 'chip = "MCP9999"', "pots.chip"),
    ("r_ab = 10000.0", "r_ab = 12000.0", "pots"),
    ("max_edge_current = 2.5e-3", "max_edge_current = -1.0", "limits.max_edge_current"),
    ('terminal_config = "RSE"', 'terminal_config = "SE"', "daq.terminal_config"),
    ("chain = 15", "chain = 14", "two edges share a chain position"),
    ("chain = 15", "chain = 428405", "edges.15.chain"),
    ("max_edge_current = 2.5e-3", "max_edge_current = 65536.0", "exceeds the MCP4131's rating"),
    ("max_node_voltage = 2.0", "max_node_voltage = 12.0", "daq.ai_range: no AI range covers limits.max_node_voltage = 12 V"),
    ("nodes = [2, 4]", "nodes = [2, 4]\nresistance = 5", "edges.15.resistance: unknown key; allowed: chain, nodes"),
    ('port = "/dev/ttyACM0"', 'port = "spy:///dev/ttyACM0?file=x"', "serial.port: must be a device path"),
    ('port = "/dev/ttyACM0"', 'port = "rfc2217://host:7000"', "serial.port: must be a device path"),
    ('port = "/dev/ttyACM0"', 'port = "ttyACM0"', "serial.port: must be an absolute device path"),
    ("baudrate = 115200", "baudrate = 1000000000000", "serial.baudrate: 1000000000000 is not one of 300,"),
    ("baudrate = 115200", "baudrate = 0", "serial.baudrate: 0 is not one of"),
    ("boot_timeout = 2.5", "boot_timeout = 31.0", "serial.boot_timeout"),
    ("reset_on_open = true", "reset_on_open = 1", "serial.reset_on_open"),
    ("chain = 15", "chain = 255", "edges.15.chain: Input should be less than or equal to 254"),
    ("watchdog_ms = 2000", "watchdog_ms = 50", "serial.watchdog_ms: 50 ms is too short"),
    # the DAQ set-up (drivers.daq.plan_daq) and the pots' supply
    ("mains_frequency = 50", "mains_frequency = 55", "daq.mains_frequency: 55 is not allowed; allowed: 50 or 60"),
    ("mains_frequency = 50", "", "daq.mains_frequency: required key is missing"),
    ('clamp_switch = "port0/line0"', 'clamp_switch = "port0/line0"\nclamps_driven_during_free = true',
     "contradicts daq.clamp_switch"),
    ('clamp_switch = "port0/line0"', 'clamp_switch = "port0/lines"', "daq.clamp_switch: 'port0/lines' is not"),
    ("sample_rate = 10000.0", "sample_rate = 20000.0", "daq.sample_rate: 20000 S/s leaves"),
    ("sample_rate = 10000.0", "sample_rate = 9999.0", "daq.sample_rate: 9999 S/s has no whole number"),
    ('device = "Dev1"', 'device = "Dev1"\nai_range = 1.0', "daq.ai_range: 1 V is not allowed; allowed: 2, 5, 10"),
    ("r_series = 1000.0", "r_series = 1000.0\nvdd = 6.0", "pots.vdd - pots.vss = 6 V; allowed for the MCP4131"),
])
def test_bad_bench_files_name_the_key(old: str, new: str, key: str) -> None:
    from clln.controller import ProtocolError

    text = BENCH.read_text()
    assert old in text
    with pytest.raises(ProtocolError) as err:
        parse_bench(text.replace(old, new), "b.toml")
    assert str(err.value).startswith("b.toml: ") and key in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("scheme", "refused"), [
    ("[training.scheme.overclamp]\neta = 10.0\n[training.scheme.residuals]\n",
     "max_node_voltage"),  # far past 2 V
    ("[training.scheme.overclamp]\neta = 10.0\nrails = [0.0, 1.0]\n[training.scheme.residuals]\n",
     None),  # held within the rails
    ("[training.scheme.overclamp]\neta = 0.8\nsymmetric = true\n[training.scheme.residuals]\n",
     "terminal window"),  # the mirrored clamps stay within 2 V but go below the MCP4131's VSS
])
def test_overclamped_protocols_are_checked_with_their_own_nudge(scheme: str, refused: str | None) -> None:
    from clln.compose import build_scheme, build_task
    from clln.controller.schemes import boundary_bounds

    text = DEMO.read_text() + "\n" + scheme
    proto = parse_protocol(text, "over.toml")
    bench, btext = load_bench(BENCH)
    extremes = np.array(boundary_bounds(
        build_task(proto.task, np.random.default_rng(0), (3, 5), ()),
        proto.training.eta, build_scheme(proto.training.scheme)))
    assert (np.abs(extremes).max() > 2.0) == (refused == "max_node_voltage")
    if refused is None:
        assert extremes.min() >= -0.3
    elif refused == "terminal window":
        assert extremes.min() < -0.3
    if refused:
        with pytest.raises(LimitError, match=f"over.toml on bench.*{refused}"):
            bench_experiment(proto, bench, btext, source="over.toml", bench_source="bench", target="emulate")
    else:
        _, session = bench_experiment(proto, bench, btext, source="over.toml", bench_source="bench",
                                      target="emulate", steps=2)
        session.close()


def test_a_scheme_that_cannot_run_is_refused_before_anything_is_opened() -> None:
    text = DEMO.read_text() + "\n[training.scheme.overclamp]\neta = 10.0\nrails = [0.0, 1.0]\n"
    proto = parse_protocol(text, "noresid.toml")
    bench, btext = load_bench(BENCH)
    from clln.controller import ProtocolError

    with pytest.raises(ProtocolError, match="noresid.toml: training.scheme: .*residuals"):
        bench_experiment(proto, bench, btext, source="noresid.toml", bench_source="bench", target="emulate")
