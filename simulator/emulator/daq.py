"""The emulated DAQ: the DAQ adapter's interface answered from the bench model."""

from __future__ import annotations

import numpy as np

from clln.simulator.backend import SimulatedBackend
from clln.simulator.emulator.firmware import PotFirmware
from clln.simulator.emulator.link import TrafficLog
from clln.simulator.emulator.model import BenchModel


class EmulatedDaq:
    """The DAQ adapter's interface, answered from the bench model.

    Parameters
    ----------
    model : the bench model (a stepped SimulatedBackend; its network's roles say which
        nodes the sources and clamps drive).
    firmware : the emulated potentiometer controller whose taps set the model's edges.
    ai_nodes : (n_ai,) node read by each AI channel.
    chain : (m,) firmware pot index (chain position) of every edge.
    log : traffic log (AO levels written).
    clamp_switch : whether switches connect the clamp outputs only when engaged; without
        them the clamp outputs drive their nodes in every measurement.

    The DAQ's set-up (ranges, averaging window, convert rate, timing) is modelled by the
    bench model's imperfection parameters, which ``clln.benchrun.bench_model`` takes from
    the same ``drivers.daq.plan_daq`` set-up the NI driver is given.
    """

    def __init__(self, model: SimulatedBackend, firmware: PotFirmware, ai_nodes: np.ndarray,
                 chain: np.ndarray, log: TrafficLog | None = None, *, clamp_switch: bool = True) -> None:
        self.model = model
        self.clamp_switch = clamp_switch
        self.firmware = firmware
        self.ai_nodes = np.asarray(ai_nodes, dtype=np.int64)
        self.chain = np.asarray(chain, dtype=np.int64)
        roles = model.network.roles
        self.n_sources, self.n_clamps = len(roles.sources), len(roles.clamps)
        self.n_ao = self.n_sources + self.n_clamps
        self.n_ai = self.ai_nodes.size
        self.log = log or TrafficLog()
        self.ao_levels = np.zeros(self.n_ao)
        self.clamps_engaged = False
        self.acquisitions = 0
        self.parked_acquisitions = 0  # measurements taken while the controller was parked

    def acquire(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        """(B, n_ai) readings and (B,) timestamps for B boundary conditions ao (B, n_ao)."""
        ao = np.atleast_2d(np.asarray(ao, dtype=float))
        with self.firmware.lock:
            taps = self.firmware.taps[self.chain]
            parked = self.firmware.parked or self.firmware.booting
        self.model.set_taps(taps)
        self.parked_acquisitions += parked
        self.log.add("ao", levels=ao[-1].tolist(), samples=int(ao.shape[0]), clamps=clamps_engaged,
                     parked=parked)
        sources = ao[:, : self.n_sources]
        # Without a clamp switch the clamp outputs always hold their nodes.
        clamps = ao[:, self.n_sources:] if clamps_engaged or not self.clamp_switch else None
        meas = self.model.measure(sources, clamps)
        self.ao_levels = ao[-1].copy()  # AO holds the last sample after a finite waveform
        self.clamps_engaged = clamps_engaged
        self.acquisitions += 1
        return meas.voltages[:, self.ai_nodes], meas.timestamps

    @property
    def clamps_switched(self) -> bool:
        """Whether switches disconnect the clamp outputs in free measurements."""
        return self.clamp_switch

    def read_grounded(self, repeats: int) -> np.ndarray:
        """(repeats, n_ai) readings, V, of every AI channel with its input grounded."""
        if not isinstance(self.model, BenchModel):
            return np.zeros((repeats, self.n_ai))
        self.acquisitions += 1
        return self.model.read_grounded(repeats)[:, self.ai_nodes]

    def zero(self) -> None:
        """Every AO to 0 V and the clamp switches open."""
        self.ao_levels = np.zeros(self.n_ao)
        self.clamps_engaged = False
        self.log.add("ao", levels=self.ao_levels.tolist(), samples=0, clamps=False)

    def close(self) -> None:
        self.zero()
