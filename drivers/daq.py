"""NI-DAQ voltage I/O through ``nidaqmx``, behind a small interface.

:class:`DaqInterface` is all a bench needs from a DAQ: impose a batch of analog
output levels (sources and clamps), let the network settle, read every analog input
averaged, and zero the outputs. :class:`NidaqmxDaq` implements it with one
hardware-timed finite AO waveform per batch (each boundary condition held for
``settle_samples + average_samples`` sample periods) and an AI task clocked by the AO
sample clock, so every reading is taken at a known time after its step. The emulated
bench (``clln.simulator.bench.EmulatedDaq``) implements the same interface.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from clln.drivers.errors import DaqError, DeviceNotFound

TerminalConfig = Literal["RSE", "NRSE", "DIFF", "PSEUDO_DIFF"]


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
    """One DAQ device's channels and timing (from the bench file).

    Attributes
    ----------
    device : NI device name, e.g. ``Dev1``.
    ao_channels : AO channel names in the order sources then clamps, e.g. ``ao0``.
    ai_channels : AI channel names, one per measured node, e.g. ``ai0``.
    terminal_config : AI terminal configuration.
    clamp_switch : digital line closing the clamp switches (``port0/line0``), or None.
    ao_range, ai_range : +- volts of the output and input ranges.
    sample_rate : samples per second per channel.
    settle_samples : samples discarded after each step (settling).
    average_samples : samples averaged per reading.
    timeout : seconds allowed per acquisition beyond its duration.
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

    def physical(self, channel: str) -> str:
        return f"{self.device}/{channel}"


class NidaqmxDaq:
    """:class:`DaqInterface` on an NI-DAQmx device. Construction does no I/O.

    Parameters
    ----------
    config : channels and timing.
    api : the ``nidaqmx`` module (tests pass one built from autospecs of its classes).
    clock : wall clock for timestamps.
    """

    def __init__(self, config: DaqConfig, *, api: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._api = api
        self.clock = clock
        self.n_ao = len(config.ao_channels)
        self.n_ai = len(config.ai_channels)
        self.acquisitions = 0

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

    def _switch(self, task: Any, engaged: bool) -> None:
        cfg = self.config
        if cfg.clamp_switch is not None:
            task.do_channels.add_do_chan(cfg.physical(cfg.clamp_switch))
            task.write(bool(engaged))

    def acquire(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        ao = np.atleast_2d(np.asarray(ao, dtype=float))
        if ao.shape[1] != self.n_ao:
            raise ValueError(f"ao must be (B, {self.n_ao}), got {ao.shape}")
        batch = ao.shape[0]
        per = cfg.settle_samples + cfg.average_samples
        total = batch * per
        waveform = np.ascontiguousarray(np.repeat(ao.T, per, axis=1))  # (n_ao, total)
        data = np.zeros((self.n_ai, total))
        nidaqmx = self.api
        constants = nidaqmx.constants
        duration = total / cfg.sample_rate + cfg.timeout

        def run() -> float:
            with nidaqmx.Task() as do_task, nidaqmx.Task() as ao_task, nidaqmx.Task() as ai_task:
                self._switch(do_task, clamps_engaged)
                for ch in cfg.ao_channels:
                    ao_task.ao_channels.add_ao_voltage_chan(
                        cfg.physical(ch), min_val=-cfg.ao_range, max_val=cfg.ao_range)
                for ch in cfg.ai_channels:
                    ai_task.ai_channels.add_ai_voltage_chan(
                        cfg.physical(ch),
                        terminal_config=constants.TerminalConfiguration[cfg.terminal_config],
                        min_val=-cfg.ai_range, max_val=cfg.ai_range)
                ao_task.timing.cfg_samp_clk_timing(
                    cfg.sample_rate, sample_mode=constants.AcquisitionType.FINITE,
                    samps_per_chan=total)
                ai_task.timing.cfg_samp_clk_timing(
                    cfg.sample_rate, source=f"/{cfg.device}/ao/SampleClock",
                    sample_mode=constants.AcquisitionType.FINITE, samps_per_chan=total)
                writer = nidaqmx.stream_writers.AnalogMultiChannelWriter(ao_task.out_stream,
                                                                         auto_start=False)
                writer.write_many_sample(waveform, timeout=duration)
                reader = nidaqmx.stream_readers.AnalogMultiChannelReader(ai_task.in_stream)
                ai_task.start()  # armed: samples on the AO sample clock
                started = self.clock()
                ao_task.start()
                reader.read_many_sample(data, number_of_samples_per_channel=total, timeout=duration)
                ao_task.wait_until_done(timeout=duration)
                return started

        started = self._guard("acquisition", run)
        self.acquisitions += 1
        readings = data.reshape(self.n_ai, batch, per)[:, :, cfg.settle_samples:].mean(axis=2).T
        stamps = started + (np.arange(1, batch + 1) * per) / cfg.sample_rate
        return readings, stamps

    def read_grounded(self, repeats: int) -> np.ndarray:
        """The AI offset with the input grounded, read on the device's internal channel
        ``_aignd_vs_aignd`` (X-series): a multiplexed device has one amplifier and one
        ADC behind every channel, so that offset applies to every AI channel.

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
            with nidaqmx.Task() as ai_task:
                ai_task.ai_channels.add_ai_voltage_chan(
                    cfg.physical("_aignd_vs_aignd"), min_val=-cfg.ai_range, max_val=cfg.ai_range)
                ai_task.timing.cfg_samp_clk_timing(
                    cfg.sample_rate, sample_mode=constants.AcquisitionType.FINITE, samps_per_chan=total)
                reader = nidaqmx.stream_readers.AnalogMultiChannelReader(ai_task.in_stream)
                reader.read_many_sample(data, number_of_samples_per_channel=total, timeout=duration)

        self._guard("reading the grounded input", run)
        self.acquisitions += 1
        per = data.reshape(repeats, cfg.average_samples).mean(axis=1)
        return np.repeat(per[:, None], self.n_ai, axis=1)

    def zero(self) -> None:
        cfg = self.config
        nidaqmx = self.api

        def run() -> None:
            with nidaqmx.Task() as do_task, nidaqmx.Task() as ao_task:
                self._switch(do_task, False)
                for ch in cfg.ao_channels:
                    ao_task.ao_channels.add_ao_voltage_chan(
                        cfg.physical(ch), min_val=-cfg.ao_range, max_val=cfg.ao_range)
                ao_task.write([0.0] * self.n_ao, auto_start=True)

        self._guard("zeroing the outputs", run)

    def close(self) -> None:
        self.zero()
