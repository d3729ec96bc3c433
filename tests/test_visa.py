"""SMU drivers (Keithley 2400 and 2450): expected exchanges from the manuals, the pyvisa-sim
description that answers in the manuals' default formats, the emulated SMU, and the
bench file's choice of model and VISA backend.

The old command sequence (the driver at 90cad2e) is kept below, verbatim in its effect,
to show that it fails against the manual-faithful simulations."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tool
from exchanges import Script

from clln.benchfile import parse_bench
from clln.benchrun import bench_model
from clln.controller.errors import LimitError
from clln.drivers.errors import DeviceNotFound, DriverError
from clln.drivers.visa import (
    VISA_LIBRARY_ENV,
    FixtureMeter,
    Keithley2400,
    Keithley2450,
    make_smu,
    open_instrument,
    visa_library,
)
from clln.simulator.smu import EmulatedSmu, canonical

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "drivers" / "instruments" / "bench-sim.yaml"
BENCH = ROOT / "protocols" / "benches" / "example-16.toml"
ADDRESS = {"2400": "GPIB0::24::INSTR", "2450": "USB0::0x05E6::0x2450::04096331::INSTR"}
NO_ERROR = {"2400": '0,"No error"', "2450": '0,"No error;0;0 0"'}


def old_sequence(resource: object, current_a: float = 5e-5, compliance_v: float = 1.0) -> float:
    """What ``Smu.measure_resistance`` sent before (``git show 90cad2e:drivers/visa.py``):
    2400 commands, ``:MEAS:RES?`` parsed as one float, no error check."""
    for command in (":SOUR:FUNC CURR", f":SOUR:CURR {current_a:.6g}", f":SENS:VOLT:PROT {compliance_v:.6g}",
                    ':SENS:FUNC "RES"', ":SENS:RES:MODE MAN", ":SYST:RSEN ON", ":OUTP ON"):
        resource.write(command)  # type: ignore[attr-defined]
    try:
        reply = str(resource.query(":MEAS:RES?")).strip()  # type: ignore[attr-defined]
    finally:
        resource.write(":OUTP OFF")  # type: ignore[attr-defined]
    return float(reply)


# --- expected exchanges (what the manuals say to send) ----------------------------


def test_2400_sets_up_once_then_reads_with_read_query() -> None:
    setup = [("*RST", None), ("*CLS", None), (":OUTP:SMOD HIMP", None), (':SENS:FUNC "RES"', None),
             (":SENS:RES:MODE MAN", None), (":SOUR:FUNC CURR", None), (":SOUR:CURR 5e-05", None),
             (":SENS:VOLT:PROT 1", None), (":SYST:RSEN ON", None), (":FORM:ELEM RES", None),
             (":SYST:ERR?", '0,"No error"')]
    reading = [(":OUTP ON", None), (":READ?", "+1.107500E+04"), (":SENS:VOLT:PROT:TRIP?", "0"),
               (":OUTP OFF", None)]
    script = Script(setup + reading + reading)
    smu = Keithley2400(script)
    assert smu.measure_resistance(5e-5, compliance_v=1.0) == pytest.approx(11075.0)
    assert smu.measure_resistance(5e-5, compliance_v=1.0) == pytest.approx(11075.0)
    script.done()
    assert not any(q.startswith(":MEAS") or q.startswith(":CONF") for q, _ in setup + reading)


def test_2450_native_exchange() -> None:
    script = Script([("*RST", None), ("*CLS", None), (":SOUR:FUNC CURR", None), (":OUTP:CURR:SMOD HIMP", None),
                     (":SOUR:CURR 5e-05", None), (":SOUR:CURR:VLIM 1", None), (':SENS:FUNC "RES"', None),
                     (":SENS:RES:RSEN ON", None), (":SENS:RES:OCOM ON", None),
                     (":SYST:ERR?", '0,"No error;0;0 0"'), (":OUTP ON", None), (":READ?", "1.107500E+04"),
                     (":SOUR:CURR:VLIM:TRIP?", "1"), (":OUTP OFF", None)])
    with pytest.raises(DriverError, match="1 V compliance"):
        Keithley2450(script).measure_resistance(5e-5, compliance_v=1.0)
    script.done()


def test_a_rejected_setup_names_the_commands_and_never_turns_the_output_on() -> None:
    sent = [c for c in Keithley2400(None).setup_commands(5e-5, 1.0)]
    script = Script([(c, None) for c in sent] + [(":SYST:ERR?", '-113,"Undefined header"'),
                                                   (":SYST:ERR?", '-221,"Settings conflict"'),
                                                   (":SYST:ERR?", '0,"No error"')])
    with pytest.raises(DriverError) as err:
        Keithley2400(script).measure_resistance(5e-5, compliance_v=1.0)
    script.done()  # nothing after the error queue: no :OUTP ON
    message = str(err.value)
    assert "Keithley 2400 rejected" in message and ":SENS:RES:MODE MAN" in message
    assert '-113,"Undefined header"; -221,"Settings conflict"' in message


@pytest.mark.parametrize("model", ["2400", "2450"])
def test_parking_opens_the_output_relay_and_checks_the_error_queue(model: str) -> None:
    script = Script([("*CLS", None), (":OUTP:SMOD HIMP", None), (":OUTP OFF", None),
                     (":SYST:ERR?", NO_ERROR[model])])
    make_smu(model, script).park()
    script.done()


def test_opening_the_emulated_bench_parks_its_smu() -> None:
    from clln.benchrun import open_bench

    text = smu_key('model = "2450"')
    bench = parse_bench(text, str(BENCH))
    session = open_bench(bench, text, target="emulate")
    try:
        assert session.emulator is not None and session.emulator.smu is not None
        smu = session.emulator.smu
        assert smu.instrument == "2450" and not smu.loads_network and smu.readings == 0
    finally:
        session.close()


@pytest.mark.parametrize("current, compliance", [(float("nan"), 1.0), (5e-5, float("inf")), (5e-5, 0.0)])
def test_non_finite_set_up_sends_nothing(current: float, compliance: float) -> None:
    script = Script([])
    with pytest.raises(LimitError, match="nothing was sent"):
        Keithley2450(script).measure_resistance(current, compliance_v=compliance)
    script.done()


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="'2400', '2450'|2400, 2450"):
        make_smu("2460", None)


# --- pyvisa-sim, manual-faithful replies --------------------------------------------


@pytest.fixture
def sim(tmp_path: Path) -> str:
    """A fresh copy of the YAML per test (pyvisa-sim keeps state per path in a process)."""
    path = tmp_path / "bench-sim.yaml"
    shutil.copy(YAML, path)
    return f"{path}@sim"


@pytest.mark.parametrize("model", ["2400", "2450"])
def test_driver_reads_resistance_from_the_simulated_smu(sim: str, model: str) -> None:
    smu = make_smu(model, open_instrument(ADDRESS[model], sim))
    assert f"MODEL {model}" in smu.identify()
    smu.park()
    meter = FixtureMeter(smu, (4, 7), current=5e-5, compliance=1.0)
    assert meter.measure() == pytest.approx(11075.0)
    assert meter.measure() == pytest.approx(11075.0)
    assert smu.errors() == []
    if model == "2400":
        assert smu.ask(":FORM:ELEM?") == "RES" and smu.ask(":SENS:RES:MODE?") == "MAN"
        assert smu.ask(":OUTP:SMOD?") == "HIMP" and float(smu.ask(":SENS:VOLT:PROT?")) == 1.0
    else:
        assert smu.ask(":OUTP:CURR:SMOD?") == "HIMP" and float(smu.ask(":SOUR:CURR:VLIM?")) == 1.0
    smu.write(":NOT:A:COMMAND")
    with pytest.raises(DriverError, match="-113"):
        smu.check_errors()
    smu.close()


def test_simulated_2400_answers_five_elements_until_form_elem_is_set(sim: str) -> None:
    resource = open_instrument(ADDRESS["2400"], sim)
    assert len(resource.query(":READ?").split(",")) == 5
    resource.write(":FORM:ELEM RES")
    assert resource.query(":READ?").strip() == "+1.107500E+04"


def test_old_sequence_fails_on_the_simulated_2400(sim: str) -> None:
    resource = open_instrument(ADDRESS["2400"], sim)
    with pytest.raises(ValueError, match="could not convert"):
        old_sequence(resource)


def test_old_sequence_is_rejected_by_the_simulated_2450(sim: str) -> None:
    """The 2450 answers :MEAS:RES? with a number, but it rejected the old voltage
    compliance, ohms mode and remote-sense commands: the reading was taken 2-wire with the
    default 21 V limit, and nobody read the error queue."""
    resource = open_instrument(ADDRESS["2450"], sim)
    old_sequence(resource)
    smu = Keithley2450(resource)
    assert [e.split(",")[0] for e in smu.errors()] == ["-113"] * 3
    assert float(smu.ask(":SOUR:CURR:VLIM?")) == 21.0


def test_missing_visa_library_is_a_user_error() -> None:
    """No VISA implementation on this machine: one clear line, not a traceback."""
    with pytest.raises(DeviceNotFound, match="GPIB0::24::INSTR.*VISA implementation"):
        open_instrument(ADDRESS["2400"], "")


def test_library_from_command_line_then_environment_then_bench(monkeypatch: pytest.MonkeyPatch,
                                                                sim: str) -> None:
    monkeypatch.delenv(VISA_LIBRARY_ENV, raising=False)
    assert visa_library("@py") == "@py"
    monkeypatch.setenv(VISA_LIBRARY_ENV, sim)
    assert visa_library("@py") == sim
    assert visa_library("@py", "/opt/visa/libvisa.so") == "/opt/visa/libvisa.so"
    assert "MODEL 2450" in Keithley2450(open_instrument(ADDRESS["2450"], visa_library("@ivi"))).identify()


# --- the emulated SMU -----------------------------------------------------------------


def emulated(model: str, noise: float = 3e-5) -> tuple[EmulatedSmu, object]:
    bench = parse_bench(BENCH.read_text(), str(BENCH))
    bm = bench_model(bench, np.full(len(bench.edges), 40))
    return EmulatedSmu(bm, (4, 7), sync=lambda: None, instrument=model, seed=3, noise=noise), bm


def test_canonical_headers_follow_scpi_short_forms() -> None:
    assert canonical(":SENSe1:RESistance:MODE") == "SENS:RES:MODE" == canonical(":RES:MODE")
    assert canonical(":OUTPut:STATe") == "OUTP" and canonical(":SYSTem:ERRor:NEXT?") == "SYST:ERR?"
    assert canonical(":SOURce:CURRent:VLIMit:TRIPped?") == "SOUR:CURR:VLIM:TRIP?"
    assert canonical(":FORMat:ELEMents") == "FORM:ELEM" and canonical(":CONFigure:RESistance") == "CONF:RES"


@pytest.mark.parametrize("model", ["2400", "2450"])
def test_driver_on_the_emulated_smu(model: str) -> None:
    smu, bm = emulated(model)
    assert smu.loads_network  # *RST state: output off in NORMAL keeps the relay closed
    truth = bm.two_point_resistance(4, 7)  # type: ignore[attr-defined]
    meter = FixtureMeter(make_smu(model, smu), (4, 7), current=5e-5, compliance=1.0)
    ohms = meter.measure()
    assert ohms == pytest.approx(truth, rel=abs(smu.gain_error) + 5 * smu.noise)
    assert smu.sourced == [(5e-5, 1.0)] and not smu.loads_network and not smu.output
    assert make_smu(model, smu).errors() == []
    with pytest.raises(DriverError, match="overflowed"):  # 10 mA into ~kOhm: V limit reached
        FixtureMeter(make_smu(model, smu), (4, 7), current=1e-2, compliance=1.0).measure()


def test_emulated_2400_answers_in_the_manuals_formats() -> None:
    smu, bm = emulated("2400", noise=0.0)
    smu.gain_error = 0.0
    truth = bm.two_point_resistance(4, 7)  # type: ignore[attr-defined]
    smu.write(":READ?")  # output off: +803, no reply
    assert smu.query(":SYST:ERR?") == '803,"Not permitted with OUTPUT off"'
    import pyvisa

    with pytest.raises(pyvisa.errors.VisaIOError):
        smu.query(":READ?")
    for command in ("*RST", ":SENSe:FUNCtion 'RESistance'", ":RES:MODE MANual", ":SOUR:FUNC CURR",
                    ":SOUR:CURR 5e-5", ":SENS:VOLT:PROT 1", ":SYST:RSEN ON", ":OUTP ON"):
        smu.write(command)
    volts, amps, ohms, _, status = (float(x) for x in smu.query(":READ?").split(","))
    assert ohms == pytest.approx(truth, rel=1e-6) and volts == pytest.approx(5e-5 * truth, rel=1e-6)
    assert amps == 5e-5 and int(status) & (1 << 22) and not int(status) & (1 << 10)
    smu.write(":FORM:ELEM RES,VOLT")  # the instrument's order, whatever the list's
    assert len(smu.query(":READ?").split(",")) == 2
    smu.write(":SYST:RSEN OFF")
    smu.write(":FORM:ELEM RES")
    assert float(smu.query(":READ?")) == pytest.approx(truth + 2 * smu.lead_resistance, rel=1e-6)


def test_old_sequence_fails_on_the_emulated_2400_and_would_have_run_auto_ohms() -> None:
    smu, bm = emulated("2400")
    with pytest.raises(ValueError, match="could not convert"):
        old_sequence(smu)
    # :MEAS ran :CONF: auto ohms chose its own test current (User's Manual section 4: 1 mA
    # on the 2 kOhm range, 100 uA on 20 kOhm), not the 50 uA asked for
    (amps, _), = smu.sourced
    truth = bm.two_point_resistance(4, 7)  # type: ignore[attr-defined]
    assert amps == (1e-3 if truth <= 2.1e3 else 1e-4) and amps != 5e-5
    assert smu.loads_network  # the output-off state was never set to high impedance


def test_old_sequence_on_the_emulated_2450_leaves_three_errors_and_the_default_limit() -> None:
    smu, bm = emulated("2450", noise=0.0)
    smu.gain_error = 0.0
    ohms = old_sequence(smu)
    assert ohms == pytest.approx(bm.two_point_resistance(4, 7) + 2 * smu.lead_resistance, rel=1e-6)  # type: ignore[attr-defined]
    assert smu.sourced == [(5e-5, 21.0)]
    assert [e.split(",")[0] for e in Keithley2450(smu).errors()] == ["-113"] * 3


# --- the bench file -------------------------------------------------------------------


def smu_key(line: str) -> str:
    """example-16.toml with one line of its [smu] table set (``key = value``)."""
    text = BENCH.read_text()
    key = line.split("=")[0].strip()
    lines = text.splitlines()
    start = lines.index(next(x for x in lines if x.startswith("[smu]")))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("["))
    kept = [x for x in lines[start + 1:end] if x.split("=")[0].strip() != key]
    return "\n".join([*lines[:start + 1], line, *kept, *lines[end:]]) + "\n"


def bench_with(tmp_path: Path, line: str) -> Path:
    text = smu_key(line)
    path = tmp_path / "bench.toml"
    path.write_text(text)
    return path


def test_bench_file_chooses_the_model(tmp_path: Path) -> None:
    bench = parse_bench(bench_with(tmp_path, 'model = "2450"').read_text(), "b")
    assert bench.smu is not None and bench.smu.model == "2450"
    assert parse_bench(BENCH.read_text(), "b").smu.model == "2400"  # type: ignore[union-attr]


def run_clln(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clln.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


@pytest.mark.slow
def test_unknown_model_or_library_path_in_a_bench_file_exits_2_and_loads_nothing(tmp_path: Path) -> None:
    """A bench file naming a shared library: one line, exit 2, the library never loaded
    (its constructor would write a marker file)."""
    require_tool("gcc")
    marker = tmp_path / "library-was-loaded"
    source = tmp_path / "lib.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void hit(void) {\n'
                      f'  FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n}}\n')
    library = tmp_path / "libvisa-evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    bad = bench_with(tmp_path, f'visa_library = "{library}"')
    proc = run_clln("calibrate", bad, "--seed", "0")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(bad) in lines[0] and "smu.visa_library" in lines[0] and "'@py', '@ivi', '@sim'" in lines[0]
    assert "--visa-library" in lines[0] and "Traceback" not in proc.stderr
    assert not marker.exists()
    model = bench_with(tmp_path, 'model = "2460"')
    proc = run_clln("calibrate", model, "--emulate")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(model) in lines[0] and "smu.model" in lines[0] and "'2400' or '2450'" in lines[0]
    assert not list(tmp_path.glob("*.cal-*.json"))  # nothing calibrated, nothing written
    # control: handed to pyvisa, the same path does run the library's code
    subprocess.run([sys.executable, "-c", "import sys, pyvisa\ntry:\n pyvisa.ResourceManager(sys.argv[1])\n"
                    "except Exception:\n pass", str(library)], timeout=60, capture_output=True)
    assert marker.exists()
