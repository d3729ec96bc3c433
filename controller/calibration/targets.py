"""What the calibration procedures drive: a bench's raw DAQ acquisitions, grounded-input
readings and batched tap writes (:class:`CalibrationTarget`), and an SMU's 4-wire resistance
between two nodes (:class:`ResistanceMeter`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from clln.controller.network import Network

Progress = Callable[[int, int, str], None]
"""progress(done, total, what): called as a long procedure advances."""


@runtime_checkable
class CalibrationTarget(Protocol):
    """What a calibration needs from a bench (raw, uncorrected access).

    Node order and AO order (sources then clamps) are those of ``network``.
    """

    @property
    def network(self) -> Network:
        ...

    def drive_limit(self) -> float:
        """Largest amplitude (V) such that any AO pattern within +-amplitude passes the
        bench's limits (node voltage and worst-case edge current)."""
        ...

    def acquire_raw(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        """Hold each row of ``ao`` (B, n_ao) V, commanded as is (no channel correction);
        return the raw readings (B, n) V in node order and their timestamps (B,) s.
        Limits are checked before anything is written."""
        ...

    def read_grounded(self, repeats: int) -> np.ndarray:
        """(repeats, n) raw readings, V, of every node's AI channel with its input
        grounded (the channel's offset plus noise)."""
        ...

    def write_taps(self, taps: np.ndarray) -> None:
        """Write every edge's tap (m,) at once, verified by read-back."""
        ...

    def read_taps(self) -> np.ndarray:
        """(m,) the taps last written."""
        ...

    def safe(self) -> None:
        """Every output to 0 V, clamps open."""
        ...


@runtime_checkable
class CentersDrive(Protocol):
    """A target whose parts take no negative voltage (e.g. an MCP4131's terminals): its
    drive window is centered above 0 V, and patterns are center +- amplitude."""

    def drive_center(self) -> float:
        """The center (V) of the window whose half-width is ``drive_limit``."""
        ...


@runtime_checkable
class ResistanceMeter(Protocol):
    """A 4-wire two-point resistance between two nodes of the network, taken with every
    output at 0 V and the clamps open (sources and grounds held at 0 V, every other node
    floating), e.g. an SMU on a fixture.

    Attributes
    ----------
    nodes : the two nodes the meter's force and sense leads join.
    """

    nodes: tuple[int, int]

    def measure(self) -> float:
        """Resistance in ohms."""
        ...
