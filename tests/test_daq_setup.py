"""The DAQ set-up a bench file leads to, as the emulated bench models it: mains pickup
averaged out over whole periods, multiplexer ghosting from the convert rate actually
configured, quantization on the range in use, clamps that cannot float without a
switch; and the bench-file keys that refuse a set-up that cannot work."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clln.benchfile import daq_config, load_bench, node_resistance_max, parse_bench
from clln.benchrun import bench_network, daq_parameters, nominal_edges, open_bench
from clln.controller import LimitError, ProtocolError
from clln.simulator import make_imperfections
from clln.simulator.bench import BenchModel

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "protocols" / "benches" / "example-16.toml"
TEXT = BENCH.read_text()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "clln.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def model(text: str = TEXT, preset: str = "ideal", taps: int = 128, **overrides: object) -> BenchModel:
    """example-16's model with the DAQ parameters its bench file sets up, and overrides."""
    bench = parse_bench(text, "b")
    p = bench.pots
    return BenchModel(bench_network(bench), nominal_edges(bench), np.full(16, taps),
                      imperfections=make_imperfections(preset, {**daq_parameters(bench), **overrides}),
                      pot=(p.taps, p.r_ab, p.wiper, p.r_series), preset=preset)


SOURCES = np.random.default_rng(3).uniform(0.0, 1.0, (24, 2))


def exact() -> np.ndarray:
    return model(ai_capacitance=0.0).measure(SOURCES).voltages


@pytest.mark.parametrize("mains", [50, 60])
def test_mains_pickup_averages_out_over_the_configured_window_and_not_over_the_old_one(mains: int) -> None:
    text = TEXT.replace("mains_frequency = 50", f"mains_frequency = {mains}")
    cfg = daq_config(parse_bench(text, "b"))
    assert cfg.average_samples / cfg.sample_rate * mains == pytest.approx(round(cfg.average_samples
                                                                                  / cfg.sample_rate * mains))
    pickup = 10e-3  # V peak at every input
    truth = model(text, ai_capacitance=0.0).measure(SOURCES).voltages
    rejected = model(text, ai_capacitance=0.0, mains_pickup=pickup,
                     mains_frequency=float(mains)).measure(SOURCES).voltages
    assert np.abs(rejected - truth).max() < 1e-6 * pickup
    # the old window: 16 samples at 10 kS/s (1.6 ms, a 12th of a 50 Hz period)
    old = model(text, ai_capacitance=0.0, mains_pickup=pickup, mains_frequency=float(mains),
                averaging=16, ai_sample_rate=10_000.0, settle_time=36 / 10_000.0).measure(SOURCES).voltages
    residual = np.abs(old - model(text, ai_capacitance=0.0, averaging=16,
                                  settle_time=36 / 10_000.0).measure(SOURCES).voltages)
    assert residual.max() > 0.8 * pickup
    # averaging 1.6 ms of A sin keeps sinc(pi f T) of it: an independent bound
    kept = abs(math.sin(math.pi * mains * 1.6e-3) / (math.pi * mains * 1.6e-3))
    assert residual.max() <= kept * pickup * 1.0001


def test_ghosting_follows_the_configured_convert_interval() -> None:
    bench = parse_bench(TEXT, "b")
    cfg = daq_config(bench)
    lsb = 2 * cfg.ai_range / 2**16
    truth = exact()
    configured = model().measure(SOURCES).voltages  # 100 pF, the planned interval
    assert np.abs(configured - truth).max() < lsb
    # NI-DAQmx left to itself may convert as fast as the ADC allows (1 us): ghosts
    fast = model(mux_settle_time=1e-6).measure(SOURCES).voltages
    ghost = np.abs(fast - truth).max()
    assert ghost > 100 * lsb
    # the independent bound: a step of at most 1 V decays for 1 us through R_max C
    assert ghost <= math.exp(-1e-6 / (node_resistance_max(bench) * 100e-12)) * 1.0 + 1e-9


def test_quantization_is_on_the_configured_range() -> None:
    cfg = daq_config(parse_bench(TEXT, "b"))
    assert cfg.ai_range == 2.0
    readings = model(preset="pot-bench", ai_noise_rms=0.0).measure(SOURCES).voltages
    lsb = 2 * 2.0 * 1.05 / 2**16  # 16 bits over +-2 V and its 5 % over-range
    assert lsb == pytest.approx(64e-6, rel=2e-3)  # NI's nominal resolution of the +-2 V range
    codes = readings / lsb
    assert np.allclose(codes, np.round(codes), atol=1e-6)
    coarse = readings / (lsb * 5)  # the +-10 V range's 320 uV
    assert not np.allclose(coarse, np.round(coarse), atol=1e-2)


def test_without_a_clamp_switch_the_bench_is_refused_unless_declared_and_then_clamps_hold_0_v() -> None:
    no_switch = TEXT.replace('clamp_switch = "port0/line0"', "")
    with pytest.raises(ProtocolError, match=r"^b: daq.clamp_switch: required: .*daq.clamps_driven_during_free = true"):
        parse_bench(no_switch, "b")
    declared = no_switch.replace('device = "Dev1"', 'device = "Dev1"\nclamps_driven_during_free = true')
    bench = parse_bench(declared, "b")
    sources = np.array([[0.5, 0.8]])
    held = open_bench(bench, declared, target="emulate", initial_taps=np.full(16, 64))
    switched = open_bench(parse_bench(TEXT, "b"), TEXT, target="emulate", initial_taps=np.full(16, 64))
    try:
        v_held = held.backend.measure(sources).voltages[0]
        v_free = switched.backend.measure(sources).voltages[0]
        assert np.all(np.abs(v_held[[3, 5]]) < 1e-3)  # the clamp outputs hold them at 0 V
        assert np.all(v_free[[3, 5]] > 0.1)  # truly free
        assert "held at 0 V" in held.backend.describe()["free_state"]
        # 1.5 V on source node 0: open switches leave clamp node 3's output out of it; a
        # clamp output holding node 3 at 0 V would source 1.5 V into 4 edges of 1075 ohm
        switched.backend.measure(np.array([[1.5, 0.0]]))
        with pytest.raises(LimitError, match="AO channel ao2 source 5.58 mA into its node's 4 edges"):
            held.backend.measure(np.array([[1.5, 0.0]]))
    finally:
        held.close()
        switched.close()


@pytest.mark.slow
def test_mains_frequency_other_than_50_or_60_exits_2_before_anything_opens(tmp_path: Path) -> None:
    bad = tmp_path / "bench.toml"
    bad.write_text(TEXT.replace("mains_frequency = 50", "mains_frequency = 55"))
    result = cli("check", str(bad), "--emulate")
    assert result.returncode == 2
    assert result.stderr == f"error: {bad}: daq.mains_frequency: 55 is not allowed; allowed: 50 or 60\n"


@pytest.mark.slow
def test_negative_sources_on_an_mcp4131_bench_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Classification drives -x: below the MCP4131's -0.3 V terminal limit."""
    bench = tmp_path / "bench5.toml"
    bench.write_text(TEXT.replace('[sources]\nnodes = [0, 2]\nao = ["ao0", "ao1"]',
                                  '[sources]\nnodes = [0, 2, 6, 8, 1]\nao = ["ao0", "ao1", "ao4", "ao5", "ao6"]'))
    proto = tmp_path / "classes.toml"
    proto.write_text((ROOT / "protocols" / "classification-3.toml").read_text().replace("classes = 3", "classes = 2"))
    log = tmp_path / "traffic.jsonl"
    result = cli("train", str(proto), "--bench", str(bench), "--emulate", "--traffic-log", str(log),
                 "--out", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert (f"error: {proto} on bench {bench}: a boundary voltage of -0.8" in result.stderr
            and "outside the MCP4131's terminal window -0.3 ... 5.3 V (set by pots.chip, pots.vss, pots.vdd); "
                "nothing was sent" in result.stderr)
    assert not log.exists() or not log.read_text()  # nothing reached the emulated bench


def test_the_example_bench_files_daq_set_up() -> None:
    bench, _ = load_bench(BENCH)
    cfg = daq_config(bench)
    assert (cfg.ai_range, cfg.ao_range, cfg.average_samples, cfg.sample_rate) == (2.0, 5.0, 200, 10_000.0)
    # 16 bits of settling through the worst node: ln(2^16) R C, rounded up to 10 ns
    assert 1 / cfg.convert_rate == pytest.approx(math.log(2**16) * node_resistance_max(bench) * 100e-12, abs=1e-8)


def test_a_bench_run_creates_and_commits_its_daq_tasks_once_and_clears_them_at_close() -> None:
    """The hardware backend on the NI driver (autospecs of nidaqmx) and the emulated
    controller: 40 measurements, three tasks, three commits, three clears."""
    from test_daq import commits, fake_api

    from clln.benchrun import bench_limits, bench_model
    from clln.drivers.daq import NidaqmxDaq
    from clln.drivers.hardware import HardwareBackend
    from clln.drivers.potbank import PotBank, open_port
    from clln.simulator.bench import EmulatedBench

    bench = parse_bench(TEXT, "b")
    chain = np.array([e.chain for e in bench.edges])
    emulator = EmulatedBench(bench_model(bench, np.full(16, 128)), n_pots=16, chain=chain,
                             ai_nodes=np.arange(9))
    tasks: list[object] = []
    cfg = daq_config(bench)
    api = fake_api(tasks, np.zeros((9, 200 * cfg.samples_per_step)))
    backend = HardwareBackend(bench_network(bench), NidaqmxDaq(cfg, api=api),
                              PotBank(open_port(emulator.port, 115200)), nominal_edges(bench),
                              chain=chain, ai_of_node=np.arange(9), limits=bench_limits(bench),
                              initial_taps=np.full(16, 64))
    try:
        backend.connect()
        assert len(tasks) == 3  # opened with the bench, before any measurement
        for k in range(20):
            backend.measure(np.full((30, 2), 0.5))
            rows = 100 if k % 5 == 0 else 30
            backend.measure(np.full((rows, 2), 0.5), np.full((rows, 2), 0.4))
    finally:
        backend.close()
        emulator.close()
    assert api.Task.call_count == 3 and [commits(t) for t in tasks] == [1, 2, 2]  # one buffer growth
    assert all(t.close.call_count == 1 for t in tasks)
    do_task, ao_task, _ = tasks
    assert ao_task.start.call_count == 41  # 40 measurements and the zeroing at close
    assert do_task.write.call_args_list[-1].args == (False,)  # clamps open at the end
