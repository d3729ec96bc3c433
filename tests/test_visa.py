"""SCPI instruments: expected exchanges, and the pyvisa-sim description of the bench."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from exchanges import Script

from clln.drivers.errors import DeviceNotFound, DriverError
from clln.drivers.visa import Dmm, Smu, open_instrument

YAML = Path(__file__).resolve().parents[1] / "drivers" / "instruments" / "bench-sim.yaml"
SMU, DMM = "GPIB0::24::INSTR", "USB0::0x2A8D::0x1301::MY12345678::0::INSTR"


def test_smu_expected_exchange() -> None:
    script = Script([(":SOUR:FUNC VOLT", None), (":SENS:CURR:PROT 0.002", None),
                     (":SOUR:VOLT 0.5", None), (":OUTP ON", None), (":MEAS:CURR?", "+4.5E-05"),
                     (":SYST:RSEN ON", None), (":MEAS:RES?", "1.1075E+04"), (":OUTP OFF", None)])
    smu = Smu(script)
    smu.source_voltage(0.5, compliance_a=2e-3)
    smu.output(True)
    assert smu.measure_current() == pytest.approx(4.5e-5)
    assert smu.four_wire_resistance() == pytest.approx(11075.0)
    smu.output(False)
    script.done()


def test_non_numeric_reply_is_a_clear_error() -> None:
    with pytest.raises(DriverError, match="not a number"):
        Dmm(Script([("MEAS:VOLT:DC?", "OVLD")])).measure_voltage()


@pytest.fixture
def sim(tmp_path: Path) -> str:
    """A fresh copy of the YAML per test (pyvisa-sim keeps state per path in a process)."""
    path = tmp_path / "bench-sim.yaml"
    shutil.copy(YAML, path)
    return f"{path}@sim"


def test_simulated_smu(sim: str) -> None:
    smu = Smu(open_instrument(SMU, sim))
    assert "MODEL 2400" in smu.identify()
    smu.source_voltage(1.25, compliance_a=2e-3)
    smu.output(True)
    assert float(smu.ask(":SOUR:VOLT?")) == pytest.approx(1.25)
    assert float(smu.ask(":SENS:CURR:PROT?")) == pytest.approx(2e-3)
    assert smu.ask(":OUTP?") == "ON"
    assert smu.measure_current() == pytest.approx(1e-4)
    assert smu.four_wire_resistance() == pytest.approx(11075.0)
    smu.check_errors()
    smu.write(":NOT:A:COMMAND")
    with pytest.raises(DriverError, match="-100"):
        smu.check_errors()
    smu.close()


def test_simulated_dmm(sim: str) -> None:
    dmm = Dmm(open_instrument(DMM, sim))
    assert "34461A" in dmm.identify()
    assert dmm.measure_voltage() == pytest.approx(0.49987)
    assert dmm.four_wire_resistance() == pytest.approx(11075.0)
    dmm.check_errors()


def test_missing_visa_library_is_a_user_error() -> None:
    """No VISA implementation on this machine: one clear line, not a traceback."""
    with pytest.raises(DeviceNotFound, match="GPIB0::24::INSTR.*VISA implementation"):
        open_instrument(SMU, "")
