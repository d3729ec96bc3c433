"""A whole emulated bench (controller on a pty, DAQ, one traffic log) and the wiring
mistakes that can be injected into it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import serial

from clln.controller.errors import ProtocolError
from clln.simulator.backend import SimulatedBackend
from clln.simulator.emulator.daq import EmulatedDaq
from clln.simulator.emulator.firmware import PotFirmware
from clln.simulator.emulator.link import Faults, PtyLink, TrafficLog
from clln.simulator.emulator.model import BenchModel
from clln.simulator.smu import EmulatedSmu


class EmulatedBench:
    """A whole emulated bench: the potentiometer controller on a pty, the DAQ, one log.

    Parameters
    ----------
    model : the bench model (stepped SimulatedBackend with the bench's network and roles).
    n_pots : pots on the emulated controller (at least the number of edges).
    chain : (m,) pot index of every edge.
    ai_nodes : (n_ai,) node read by each AI channel.
    faults : faults on the serial link.
    log_path : optional file receiving the traffic log as JSON lines.
    controller : a potentiometer controller already served on a tty, used instead of the
        Python firmware: an object with ``path``, ``taps``, ``lock`` and ``close()``, such
        as :class:`clln.simulator.avr.SimavrPotBank` (the compiled firmware under simavr).
    boot_delay : seconds the emulated controller is deaf after a reset (its bootloader).
    clamp_switch : whether the clamp outputs are switched (see :class:`EmulatedDaq`).
    wiring : wiring mistakes (swapped AI channels, pots swapped in the chain): the
        emulated bench is wired differently from what ``ai_nodes`` and ``chain`` say.
    """

    def __init__(self, model: SimulatedBackend, *, n_pots: int, chain: np.ndarray,
                 ai_nodes: np.ndarray, faults: Faults | None = None,
                 log_path: str | Path | None = None,
                 smu_nodes: tuple[int, int] | None = None, smu_seed: int = 0,
                 smu_model: str = "2400", controller: Any = None,
                 boot_delay: float = 0.05, clamp_switch: bool = True,
                 wiring: WiringFaults | None = None) -> None:
        assert model.edges.kind == "stepped"
        wiring = wiring or WiringFaults()
        ai_nodes, chain = wiring.apply(np.asarray(ai_nodes, dtype=np.int64), np.asarray(chain, dtype=np.int64))
        self.log = TrafficLog(log_path)
        if controller is None:
            self.firmware = PotFirmware(n_pots, model.edges.n_taps,  # type: ignore[union-attr]
                                        boot_delay=boot_delay)
            self.link = PtyLink(self.firmware, faults=faults, log=self.log)
        else:
            self.firmware = self.link = controller
        self.daq = EmulatedDaq(model, self.firmware, ai_nodes, chain, self.log, clamp_switch=clamp_switch)
        self.model = model
        self.chain = chain
        self.wiring = wiring
        self.smu: EmulatedSmu | None = None
        if smu_nodes is not None:
            if not isinstance(model, BenchModel):
                raise TypeError("an emulated SMU needs a BenchModel")
            self.smu = EmulatedSmu(model, smu_nodes, sync=self.sync_taps, seed=smu_seed,
                                   instrument=smu_model)

    def sync_taps(self) -> None:
        """Put the model's edges at the firmware's taps (the DAQ does this per acquisition)."""
        with self.firmware.lock:
            taps = self.firmware.taps[self.chain]
        self.model.set_taps(taps)

    def serial_bytes(self) -> int:
        """Bytes that crossed the serial link so far, both directions."""
        return sum(len(e["data"]) // 2 for e in self.log.entries
                   if e["channel"] in ("serial-in", "serial-out"))

    @property
    def port(self) -> str:
        """The tty path the host driver opens."""
        return self.link.path

    @property
    def port_class(self) -> type[serial.Serial]:
        """The pyserial class that opens :attr:`port` with the Arduino's DTR reset wired."""
        return self.link.port_class()

    def close(self) -> None:
        self.link.close()


@dataclass(frozen=True)
class WiringFaults:
    """Wiring mistakes injected into the emulated bench (an emulator option: a bench file
    describes the wiring as intended).

    Attributes
    ----------
    swap_ai : pairs of AI channel indices whose inputs are exchanged (channel a reads the
        node the map gives to channel b, and the other way round).
    swap_chain : pairs of chain positions whose pots are exchanged (the pot at position p
        sits in the edge the map puts at position q).
    """

    swap_ai: tuple[tuple[int, int], ...] = ()
    swap_chain: tuple[tuple[int, int], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.swap_ai or self.swap_chain)

    def apply(self, ai_nodes: np.ndarray, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (ai_nodes, chain) the emulated bench really has."""
        ai_nodes, chain = ai_nodes.copy(), chain.copy()
        for a, b in self.swap_ai:
            ai_nodes[[a, b]] = ai_nodes[[b, a]]
        for p, q in self.swap_chain:
            at_p, at_q = chain == p, chain == q
            chain[at_p], chain[at_q] = q, p
        return ai_nodes, chain

    @classmethod
    def parse(cls, specs: list[str], ai: list[str], chain: list[int]) -> WiringFaults:
        """From ``swap-ai:A:B`` (AI channel names or indices) and ``swap-chain:P:Q``
        (chain positions) strings."""
        swap_ai: list[tuple[int, int]] = []
        swap_chain: list[tuple[int, int]] = []
        for spec in specs:
            parts = spec.split(":")
            if len(parts) != 3 or parts[0] not in ("swap-ai", "swap-chain") or parts[1] == parts[2]:
                raise ProtocolError(f"fault {spec!r}: expected swap-ai:A:B or swap-chain:P:Q with A != B")
            if parts[0] == "swap-ai":
                pair = [ai.index(p) if p in ai else int(p) if p.isdigit() else -1 for p in parts[1:]]
                if not all(0 <= k < len(ai) for k in pair):
                    raise ProtocolError(f"fault {spec!r}: AI channels are {', '.join(ai)} (or 0..{len(ai) - 1})")
                swap_ai.append((pair[0], pair[1]))
            else:
                pair = [int(p) if p.isdigit() else -1 for p in parts[1:]]
                if not all(k in chain for k in pair):
                    raise ProtocolError(f"fault {spec!r}: chain positions in use are "
                                        f"{', '.join(map(str, sorted(chain)))}")
                swap_chain.append((pair[0], pair[1]))
        return cls(tuple(swap_ai), tuple(swap_chain))

    def describe(self) -> dict[str, Any]:
        return {"swap_ai": [list(p) for p in self.swap_ai], "swap_chain": [list(p) for p in self.swap_chain]}

