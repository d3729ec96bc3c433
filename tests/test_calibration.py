"""Calibration numerics against independent computations, the calibration file, and the
pieces the procedures drive (emulated SMU, grounded inputs, faults, HardwareBackend)."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from exchanges import Script

from clln.benchfile import hardware_hash, parse_bench
from clln.benchrun import bench_calibration, bench_model, bench_network, nominal_edges, open_bench
from clln.controller import LimitError, ProtocolError, SteppedEdges
from clln.controller.calibration import (
    Calibration,
    CalibrationWarning,
    ChannelCalibration,
    EdgeFits,
    Survey,
    calibrate,
    calibration_problems,
    calibration_states,
    check_edges,
    classify,
    edge_table,
    effective_resistance,
    fit_line,
    kcl_matrix,
    load_calibration,
    solve_tomography,
    survey,
)
from clln.controller.errors import UserError
from clln.drivers.errors import DriverError
from clln.drivers.visa import FixtureMeter, Keithley2400
from clln.simulator.bench import BenchModel, EdgeFaults

ROOT = Path(__file__).resolve().parents[1]
BENCH_PATH = ROOT / "protocols" / "benches" / "example-16.toml"
BENCH_TEXT = BENCH_PATH.read_text()
IDEAL_TEXT = BENCH_TEXT.replace('preset = "pot-bench"', 'preset = "ideal"')


class SimTarget:
    """The controller's CalibrationTarget over a simulated bench model (no drivers)."""

    def __init__(self, model: BenchModel) -> None:
        self.model = model
        self.network = model.network
        self.writes = 0

    def drive_limit(self) -> float:
        return 1.0

    def acquire_raw(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        ns = len(self.network.roles.sources)
        meas = self.model.measure(ao[:, :ns], ao[:, ns:] if clamps_engaged else None)
        return meas.voltages, meas.timestamps

    def read_grounded(self, repeats: int) -> np.ndarray:
        return self.model.read_grounded(repeats)

    def write_taps(self, taps: np.ndarray) -> None:
        self.writes += 1
        self.model.set_taps(taps)

    def read_taps(self) -> np.ndarray:
        taps = self.model.read_edges().taps
        assert taps is not None
        return taps

    def safe(self) -> None:
        pass


class ModelMeter:
    """A resistance meter answering from the simulator's own two-point solve."""

    def __init__(self, model: BenchModel, nodes: tuple[int, int]) -> None:
        self.model, self.nodes = model, nodes

    def measure(self) -> float:
        return self.model.two_point_resistance(*self.nodes)


def ideal_model(faults: EdgeFaults | None = None) -> tuple[BenchModel, np.ndarray]:
    bench = parse_bench(IDEAL_TEXT, "ideal")
    model = bench_model(bench, np.full(16, 64), faults=faults)
    return model, nominal_edges(bench).table


# -- numerics ------------------------------------------------------------------------------


def test_kcl_rows_are_the_currents_out_of_the_free_nodes() -> None:
    rng = np.random.default_rng(0)
    net = bench_network(parse_bench(BENCH_TEXT, "b"))
    g = rng.uniform(1e-4, 1e-3, net.n_edges)
    v = rng.normal(size=(5, net.n_nodes))
    free = np.array([1, 4, 6, 8])
    currents = (net.laplacian(g) @ v.T).T[:, free]  # (B, f), independent: L v
    assert np.allclose(kcl_matrix(v, net.edges, free) @ g, currents.ravel(), rtol=0, atol=1e-15)


@pytest.mark.slow
def test_one_tap_state_leaves_a_second_null_direction_linked_states_do_not() -> None:
    model, table = ideal_model()
    target = SimTarget(model)
    rng = np.random.default_rng(1)
    one = survey(target, np.full((1, 16), 40), amplitude=1.0, rows=(8, 8), rng=rng)
    assert solve_tomography(model.network, one, ChannelCalibration.identity(9, 4)).gap < 2.0
    states, halves = calibration_states(16, 129, levels=9, rng=rng)
    assert len(halves) == 2 and sorted(np.concatenate(halves).tolist()) == list(range(16))
    data = survey(target, states, amplitude=1.0, rows=(8, 8), rng=rng)
    tomo = solve_tomography(model.network, data, ChannelCalibration.identity(9, 4))
    assert tomo.gap > 1e6 and tomo.observable.all()
    truth = table[tomo.pairs[:, 0], tomo.pairs[:, 1]]
    scale = np.exp(np.mean(np.log(truth / tomo.values)))
    assert np.max(np.abs(tomo.values * scale / truth - 1)) < 1e-9  # round-off


def test_calibrate_on_the_ideal_bench_reproduces_its_tables_and_scale() -> None:
    model, table = ideal_model()
    target = SimTarget(model)
    run = calibrate(target, nominal=SteppedEdges(table), meter=ModelMeter(model, (4, 7)), levels=9,
                    rows=(8, 8), grounded_repeats=4, check=2, rng=np.random.default_rng(2))
    cal = run.calibration
    assert cal.scale == "smu" and not cal.flags
    assert np.max(np.abs(cal.table / table - 1)) < 1e-8
    assert np.allclose(cal.fits.rstep, 1e4 / 128, rtol=1e-8) and np.allclose(cal.fits.r0, 1075.0, rtol=1e-8)
    assert np.all(cal.fits.fit_rms < 1e-9)
    assert run.check is not None and run.check.max_error < 1e-8
    assert np.allclose(cal.channels.ao_gain, 0, atol=1e-9) and np.allclose(cal.channels.ao_offset, 0, atol=1e-9)
    assert np.array_equal(target.read_taps(), np.full(16, 64))  # taps restored


def test_prior_scale_without_a_meter() -> None:
    model, table = ideal_model()
    run = calibrate(SimTarget(model), nominal=SteppedEdges(table), levels=9, rows=(8, 8),
                    grounded_repeats=4, check=0, rng=np.random.default_rng(3))
    assert run.calibration.scale == "prior"
    assert np.max(np.abs(run.calibration.table / table - 1)) < 1e-8  # nominal R0 is exact here


def test_effective_resistance_against_closed_forms_and_a_dense_solve() -> None:
    chain = np.array([[0, 1], [1, 2]])
    assert effective_resistance(3, chain, np.array([1e-3, 5e-4]), [2], 0, 2) == pytest.approx(3000.0)
    parallel = np.array([[0, 1], [0, 1]])
    assert effective_resistance(2, parallel, np.array([1e-3, 1e-3]), [], 0, 1) == pytest.approx(500.0)
    # a node behind an open edge drops out; an isolated pair is infinitely far apart
    assert effective_resistance(4, np.array([[0, 1], [1, 2], [2, 3]]), np.array([1e-3, 1e-3, 0.0]),
                                [], 0, 2) == pytest.approx(2000.0)
    assert effective_resistance(3, chain, np.array([1e-3, 0.0]), [], 0, 2) == np.inf
    rng = np.random.default_rng(4)
    net = bench_network(parse_bench(BENCH_TEXT, "b"))
    g = rng.uniform(1e-4, 1e-3, net.n_edges)
    held = [0, 2, 7]
    keep = [i for i in range(9) if i not in held]
    lap = net.laplacian(g).toarray()[np.ix_(keep, keep)]
    e = np.zeros(len(keep))
    e[keep.index(4)], e[keep.index(8)] = 1.0, -1.0
    expected = e @ np.linalg.inv(lap) @ e
    assert effective_resistance(9, net.edges, g, held, 4, 8) == pytest.approx(expected, rel=1e-12)


def test_fit_line_recovers_known_lines_and_the_residual_table_interpolates() -> None:
    d = np.arange(0, 129, 8)
    r0, rstep, res = fit_line(d, 1050.0 + 80.0 * d)
    assert (r0, rstep) == (pytest.approx(1050.0), pytest.approx(80.0)) and np.allclose(res, 0, atol=1e-9)
    inl = 60.0 * np.sin(np.pi * np.arange(129) / 128) * np.cos(2 * np.pi * np.arange(129) / 128)
    r = 1050.0 + 80.0 * d + inl[d]
    r0, rstep, res = fit_line(d, r)
    assert np.allclose(r0 + rstep * d + res, r)
    table, full = edge_table(r0, rstep, d, res, 129)
    truth = 1050.0 + 80.0 * np.arange(129) + inl
    assert np.max(np.abs(full - truth)) < 0.01 * 60.0  # spline between the measured taps
    assert np.all(np.diff(full) > 0)


def test_classify_names_each_fault() -> None:
    taps = np.array([[10, 10, 10, 10, 10], [100, 100, 100, 100, 100]])
    table = np.tile(1.0 / (1000.0 + 78.0 * np.arange(129)), (5, 1))
    expected = table[np.arange(5), taps]
    estimate = expected.copy()
    estimate[:, 0] *= 1e-4                               # open
    estimate[:, 1] = 0.5                                 # short
    estimate[:, 2] = expected[0, 2]                      # stuck at its first tap
    estimate[:, 3] *= 1.1                                # 10 % off
    estimate[:, 4] = np.nan                              # no current seen
    flags = classify(taps, estimate, expected, table, 0.03)
    assert flags == {0: "open", 1: "short", 2: "stuck", 3: "mismatch", 4: "unobservable"}


# -- the calibration file -------------------------------------------------------------------


def small_calibration(hw: str = "h" * 64, created: datetime | None = None) -> Calibration:
    m, taps = 16, 129
    table = np.tile(1.0 / (1075.0 + 78.0 * np.arange(taps)), (m, 1))
    fits = EdgeFits(np.ones(m, bool), np.tile(np.arange(0, 129, 64), (m, 1)), np.full((m, 3), 2000.0),
                    np.full(m, 1075.0), np.full(m, 78.0), np.zeros((m, taps)), np.zeros(m))
    fits.resistance[0, 1] = np.nan
    created = created or datetime.now(UTC)
    return Calibration("id-1", created.isoformat(), "example-16", "t" * 64, hw, table,
                       ChannelCalibration(np.linspace(-1e-4, 1e-4, 9), np.zeros(9), np.full(4, 2e-5),
                                          np.full(4, -3e-5), np.ones(4)),
                       fits, {3: "stuck"}, "smu", {"acquisitions": 77, "check": {"rms_error": 0.001}},
                       "0.1.0")


def test_calibration_file_round_trip(tmp_path: Path) -> None:
    cal = small_calibration()
    path = cal.save(tmp_path / "c.json")
    back = load_calibration(path)
    assert np.array_equal(back.table, cal.table) and back.flags == {3: "stuck"}
    assert np.array_equal(back.channels.ai_offset, cal.channels.ai_offset)
    assert np.array_equal(back.channels.ao_impedance, cal.channels.ao_impedance)  # type: ignore[arg-type]
    assert np.isnan(back.fits.resistance[0, 1]) and back.summary["acquisitions"] == 77
    assert (back.id, back.hardware_sha256, back.scale) == (cal.id, cal.hardware_sha256, "smu")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(format=2), "format: version 2 is not supported"),
    (lambda d: d.pop("table"), "required key 'table' is missing"),
    (lambda d: d.update(kind="other"), "not a clln calibration file"),
    (lambda d: d["table"][0].__setitem__(0, -1.0), "positive conductances"),
])
def test_malformed_calibration_files_are_one_line_errors(tmp_path: Path, edit: object, message: str) -> None:
    data = small_calibration().to_dict()
    edit(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProtocolError, match=message) as err:
        load_calibration(path)
    assert "\n" not in str(err.value)


def test_hardware_hash_ignores_comments_and_the_calibration_key_not_the_network() -> None:
    bench = parse_bench(BENCH_TEXT, "b")
    h = hardware_hash(bench)
    same = BENCH_TEXT.replace("grounds = [7]", 'grounds = [7]   # the ground\ncalibration = "x.json"')
    same = same.replace("max_node_voltage = 2.0", "max_node_voltage = 1.5")
    assert hardware_hash(parse_bench(same, "b")) == h
    other = BENCH_TEXT.replace("nodes = [2, 4]\nchain = 15", "nodes = [2, 5]\nchain = 15")
    assert other != BENCH_TEXT and hardware_hash(parse_bench(other, "b")) != h


def test_mismatched_or_old_calibrations_warn(tmp_path: Path) -> None:
    bench_text = BENCH_TEXT.replace("grounds = [7]", 'grounds = [7]\ncalibration = "cal.json"')
    bench_file = tmp_path / "bench.toml"
    bench_file.write_text(bench_text)
    bench = parse_bench(bench_text, str(bench_file))
    small_calibration(hardware_hash(bench)).save(tmp_path / "cal.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bench_calibration(bench, bench_file) is not None  # matches, fresh: silent
    small_calibration().save(tmp_path / "cal.json")
    with pytest.warns(CalibrationWarning, match="made for another bench description"):
        bench_calibration(bench, bench_file)
    old = datetime.now(UTC) - timedelta(days=90)
    small_calibration(hardware_hash(bench), created=old).save(tmp_path / "cal.json")
    with pytest.warns(CalibrationWarning, match="is 90 days old"):
        bench_calibration(bench, bench_file)
    assert calibration_problems(small_calibration(hardware_hash(bench)), hardware_hash(bench)) == []
    (tmp_path / "cal.json").unlink()
    with pytest.raises(ProtocolError, match="no such calibration file"):
        bench_calibration(bench, bench_file)


# -- the emulated bench's parts --------------------------------------------------------------


def test_edge_faults_in_the_model() -> None:
    faults = EdgeFaults.parse(["stuck:2:30", "open:9", "short:5"], 16, 129)
    model, table = ideal_model(faults)
    model.set_taps(np.full(16, 100))
    g = model.true_conductances()
    assert g[2] == table[2, 30] and g[9] == 1e-9 and g[5] == pytest.approx(0.1)
    assert g[0] == table[0, 100]
    assert np.array_equal(model.true_table()[2], np.full(129, table[2, 30]))
    for bad, message in (("stuck", "expected stuck:EDGE"), ("melt:1", "unknown kind"),
                         ("open:16", "not in 0..15"), ("stuck:1:129", "tap 129")):
        with pytest.raises(ProtocolError, match=message):
            EdgeFaults.parse([bad], 16, 129)


def exchange(reply: str, tripped: str = "0") -> list[tuple[str, str | None]]:
    """The Keithley 2400 manual-ohms exchange of one reading (2400 Series User's Manual,
    Table 4-2 and sections 17-18): set-up, error queue, output on, one :READ?, output off."""
    return [("*RST", None), ("*CLS", None), (":OUTP:SMOD HIMP", None), (':SENS:FUNC "RES"', None),
            (":SENS:RES:MODE MAN", None), (":SOUR:FUNC CURR", None), (":SOUR:CURR 5e-05", None),
            (":SENS:VOLT:PROT 1", None), (":SYST:RSEN ON", None), (":FORM:ELEM RES", None),
            (":SYST:ERR?", '0,"No error"'), (":OUTP ON", None), (":READ?", reply),
            (":SENS:VOLT:PROT:TRIP?", tripped), (":OUTP OFF", None)]


def test_smu_resistance_exchange_and_overflow() -> None:
    script = Script(exchange("+5.123400E+02"))
    assert Keithley2400(script).measure_resistance(5e-5, compliance_v=1.0) == pytest.approx(512.34)
    assert not script.pairs
    with pytest.raises(DriverError, match="compliance"):
        Keithley2400(Script(exchange("+9.900000E+37"))).measure_resistance(5e-5, compliance_v=1.0)
    with pytest.raises(DriverError, match="compliance"):
        Keithley2400(Script(exchange("+2.000000E+04", "1"))).measure_resistance(5e-5, compliance_v=1.0)


def test_emulated_smu_answers_the_driver_from_the_bench_model() -> None:
    bench = parse_bench(BENCH_TEXT, "b")
    session = open_bench(bench, BENCH_TEXT, target="emulate", initial_taps=np.full(16, 40))
    try:
        meter = session.open_meter(bench)
        assert meter is not None and session.emulator is not None and session.emulator.smu is not None
        model = session.emulator.model
        ohms = meter.measure()
        smu = session.emulator.smu
        assert ohms == pytest.approx(model.two_point_resistance(4, 7), rel=5 * abs(smu.gain_error) + 2e-4)
        assert smu.readings == 1 and model.clock.now >= smu.reading_time
        assert not smu.loads_network  # output off, relay open
        tight = FixtureMeter(Keithley2400(smu), (4, 7), current=1e-2, compliance=1.0)
        with pytest.raises(DriverError, match="overflowed"):
            tight.measure()
        with pytest.raises(LimitError, match="nothing was sent"):
            FixtureMeter(Keithley2400(smu), (4, 7), current=5e-5, compliance=5.0, guard=meter.guard).measure()  # type: ignore[attr-defined]
        assert smu.readings == 2
        smu.write(":BOGUS 1")
        assert smu.query(":SYST:ERR?").startswith("-113")
    finally:
        session.close()


def test_hardware_backend_applies_a_calibration_and_refuses_raw_patterns_beyond_limits() -> None:
    bench = parse_bench(BENCH_TEXT, "b")
    cal = small_calibration(hardware_hash(bench))
    plain = open_bench(bench, BENCH_TEXT, target="emulate", initial_taps=np.full(16, 64))
    calibrated = open_bench(bench, BENCH_TEXT, target="emulate", initial_taps=np.full(16, 64),
                            calibration=cal)
    try:
        sources = np.array([[0.3, 0.6]])
        v_plain = plain.backend.measure(sources).voltages
        v_cal = calibrated.backend.measure(sources).voltages
        # AO corrected by +3e-5 gain and 2e-5 V offset (tiny), AI by the offsets
        assert np.allclose(v_cal, v_plain - cal.channels.ai_offset, atol=3e-4)
        assert np.array_equal(calibrated.backend.edges.table, cal.table)
        assert calibrated.backend.describe()["calibration"]["id"] == "id-1"
        assert plain.backend.describe()["calibration"] is None
        backend = calibrated.backend
        assert calibrated.emulator is not None
        before = calibrated.emulator.daq.acquisitions
        with pytest.raises(LimitError, match="nothing was sent"):
            backend.acquire_raw(np.array([[1.9, -1.9, 0.0, 0.0]]), clamps_engaged=True)  # type: ignore[attr-defined]
        assert calibrated.emulator.daq.acquisitions == before
        c, a = backend.drive_window()  # type: ignore[attr-defined]
        assert c - a == pytest.approx(-0.3)  # the MCP4131's terminals go no lower than -0.3 V
        # the span is what the AO channel of clamp node 3 (4 edges of 1075 ohm) can source
        assert 2 * a == pytest.approx(5e-3 * 1075.0 / 4, rel=0.01)
        backend.acquire_raw(np.array([[c + a, c - a, c + a, c - a]]), clamps_engaged=True)  # type: ignore[attr-defined]
        grounded = backend.read_grounded(8)  # type: ignore[attr-defined]
        assert grounded.shape == (8, 9) and np.all(np.abs(grounded) < 1e-3)
    finally:
        plain.close()
        calibrated.close()


def test_the_check_flags_injected_faults_on_the_emulated_bench() -> None:
    """Calibrate the emulated pot-bench (noise on, SMU scale), then break two edges."""
    bench = parse_bench(BENCH_TEXT, "b")
    session = open_bench(bench, BENCH_TEXT, target="emulate")
    try:
        run = calibrate(session.backend, nominal=nominal_edges(bench), meter=session.open_meter(bench),  # type: ignore[arg-type]
                        check=0, rng=np.random.default_rng(5))
        assert session.emulator is not None
        truth = session.emulator.model.true_table()
    finally:
        session.close()
    cal = run.calibration
    assert np.sqrt(np.mean((cal.table / truth - 1) ** 2)) < 0.002
    assert np.sqrt(np.mean((nominal_edges(bench).table / truth - 1) ** 2)) > 0.05
    faults = EdgeFaults.parse(["stuck:2:30", "open:9"], 16, 129)
    session = open_bench(bench, BENCH_TEXT, target="emulate", calibration=cal, edge_faults=faults)
    try:
        check = check_edges(session.backend, cal, meter=session.open_meter(bench), rows=(16, 8),  # type: ignore[arg-type]
                            rng=np.random.default_rng(6))
    finally:
        session.close()
    assert check.flags == {2: "stuck", 9: "open"}
    assert check.max_error < 0.02


def test_survey_counts_what_it_did() -> None:
    model, _ = ideal_model()
    target = SimTarget(model)
    data: Survey = survey(target, np.full((3, 16), 50), amplitude=0.5, rows=(4, 2),
                          rng=np.random.default_rng(0), meter=ModelMeter(model, (4, 7)), grounded_repeats=5)
    assert data.counts == {"acquisitions": 7, "boundary_conditions": 18, "tap_writes": 3,
                           "meter_readings": 3, "grounded_readings": 5}
    assert target.writes == 3 and len(data.meter) == 3 and data.grounded is not None


def test_nidaqmx_grounded_reading_uses_the_internal_ground_channel() -> None:
    import nidaqmx.constants
    from test_daq import CONFIG, fake_api

    from clln.drivers.daq import NidaqmxDaq

    repeats, per = 3, CONFIG.average_samples
    data = np.repeat(np.array([[1e-4, 2e-4, 3e-4]]), per, axis=1)  # one channel, 3 x 4 samples
    tasks: list[object] = []
    daq = NidaqmxDaq(CONFIG, api=fake_api(tasks, data))
    readings = daq.read_grounded(repeats)
    assert readings.shape == (repeats, 3) and np.allclose(readings[:, 0], [1e-4, 2e-4, 3e-4])
    assert np.all(readings == readings[:, :1])  # one amplifier behind every channel
    (task,) = tasks
    task.ai_channels.add_ai_voltage_chan.assert_called_once_with(  # type: ignore[attr-defined]
        "Dev1/_aignd_vs_aignd", min_val=-10.0, max_val=10.0)
    task.timing.cfg_samp_clk_timing.assert_called_once_with(  # type: ignore[attr-defined]
        1000.0, sample_mode=nidaqmx.constants.AcquisitionType.FINITE, samps_per_chan=repeats * per)


def test_a_subset_of_edges_keeps_the_other_tables_and_saves(tmp_path: Path) -> None:
    model, table = ideal_model()
    previous = SteppedEdges(table * 1.5)  # the others keep these
    run = calibrate(SimTarget(model), nominal=SteppedEdges(table), meter=ModelMeter(model, (4, 7)),
                    edges=[0, 5], previous=previous, levels=9, rows=(8, 8), grounded_repeats=4, check=0,
                    rng=np.random.default_rng(8))
    cal = run.calibration
    assert np.max(np.abs(cal.table[[0, 5]] / table[[0, 5]] - 1)) < 1e-8
    assert np.array_equal(np.delete(cal.table, [0, 5], axis=0), np.delete(previous.table, [0, 5], axis=0))
    back = load_calibration(cal.save(tmp_path / "subset.json"))
    assert np.isnan(back.fits.r0[1]) and back.fits.r0[0] == pytest.approx(1075.0)
    assert back.fits.measured.tolist() == [j in (0, 5) for j in range(16)]
    with pytest.raises(UserError, match="not edges of this bench"):
        calibrate(SimTarget(model), nominal=SteppedEdges(table), edges=[16], rng=np.random.default_rng(0))
