"""A backend that passes the bare NetworkBackend seam through to another one and
declares no optional capability: tests subclass it to watch what the controller asks."""

from __future__ import annotations

import numpy as np

from clln.controller import NetworkBackend
from clln.controller.backend import Applied, EdgeActuators, EdgeState, Measurement
from clln.controller.network import Network


class SeamOnly:
    """``inner`` behind the seam only (no twin measurement, no checkpoint state)."""

    def __init__(self, inner: NetworkBackend) -> None:
        self.inner = inner

    @property
    def network(self) -> Network:
        return self.inner.network

    @property
    def edges(self) -> EdgeActuators:
        return self.inner.edges

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> Measurement:
        return self.inner.measure(sources, clamps)

    def adjust(self, commands: np.ndarray) -> Applied:
        return self.inner.adjust(commands)

    def read_edges(self) -> EdgeState:
        return self.inner.read_edges()

    def safe(self) -> None:
        self.inner.safe()

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict[str, object]:
        return self.inner.describe()
