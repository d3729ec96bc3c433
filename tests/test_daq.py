"""The nidaqmx adapter, checked against autospecs of the real nidaqmx classes (the NI
driver cannot be installed here), and its error messages with the real package; the
DAQ set-up (ranges, mains window, convert rate) against independent computations."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace
from unittest.mock import call, create_autospec

import nidaqmx
import nidaqmx.constants
import nidaqmx.errors
import numpy as np
import pytest
from nidaqmx.constants import LineGrouping, TaskMode
from nidaqmx.stream_readers import AnalogMultiChannelReader
from nidaqmx.stream_writers import AnalogMultiChannelWriter
from nidaqmx.task import Timing
from nidaqmx.task.collections import AIChannelCollection, AOChannelCollection, DOChannelCollection

from clln.drivers.daq import DaqConfig, NidaqmxDaq, PlanError, mains_window, plan_daq
from clln.drivers.errors import DaqError, DeviceNotFound

CONFIG = DaqConfig("Dev1", ("ao0", "ao1"), ("ai0", "ai1", "ai2"), "RSE", "port0/line0",
                   sample_rate=1000.0, settle_samples=2, average_samples=4, convert_rate=50_000.0)


def _lines_in(spec: str) -> int:
    """Lines named by an NI physical channel string (``Dev1/port0/line0:3,Dev1/port1/line2``),
    counted as the NI-DAQmx documentation defines the syntax."""
    count = 0
    for part in spec.split(","):
        m = re.search(r"line(\d+)(?::(\d+))?$", part)
        assert m is not None, f"not a line: {part}"
        count += 1 if m.group(2) is None else abs(int(m.group(2)) - int(m.group(1))) + 1
    return count


def make_task() -> object:
    task = create_autospec(nidaqmx.Task, instance=True)
    task.__enter__.return_value = task
    task.ao_channels = create_autospec(AOChannelCollection, instance=True)
    task.ai_channels = create_autospec(AIChannelCollection, instance=True)
    task.do_channels = create_autospec(DOChannelCollection, instance=True)
    task.timing = create_autospec(Timing, instance=True, spec_set=True)  # only real property names
    do = {"channels": 0, "lines_per_channel": 0}

    def add_do_chan(lines: str, name_to_assign_to_lines: str = "",
                    line_grouping: LineGrouping = LineGrouping.CHAN_FOR_ALL_LINES) -> None:
        n = _lines_in(lines)
        if line_grouping == LineGrouping.CHAN_PER_LINE:
            do["channels"], do["lines_per_channel"] = n, 1
        else:
            do["channels"], do["lines_per_channel"] = 1, n

    def write(data: object, auto_start: object = None, timeout: float = 10.0) -> int:
        """nidaqmx's Task.write rules for DO: one boolean per channel when each channel
        has one line (a list for several channels), an unsigned integer per channel when
        a channel has several lines."""
        if not do["channels"]:
            return 1
        values = data if isinstance(data, list) else [data]
        if do["lines_per_channel"] > 1:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise nidaqmx.errors.DaqError("Write failed: multiple lines per channel need uint32", -1)
        elif not all(isinstance(v, bool | np.bool_) for v in values):
            raise nidaqmx.errors.DaqError("Write failed: one line per channel needs booleans", -1)
        if len(values) != do["channels"]:
            raise nidaqmx.errors.DaqError(f"Write failed: {do['channels']} channels, {len(values)} values", -1)
        return 1

    task.do_channels.add_do_chan.side_effect = add_do_chan
    task.write.side_effect = write
    return task


def fake_api(tasks: list[object], reader_data: np.ndarray | None = None) -> SimpleNamespace:
    def new_task(*args: object, **kwargs: object) -> object:
        task = make_task()
        tasks.append(task)
        return task

    writer_cls = create_autospec(AnalogMultiChannelWriter)
    reader_cls = create_autospec(AnalogMultiChannelReader)

    def fill(data: np.ndarray, number_of_samples_per_channel: int = -1, timeout: float = 10.0) -> int:
        if reader_data is not None:
            data[:] = reader_data[:, :data.shape[1]]
        return number_of_samples_per_channel

    reader_cls.return_value.read_many_sample.side_effect = fill
    return SimpleNamespace(
        Task=create_autospec(nidaqmx.Task, side_effect=new_task),
        constants=nidaqmx.constants, errors=nidaqmx.errors,
        stream_writers=SimpleNamespace(AnalogMultiChannelWriter=writer_cls),
        stream_readers=SimpleNamespace(AnalogMultiChannelReader=reader_cls),
    )


def commits(task: object) -> int:
    return task.control.call_args_list.count(call(TaskMode.TASK_COMMIT))  # type: ignore[attr-defined]


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
    do_task.do_channels.add_do_chan.assert_called_once_with(
        "Dev1/port0/line0", line_grouping=LineGrouping.CHAN_PER_LINE)
    do_task.write.assert_called_once_with(True, auto_start=True)
    assert ao_task.ao_channels.add_ao_voltage_chan.call_args_list == [
        call("Dev1/ao0", min_val=-10.0, max_val=10.0), call("Dev1/ao1", min_val=-10.0, max_val=10.0)]
    for k, c in enumerate(ai_task.ai_channels.add_ai_voltage_chan.call_args_list):
        assert c == call(f"Dev1/ai{k}", terminal_config=nidaqmx.constants.TerminalConfiguration.RSE,
                         min_val=-10.0, max_val=10.0)
    # buffers for 32 steps at open; this acquisition's finite count set before its start
    ao_task.timing.cfg_samp_clk_timing.assert_called_once_with(
        1000.0, sample_mode=nidaqmx.constants.AcquisitionType.FINITE, samps_per_chan=32 * per)
    ai_task.timing.cfg_samp_clk_timing.assert_called_once_with(
        1000.0, source="/Dev1/ao/SampleClock", sample_mode=nidaqmx.constants.AcquisitionType.FINITE,
        samps_per_chan=32 * per)
    assert ao_task.timing.samp_quant_samp_per_chan == ai_task.timing.samp_quant_samp_per_chan == total
    assert ai_task.timing.ai_conv_rate == 50_000.0  # set explicitly, not left to NI-DAQmx
    waveform = api.stream_writers.AnalogMultiChannelWriter.return_value.write_many_sample.call_args[0][0]
    assert waveform.shape == (2, total) and np.allclose(waveform[:, ::per].T, ao)
    assert np.allclose(waveform[:, per - 1].T, ao[0])  # each level held for settle + average samples
    # The AI task is armed before the AO task starts it; both are stopped (re-armable).
    assert ai_task.start.called and ao_task.start.called
    assert ai_task.stop.called and ao_task.stop.called
    ao_task.wait_until_done.assert_called_once()


def test_tasks_are_created_and_committed_once_per_run_and_cleared_on_close() -> None:
    per = CONFIG.samples_per_step
    n = 25
    tasks: list[object] = []
    api = fake_api(tasks, np.zeros((3, 40 * per)))
    daq = NidaqmxDaq(CONFIG, api=api)
    for k in range(n):
        daq.acquire(np.full((1 + k % 3, 2), 0.1 * k), clamps_engaged=k % 2 == 0)
    assert api.Task.call_count == 3  # DO, AO, AI: once, not per acquisition
    do_task, ao_task, ai_task = tasks
    assert [commits(t) for t in tasks] == [1, 1, 1]
    assert ao_task.start.call_count == ai_task.start.call_count == n  # re-armed per acquisition
    assert ao_task.stop.call_count == ai_task.stop.call_count == n
    assert not any(t.close.called for t in tasks)
    assert do_task.write.call_count == n  # the switch alternates here: one write per change
    # Batches of 1..3 steps fit the buffers committed at open; the count is set per batch.
    assert ao_task.timing.cfg_samp_clk_timing.call_count == 1
    assert ao_task.timing.samp_quant_samp_per_chan in (per, 2 * per, 3 * per)
    daq.close()
    assert all(t.close.call_count == 1 for t in tasks)  # cleared
    # the last thing before clearing: every AO at 0 V and the clamps open
    last = api.stream_writers.AnalogMultiChannelWriter.return_value.write_many_sample.call_args[0][0]
    assert np.all(last == 0.0) and do_task.write.call_args == call(False, auto_start=True)


def test_a_larger_batch_grows_the_buffers_once() -> None:
    per = CONFIG.samples_per_step
    tasks: list[object] = []
    daq = NidaqmxDaq(CONFIG, api=fake_api(tasks, np.zeros((3, 200 * per))))
    for batch in (2, 100, 2, 100, 50):
        daq.acquire(np.zeros((batch, 2)), clamps_engaged=False)
    _, ao_task, ai_task = tasks
    assert commits(ao_task) == commits(ai_task) == 2  # at open, and when 100 steps first came
    assert ao_task.timing.samp_quant_samp_per_chan == 50 * per


def test_a_two_line_clamp_switch_sets_both_lines() -> None:
    two = DaqConfig("Dev1", ("ao0",), ("ai0",), clamp_switch="port0/line0:1", sample_rate=1000.0,
                    settle_samples=1, average_samples=2)
    tasks: list[object] = []
    daq = NidaqmxDaq(two, api=fake_api(tasks, np.zeros((1, 30))))
    daq.acquire(np.zeros((1, 1)), clamps_engaged=True)
    do_task = tasks[0]
    do_task.do_channels.add_do_chan.assert_called_once_with(
        "Dev1/port0/line0,Dev1/port0/line1", line_grouping=LineGrouping.CHAN_PER_LINE)
    do_task.write.assert_called_once_with([True, True], auto_start=True)
    # What the old driver did, a bool to one channel of two lines, nidaqmx refuses:
    old = make_task()
    old.do_channels.add_do_chan("Dev1/port0/line0:1")
    with pytest.raises(nidaqmx.errors.DaqError):
        old.write(True)


def test_zero_writes_zero_volts_and_opens_the_clamps() -> None:
    tasks: list[object] = []
    api = fake_api(tasks)
    NidaqmxDaq(CONFIG, api=api).zero()
    do_task, ao_task, _ = tasks
    do_task.write.assert_called_once_with(False, auto_start=True)
    waveform = api.stream_writers.AnalogMultiChannelWriter.return_value.write_many_sample.call_args[0][0]
    assert waveform.shape == (2, 2) and np.all(waveform == 0.0)
    assert ao_task.start.called and ao_task.stop.called


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
    with pytest.raises(DaqError, match=r"DAQ Dev1: opening the tasks failed \(NI-DAQmx error -200220\)"):
        NidaqmxDaq(CONFIG, api=api).zero()


def test_wrong_batch_shape_is_refused() -> None:
    with pytest.raises(ValueError):
        NidaqmxDaq(CONFIG, api=fake_api([])).acquire(np.zeros((2, 3)), clamps_engaged=False)


# -- the set-up ---------------------------------------------------------------------------


def plan(**kw: object) -> DaqConfig:
    args: dict[str, object] = {"max_node_voltage": 2.0, "mains_frequency": 50.0, "node_resistance": 10e3}
    args.update(kw)
    return plan_daq("Dev1", ("ao0", "ao1"), tuple(f"ai{k}" for k in range(9)), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("limit", "ai", "ao"), [(2.0, 2.0, 5.0), (0.15, 0.2, 5.0), (1.0, 1.0, 5.0),
                                                 (5.5, 10.0, 10.0), (10.0, 10.0, 10.0)])
def test_ranges_are_the_smallest_x_series_ranges_covering_the_limit(limit: float, ai: float, ao: float) -> None:
    cfg = plan(max_node_voltage=limit)
    assert (cfg.ai_range, cfg.ao_range) == (ai, ao)


def test_a_range_that_does_not_cover_the_limit_or_is_not_the_devices_is_refused() -> None:
    with pytest.raises(PlanError, match=r"daq.ai_range: 1 V is not allowed; allowed: 2, 5, 10"):
        plan(ai_range=1.0)
    with pytest.raises(PlanError, match=r"daq.ai_range: 3 V is not allowed"):
        plan(ai_range=3.0)
    with pytest.raises(PlanError, match=r"daq.ao_range: 7 V is not allowed; allowed: 5, 10"):
        plan(ao_range=7.0)
    with pytest.raises(PlanError, match=r"daq.ai_range: no AI range covers .* 12 V"):
        plan(max_node_voltage=12.0)


@pytest.mark.parametrize(("rate", "mains", "samples", "periods"), [
    (10_000.0, 50.0, 200, 1), (10_000.0, 60.0, 500, 3), (12_000.0, 60.0, 200, 1), (5_000.0, 60.0, 250, 3)])
def test_the_averaging_window_is_whole_mains_periods(rate: float, mains: float, samples: int,
                                                     periods: int) -> None:
    assert mains_window(rate, mains) == (samples, periods)
    assert samples / rate == pytest.approx(periods / mains, rel=1e-12)


def test_a_rate_without_a_whole_mains_window_names_the_key() -> None:
    with pytest.raises(PlanError, match=r"daq.sample_rate: 7777 S/s .* allowed: a multiple of 50 S/s"):
        plan(sample_rate=7777.0)


def test_the_convert_rate_settles_the_worst_node_to_16_bits() -> None:
    cfg = plan(node_resistance=10e3, input_capacitance=100e-12)
    interval = 1.0 / cfg.convert_rate  # type: ignore[operator]
    # a full-scale step decays as exp(-t / RC): after the interval it is within one LSB
    assert math.exp(-interval / (10e3 * 100e-12)) <= 2.0**-16
    assert interval < 1.2e-5  # and not much slower than that needs
    assert 9 * interval <= 1 / cfg.sample_rate
    fast = plan(node_resistance=10.0)  # low impedance: as fast as the ADC allows (1 MS/s)
    assert fast.convert_rate == pytest.approx(1e6)


def test_a_sample_rate_the_scan_cannot_settle_in_is_refused_with_the_rate_allowed() -> None:
    with pytest.raises(PlanError, match=r"daq.sample_rate: 20000 S/s .* allowed: at most 1\d{4} S/s"):
        plan(sample_rate=20_000.0, node_resistance=10e3)
