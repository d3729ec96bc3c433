"""The nidaqmx adapter, checked against autospecs of the real nidaqmx classes (the NI
driver cannot be installed here), and its error messages with the real package."""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import call, create_autospec

import nidaqmx
import nidaqmx.constants
import nidaqmx.errors
import numpy as np
import pytest
from nidaqmx.stream_readers import AnalogMultiChannelReader
from nidaqmx.stream_writers import AnalogMultiChannelWriter
from nidaqmx.task import Timing
from nidaqmx.task.collections import AIChannelCollection, AOChannelCollection, DOChannelCollection

from clln.drivers.daq import DaqConfig, NidaqmxDaq
from clln.drivers.errors import DaqError, DeviceNotFound

CONFIG = DaqConfig("Dev1", ("ao0", "ao1"), ("ai0", "ai1", "ai2"), "RSE", "port0/line0",
                   sample_rate=1000.0, settle_samples=2, average_samples=4)


def make_task() -> object:
    task = create_autospec(nidaqmx.Task, instance=True)
    task.__enter__.return_value = task
    task.ao_channels = create_autospec(AOChannelCollection, instance=True)
    task.ai_channels = create_autospec(AIChannelCollection, instance=True)
    task.do_channels = create_autospec(DOChannelCollection, instance=True)
    task.timing = create_autospec(Timing, instance=True)
    return task


def fake_api(tasks: list[object], reader_data: np.ndarray | None = None) -> SimpleNamespace:
    def new_task(*args: object, **kwargs: object) -> object:
        task = make_task()
        tasks.append(task)
        return task

    writer_cls = create_autospec(AnalogMultiChannelWriter)
    reader_cls = create_autospec(AnalogMultiChannelReader)

    def fill(data: np.ndarray, number_of_samples_per_channel: int = -1, timeout: float = 10.0) -> int:
        assert reader_data is not None
        data[:] = reader_data
        return number_of_samples_per_channel

    reader_cls.return_value.read_many_sample.side_effect = fill
    return SimpleNamespace(
        Task=create_autospec(nidaqmx.Task, side_effect=new_task),
        constants=nidaqmx.constants, errors=nidaqmx.errors,
        stream_writers=SimpleNamespace(AnalogMultiChannelWriter=writer_cls),
        stream_readers=SimpleNamespace(AnalogMultiChannelReader=reader_cls),
    )


def test_construction_does_no_io() -> None:
    tasks: list[object] = []
    NidaqmxDaq(CONFIG, api=fake_api(tasks))
    assert tasks == []


def test_a_batch_is_one_hardware_timed_waveform() -> None:
    batch, per = 3, 6
    total = batch * per
    # Channel c reads 10 c + b during sample b's window, and junk while settling.
    i = np.arange(total)
    data = np.array([10 * c + i // per + np.where(i % per < 2, 100.0, 0.0) for c in range(3)])
    tasks: list[object] = []
    api = fake_api(tasks, data)
    daq = NidaqmxDaq(CONFIG, api=api, clock=lambda: 50.0)
    ao = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    readings, stamps = daq.acquire(ao, clamps_engaged=True)
    assert np.allclose(readings, [[0, 10, 20], [1, 11, 21], [2, 12, 22]])  # settling discarded
    assert np.allclose(stamps, 50.0 + np.array([6, 12, 18]) / 1000.0)
    do_task, ao_task, ai_task = tasks
    do_task.do_channels.add_do_chan.assert_called_once_with("Dev1/port0/line0")
    do_task.write.assert_called_once_with(True)
    assert ao_task.ao_channels.add_ao_voltage_chan.call_args_list == [
        call("Dev1/ao0", min_val=-10.0, max_val=10.0), call("Dev1/ao1", min_val=-10.0, max_val=10.0)]
    for k, c in enumerate(ai_task.ai_channels.add_ai_voltage_chan.call_args_list):
        assert c == call(f"Dev1/ai{k}", terminal_config=nidaqmx.constants.TerminalConfiguration.RSE,
                         min_val=-10.0, max_val=10.0)
    ao_task.timing.cfg_samp_clk_timing.assert_called_once_with(
        1000.0, sample_mode=nidaqmx.constants.AcquisitionType.FINITE, samps_per_chan=total)
    ai_task.timing.cfg_samp_clk_timing.assert_called_once_with(
        1000.0, source="/Dev1/ao/SampleClock", sample_mode=nidaqmx.constants.AcquisitionType.FINITE,
        samps_per_chan=total)
    waveform = api.stream_writers.AnalogMultiChannelWriter.return_value.write_many_sample.call_args[0][0]
    assert waveform.shape == (2, total) and np.allclose(waveform[:, ::per].T, ao)
    assert np.allclose(waveform[:, per - 1].T, ao[0])  # each level held for settle + average samples
    # The AI task is armed before the AO task starts it.
    assert ai_task.start.called and ao_task.start.called
    ao_task.wait_until_done.assert_called_once()


def test_zero_writes_zero_volts_and_opens_the_clamps() -> None:
    tasks: list[object] = []
    NidaqmxDaq(CONFIG, api=fake_api(tasks)).zero()
    do_task, ao_task = tasks
    do_task.write.assert_called_once_with(False)
    ao_task.write.assert_called_once_with([0.0, 0.0], auto_start=True)


def test_missing_ni_driver_is_a_clear_user_error() -> None:
    """The real nidaqmx package without the NI driver raises DaqNotFoundError (not a DaqError)."""
    with pytest.raises(DeviceNotFound, match="NI-DAQmx is not installed.*--emulate"):
        NidaqmxDaq(CONFIG).zero()


def test_daq_errors_become_clear_messages() -> None:
    tasks: list[object] = []
    api = fake_api(tasks)

    def broken(*args: object, **kwargs: object) -> None:
        raise nidaqmx.errors.DaqError("Device identifier is invalid.\nmore", -200220)

    api.Task.side_effect = broken
    with pytest.raises(DaqError, match=r"DAQ Dev1: zeroing the outputs failed \(NI-DAQmx error -200220\)"):
        NidaqmxDaq(CONFIG, api=api).zero()


def test_wrong_batch_shape_is_refused() -> None:
    with pytest.raises(ValueError):
        NidaqmxDaq(CONFIG, api=fake_api([])).acquire(np.zeros((2, 3)), clamps_engaged=False)
