"""NI-DAQ voltage I/O through ``nidaqmx``, behind a small interface.

:class:`DaqInterface` is all a bench needs from a DAQ: impose a batch of analog
output levels (sources and clamps), let the network settle, read every analog input
averaged, and zero the outputs. :class:`NidaqmxDaq` implements it as an NI engineer
sets up repeated finite acquisitions: the AO, AI and DO tasks are created, configured
and committed once per run (when the bench opens), re-armed (started and stopped) for
every acquisition, and cleared on close. Each batch is one hardware-timed finite AO
waveform (every boundary condition held for ``settle_samples + average_samples`` sample
periods) with the AI task clocked by the AO sample clock, so every reading is taken at a
known time after its step.

:func:`plan_daq` chooses what a bench file leaves to the DAQ's set-up:

* the AI and AO ranges: the smallest of the device's ranges covering the node limit;
* the averaging window: a whole number of mains periods (50 or 60 Hz), so pickup at
  the mains frequency and its harmonics averages out;
* the AI convert (channel-to-channel) rate: slow enough that the multiplexer settles
  to 16 bits through the highest node impedance (about ln(2^16) = 11.1 time constants
  of R_source C_input), checked against the sample rate and the device's aggregate
  rate.

The emulated bench (``clln.simulator.bench.EmulatedDaq``) implements the same interface
and models the configuration :func:`plan_daq` returns.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from clln.drivers.errors import DaqError, DeviceNotFound

TerminalConfig = Literal["RSE", "NRSE", "DIFF", "PSEUDO_DIFF"]

# NI X-series (e.g. USB/PCIe-6363) analog ranges, +-V.
AI_RANGES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
AO_RANGES = (5.0, 10.0)
AI_BITS = 16
# Each X-series AI range digitizes 5 % beyond its nominal span (the X Series User Manual's
# "nominal resolution assuming 5 % over range": 64 uV on +-2 V, 320 uV on +-10 V).
AI_OVERRANGE = 0.05
# Time constants for a full-scale step to settle to one LSB of a 16-bit converter.
SETTLING_TIME_CONSTANTS = math.log(2**AI_BITS)


def do_lines(spec: str) -> list[str]:
    """The digital lines of an NI line specification: ``port0/line0``,
    ``port0/line0:1`` (a range) or a comma-separated list of those."""
    lines: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(port\d+)/line(\d+)(?::(\d+))?", part)
        if match is None:
            raise ValueError(f"{part!r} is not a digital line; expected portN/lineK or portN/lineK:L")
        port, first, last = match.group(1), int(match.group(2)), match.group(3)
        stop = first if last is None else int(last)
        step = 1 if stop >= first else -1
        lines += [f"{port}/line{k}" for k in range(first, stop + step, step)]
    if len(set(lines)) != len(lines):
        raise ValueError(f"{spec!r} names a line twice")
    return lines


class DaqInterface(Protocol):
    """What a bench needs from its DAQ."""

    n_ao: int
    n_ai: int

    def acquire(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        """Hold each row of ``ao`` (B, n_ao) volts in turn; return the averaged readings
        (B, n_ai) volts and their timestamps (B,) seconds. ``clamps_engaged`` closes the
        switches that connect the clamp outputs to their nodes."""
        ...

    def zero(self) -> None:
        """Every AO channel to 0 V and the clamp switches open."""
        ...

    def read_grounded(self, repeats: int) -> np.ndarray:
        """(repeats, n_ai) readings, V, of the AI channels with their inputs grounded
        (their offsets, for calibration); each reading averages like ``acquire``."""
        ...

    def close(self) -> None:
        ...


@dataclass(frozen=True)
class DaqConfig:
    """One DAQ device's channels and timing (from the bench file, see :func:`plan_daq`).

    Attributes
    ----------
    device : NI device name, e.g. ``Dev1``.
    ao_channels : AO channel names in the order sources then clamps, e.g. ``ao0``.
    ai_channels : AI channel names, one per measured node, e.g. ``ai0``.
    terminal_config : AI terminal configuration.
    clamp_switch : digital line(s) closing the clamp switches (``port0/line0``,
        ``port0/line0:1``), or None (no switch: the clamp outputs always drive their nodes).
    ao_range, ai_range : +- volts of the output and input ranges.
    sample_rate : samples per second per channel.
    settle_samples : samples discarded after each step (settling).
    average_samples : samples averaged per reading.
    timeout : seconds allowed per acquisition beyond its duration.
    convert_rate : AI convert clock (channel to channel), conversions/s; None leaves it
        to NI-DAQmx.
    mains_frequency : Hz; the averaging window spans whole periods of it (None: unknown).
    """

    device: str
    ao_channels: tuple[str, ...]
    ai_channels: tuple[str, ...]
    terminal_config: TerminalConfig = "RSE"
    clamp_switch: str | None = None
    ao_range: float = 10.0
    ai_range: float = 10.0
    sample_rate: float = 10_000.0
    settle_samples: int = 20
    average_samples: int = 16
    timeout: float = 10.0
    convert_rate: float | None = None
    mains_frequency: float | None = None

    def physical(self, channel: str) -> str:
        return f"{self.device}/{channel}"

    @property
    def samples_per_step(self) -> int:
        """Samples each boundary condition is held for (settling plus averaging)."""
        return self.settle_samples + self.average_samples

    @property
    def seconds_per_step(self) -> float:
        return self.samples_per_step / self.sample_rate

    @property
    def convert_interval(self) -> float:
        """Seconds between the conversions of consecutive AI channels (0 if unknown)."""
        return 0.0 if self.convert_rate is None else 1.0 / self.convert_rate


class PlanError(ValueError):
    """A DAQ set-up that cannot work; ``key`` is the bench file's ``[daq]`` key to change."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"daq.{key}: {message}")
        self.key = key


def mains_window(sample_rate: float, mains_frequency: float, min_cycles: int = 1) -> tuple[int, int]:
    """(samples, periods): the fewest samples at ``sample_rate`` that span a whole
    number of mains periods, at least ``min_cycles`` and at most 9 more."""
    max_cycles = min_cycles + 9
    for cycles in range(min_cycles, max_cycles + 1):
        samples = sample_rate * cycles / mains_frequency
        if abs(samples - round(samples)) < 1e-6 * samples and round(samples) >= 2:
            return int(round(samples)), cycles
    raise PlanError("sample_rate", f"{sample_rate:g} S/s has no whole number of samples in up to "
                    f"{max_cycles} periods of {mains_frequency:g} Hz; allowed: a multiple of "
                    f"{mains_frequency:g} S/s (e.g. 10000 at 50 Hz, 12000 at 60 Hz)")


def _pick_range(key: str, kind: str, given: float | None, limit: float, ranges: tuple[float, ...]) -> float:
    """The range in use: ``given`` if it is one of ``ranges`` covering ``limit``, else
    (when None) the smallest that covers it."""
    covering = [r for r in ranges if r >= limit]
    if not covering:
        raise PlanError(key, f"no {kind} range covers limits.max_node_voltage = {limit:g} V; "
                        f"allowed: up to {ranges[-1]:g} V")
    if given is None:
        return min(covering)
    if given not in covering:
        raise PlanError(key, f"{given:g} V is not allowed; allowed: {', '.join(f'{r:g}' for r in covering)} "
                        f"(X-series {kind} ranges covering limits.max_node_voltage = {limit:g} V)")
    return given


def plan_daq(
    device: str, ao_channels: tuple[str, ...], ai_channels: tuple[str, ...], *,
    max_node_voltage: float, mains_frequency: float, node_resistance: float,
    sample_rate: float = 10_000.0, settle_samples: int = 20, mains_cycles: int = 1,
    input_capacitance: float = 100e-12, max_aggregate_rate: float = 1e6,
    terminal_config: TerminalConfig = "RSE", clamp_switch: str | None = None,
    ai_range: float | None = None, ao_range: float | None = None, timeout: float = 10.0,
) -> DaqConfig:
    """The DAQ set-up of a bench; PlanError (naming the ``[daq]`` key) when none works.

    Parameters
    ----------
    max_node_voltage : V, the largest |V| any node may see (the bench's limit).
    mains_frequency : Hz, 50 or 60.
    node_resistance : ohm, the highest source impedance any AI channel sees (a node's
        Thevenin resistance with every edge at its highest resistance).
    input_capacitance : F, the AI input capacitance the multiplexer charges (X-series:
        100 pF).
    max_aggregate_rate : conversions/s the device's ADC allows over all channels.
    ai_range, ao_range : +-V; None picks the smallest device range that covers
        ``max_node_voltage``.
    """
    ai_range = _pick_range("ai_range", "AI", ai_range, max_node_voltage, AI_RANGES)
    ao_range = _pick_range("ao_range", "AO", ao_range, max_node_voltage, AO_RANGES)
    average, _ = mains_window(sample_rate, mains_frequency, mains_cycles)
    n_ai = len(ai_channels)
    settle = SETTLING_TIME_CONSTANTS * node_resistance * input_capacitance
    interval = max(settle, 1.0 / max_aggregate_rate)
    interval = math.ceil(interval * 1e8 - 1e-6) / 1e8  # whole periods of the 100 MHz timebase
    if n_ai * interval * sample_rate > 1.0:
        raise PlanError("sample_rate", f"{sample_rate:g} S/s leaves {1e6 / (sample_rate * n_ai):.3g} us per "
                        f"channel for {n_ai} AI channels, but nodes of up to "
                        f"{node_resistance / 1e3:.3g} kOhm need {interval * 1e6:.3g} us to settle to "
                        f"{AI_BITS} bits through {input_capacitance * 1e12:g} pF; allowed: at most "
                        f"{1.0 / (n_ai * interval):.0f} S/s")
    if clamp_switch is not None:
        try:
            do_lines(clamp_switch)
        except ValueError as exc:
            raise PlanError("clamp_switch", str(exc)) from None
    return DaqConfig(device, tuple(ao_channels), tuple(ai_channels), terminal_config, clamp_switch,
                     ao_range, ai_range, sample_rate, settle_samples, average, timeout,
                     convert_rate=1.0 / interval, mains_frequency=mains_frequency)


class NidaqmxDaq:
    """:class:`DaqInterface` on an NI-DAQmx device. Construction does no I/O; the tasks
    are created on first use (or :meth:`open`) and kept until :meth:`close`.

    Parameters
    ----------
    config : channels and timing.
    api : the ``nidaqmx`` module (tests pass one built from autospecs of its classes).
    clock : wall clock for timestamps.

    Attributes
    ----------
    acquisitions : acquisitions done (grounded readings included).
    commits : task commits done (three at open, plus one per buffer growth).
    """

    def __init__(self, config: DaqConfig, *, api: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._api = api
        self.clock = clock
        self.n_ao = len(config.ao_channels)
        self.n_ai = len(config.ai_channels)
        self.acquisitions = 0
        self.commits = 0
        self._lines = [] if config.clamp_switch is None else do_lines(config.clamp_switch)
        self._tasks: dict[str, Any] = {}
        self._writer: Any = None
        self._reader: Any = None
        self._capacity = 0  # samples per channel the AO/AI buffers are configured for
        self._count = 0  # samples per channel of the next finite acquisition
        self._switch_state: bool | None = None

    @property
    def api(self) -> Any:
        if self._api is None:
            try:
                import nidaqmx
                import nidaqmx.stream_readers
                import nidaqmx.stream_writers
            except ImportError:  # pragma: no cover - nidaqmx is a declared dependency
                raise DeviceNotFound("the nidaqmx package is missing: pip install nidaqmx") from None
            self._api = nidaqmx
        return self._api

    @property
    def clamps_switched(self) -> bool:
        """Whether switches disconnect the clamp outputs in free measurements."""
        return bool(self._lines)

    @property
    def is_open(self) -> bool:
        return bool(self._tasks)

    def _guard(self, action: str, fn: Callable[[], Any]) -> Any:
        """Run fn, turning nidaqmx errors into clear ones."""
        errors = self.api.errors
        try:
            return fn()
        except errors.DaqNotFoundError:
            raise DeviceNotFound(
                "NI-DAQmx is not installed on this machine: install the NI-DAQmx driver from NI, "
                "or use --emulate to run against the emulated bench"
            ) from None
        except errors.DaqError as exc:
            raise DaqError(f"DAQ {self.config.device}: {action} failed "
                           f"(NI-DAQmx error {exc.error_code}): {str(exc).splitlines()[0]}") from None
        except errors.Error as exc:
            raise DaqError(f"DAQ {self.config.device}: {action} failed: {exc}") from None

    # -- task life cycle -------------------------------------------------------

    def open(self, capacity: int | None = None) -> None:
        """Create, configure and commit the AO, AI (and DO) tasks for the run, with
        buffers for ``capacity`` samples per channel (one batch of 32 steps by default)."""
        if self.is_open:
            return
        self._guard("opening the tasks", lambda: self._open(capacity or 32 * self.config.samples_per_step))

    def _open(self, capacity: int) -> None:
        cfg = self.config
        nidaqmx = self.api
        constants = nidaqmx.constants
        tasks: dict[str, Any] = {}
        try:
            if self._lines:
                do_task = tasks["do"] = nidaqmx.Task()
                do_task.do_channels.add_do_chan(
                    ",".join(cfg.physical(line) for line in self._lines),
                    line_grouping=constants.LineGrouping.CHAN_PER_LINE)
            ao_task = tasks["ao"] = nidaqmx.Task()
            for ch in cfg.ao_channels:
                ao_task.ao_channels.add_ao_voltage_chan(
                    cfg.physical(ch), min_val=-cfg.ao_range, max_val=cfg.ao_range)
            ai_task = tasks["ai"] = nidaqmx.Task()
            for ch in cfg.ai_channels:
                ai_task.ai_channels.add_ai_voltage_chan(
                    cfg.physical(ch), terminal_config=constants.TerminalConfiguration[cfg.terminal_config],
                    min_val=-cfg.ai_range, max_val=cfg.ai_range)
            self._tasks = tasks
            self._configure_timing(capacity)
            if "do" in tasks:
                self._commit(tasks["do"])
            self._writer = nidaqmx.stream_writers.AnalogMultiChannelWriter(ao_task.out_stream,
                                                                           auto_start=False)
            self._reader = nidaqmx.stream_readers.AnalogMultiChannelReader(ai_task.in_stream)
        except BaseException:
            self._tasks = {}
            for task in tasks.values():
                task.close()
            raise

    def _commit(self, task: Any) -> None:
        task.control(self.api.constants.TaskMode.TASK_COMMIT)
        self.commits += 1

    def _configure_timing(self, capacity: int) -> None:
        """Finite timing for ``capacity`` samples per channel on the AO sample clock, the
        AI convert rate, and commit (what a later start needs not redo)."""
        cfg = self.config
        constants = self.api.constants
        ao_task, ai_task = self._tasks["ao"], self._tasks["ai"]
        ao_task.timing.cfg_samp_clk_timing(
            cfg.sample_rate, sample_mode=constants.AcquisitionType.FINITE, samps_per_chan=capacity)
        ai_task.timing.cfg_samp_clk_timing(
            cfg.sample_rate, source=f"/{cfg.device}/ao/SampleClock",
            sample_mode=constants.AcquisitionType.FINITE, samps_per_chan=capacity)
        if cfg.convert_rate is not None:
            ai_task.timing.ai_conv_rate = cfg.convert_rate
        self._commit(ao_task)
        self._commit(ai_task)
        self._capacity = self._count = capacity

    def _set_count(self, total: int) -> None:
        """Samples per channel of the next acquisition: the committed buffers grow only
        when a batch is larger than any before it."""
        if total > self._capacity:
            self._configure_timing(total)
        elif total != self._count:
            for key in ("ao", "ai"):
                self._tasks[key].timing.samp_quant_samp_per_chan = total
            self._count = total

    def _switch(self, engaged: bool) -> None:
        """Every clamp-switch line to ``engaged`` (one boolean per line)."""
        if not self._lines or self._switch_state == engaged:
            return
        data: bool | list[bool] = engaged if len(self._lines) == 1 else [engaged] * len(self._lines)
        self._tasks["do"].write(data, auto_start=True)
        self._switch_state = engaged

    def _run(self, waveform: np.ndarray, data: np.ndarray, engaged: bool) -> float:
        """One finite acquisition on the committed tasks: the AI task armed on the AO
        sample clock, the AO task started, every sample read, both stopped."""
        cfg = self.config
        total = waveform.shape[1]
        duration = total / cfg.sample_rate + cfg.timeout
        ao_task, ai_task = self._tasks["ao"], self._tasks["ai"]
        self._set_count(total)
        self._switch(engaged)
        self._writer.write_many_sample(waveform, timeout=duration)
        try:
            ai_task.start()  # armed: samples on the AO sample clock
            started = self.clock()
            ao_task.start()
            self._reader.read_many_sample(data, number_of_samples_per_channel=total, timeout=duration)
            ao_task.wait_until_done(timeout=duration)
        finally:
            ai_task.stop()
            ao_task.stop()
        return started

    # -- the interface -----------------------------------------------------------

    def acquire(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        ao = np.atleast_2d(np.asarray(ao, dtype=float))
        if ao.shape[1] != self.n_ao:
            raise ValueError(f"ao must be (B, {self.n_ao}), got {ao.shape}")
        batch = ao.shape[0]
        per = cfg.samples_per_step
        total = batch * per
        waveform = np.ascontiguousarray(np.repeat(ao.T, per, axis=1))  # (n_ao, total)
        data = np.zeros((self.n_ai, total))
        self.open(max(total, 32 * per))
        started = self._guard("acquisition", lambda: self._run(waveform, data, clamps_engaged))
        self.acquisitions += 1
        readings = data.reshape(self.n_ai, batch, per)[:, :, cfg.settle_samples:].mean(axis=2).T
        stamps = started + (np.arange(1, batch + 1) * per) / cfg.sample_rate
        return readings, stamps

    def read_grounded(self, repeats: int) -> np.ndarray:
        """The AI offset with the input grounded, read on the device's internal channel
        ``_aignd_vs_aignd`` (X-series): a multiplexed device has one amplifier and one
        ADC behind every channel, so that offset applies to every AI channel. Its task is
        created once, on first use, and kept until :meth:`close`.

        Returns
        -------
        (repeats, n_ai) readings, V, each the mean of ``average_samples`` samples.
        """
        cfg = self.config
        total = repeats * cfg.average_samples
        data = np.zeros((1, total))
        nidaqmx = self.api
        constants = nidaqmx.constants
        duration = total / cfg.sample_rate + cfg.timeout

        def run() -> None:
            task = self._tasks.get("ground")
            if task is None:
                task = self._tasks["ground"] = nidaqmx.Task()
                task.ai_channels.add_ai_voltage_chan(
                    cfg.physical("_aignd_vs_aignd"), min_val=-cfg.ai_range, max_val=cfg.ai_range)
                task.timing.cfg_samp_clk_timing(
                    cfg.sample_rate, sample_mode=constants.AcquisitionType.FINITE, samps_per_chan=total)
                self._commit(task)
                self._ground_reader = nidaqmx.stream_readers.AnalogMultiChannelReader(task.in_stream)
            else:
                task.timing.samp_quant_samp_per_chan = total
            try:
                task.start()
                self._ground_reader.read_many_sample(data, number_of_samples_per_channel=total,
                                                     timeout=duration)
            finally:
                task.stop()

        self._guard("reading the grounded input", run)
        self.acquisitions += 1
        per = data.reshape(repeats, cfg.average_samples).mean(axis=1)
        return np.repeat(per[:, None], self.n_ai, axis=1)

    def zero(self) -> None:
        """Every AO channel to 0 V (a two-sample finite waveform on the committed AO
        task) and the clamp switches open."""
        self.open()
        zeros = np.zeros((self.n_ao, 2))
        data = np.zeros((self.n_ai, 2))
        self._guard("zeroing the outputs", lambda: self._run(zeros, data, False))

    def close(self) -> None:
        """Zero the outputs, then clear every task."""
        try:
            if self.is_open or self._api is not None:
                self.zero()
        finally:
            tasks, self._tasks = self._tasks, {}
            self._switch_state = None
            for task in tasks.values():
                try:
                    task.close()
                except Exception:  # noqa: BLE001 - clearing must reach every task
                    pass
