"""The emulated bench's model: the simulator with what only a physical bench has (edge
faults, grounded-input readings, the two-point resistance an SMU measures)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clln.controller.backend import SteppedEdges
from clln.controller.errors import ProtocolError
from clln.simulator.backend import SimulatedBackend
from clln.simulator.imperfections import adc_read


@dataclass(frozen=True)
class EdgeFaults:
    """Edge faults injected into the bench model.

    Attributes
    ----------
    stuck : edge -> tap its wiper is stuck at: tap commands are ignored (the
        potentiometer's register still reads back what was written).
    open : edges that conduct only ``open_conductance`` (a broken trace: 1 GOhm of
        leakage, so the physics stays solvable even when an open edge isolates a node).
    short : edges bypassed down to ``short_resistance`` (a solder bridge across the
        series resistor and the pot).
    """

    stuck: Mapping[int, int] = field(default_factory=dict)
    open: tuple[int, ...] = ()
    short: tuple[int, ...] = ()
    open_conductance: float = 1e-9
    short_resistance: float = 10.0

    def __bool__(self) -> bool:
        return bool(self.stuck or self.open or self.short)

    @classmethod
    def parse(cls, specs: list[str], n_edges: int, n_taps: int) -> EdgeFaults:
        """From ``stuck:EDGE[:TAP]``, ``open:EDGE``, ``short:EDGE`` strings (the stuck tap
        defaults to the middle one)."""
        stuck: dict[int, int] = {}
        opened: list[int] = []
        shorted: list[int] = []
        for spec in specs:
            parts = spec.split(":")
            try:
                kind, edge = parts[0], int(parts[1])
                tap = int(parts[2]) if len(parts) > 2 else n_taps // 2
                if len(parts) > (3 if kind == "stuck" else 2):
                    raise ValueError
            except (IndexError, ValueError):
                raise ProtocolError(f"fault {spec!r}: expected stuck:EDGE[:TAP], open:EDGE or "
                                    f"short:EDGE") from None
            if kind not in ("stuck", "open", "short"):
                raise ProtocolError(f"fault {spec!r}: unknown kind {kind!r}; allowed: stuck, open, short")
            if not 0 <= edge < n_edges:
                raise ProtocolError(f"fault {spec!r}: edge {edge} is not in 0..{n_edges - 1}")
            if not 0 <= tap < n_taps:
                raise ProtocolError(f"fault {spec!r}: tap {tap} is not in 0..{n_taps - 1}")
            if kind == "stuck":
                stuck[edge] = tap
            else:
                (opened if kind == "open" else shorted).append(edge)
        return cls(stuck, tuple(opened), tuple(shorted))

    def describe(self) -> dict[str, Any]:
        return {"stuck": {str(k): v for k, v in self.stuck.items()}, "open": list(self.open),
                "short": list(self.short)}


class BenchModel(SimulatedBackend):
    """The emulated bench's model: a stepped :class:`SimulatedBackend` with edge faults,
    grounded-input readings and the two-point resistance an SMU measures.

    Parameters are those of :class:`SimulatedBackend`, plus ``faults``.
    """

    def __init__(self, *args: Any, faults: EdgeFaults | None = None, **kwargs: Any) -> None:
        self.faults = faults or EdgeFaults()
        super().__init__(*args, **kwargs)
        m = self.network.n_edges
        bad = [j for j in (*self.faults.stuck, *self.faults.open, *self.faults.short) if not 0 <= j < m]
        if bad:
            raise ProtocolError(f"faults name edges {bad}, not in 0..{m - 1}")
        if self.faults.stuck:
            state = self.read_edges()
            assert state.taps is not None
            self.set_taps(state.taps)

    def set_taps(self, taps: np.ndarray) -> None:
        """Commanded taps; a stuck wiper stays where it is stuck."""
        taps = np.array(taps, dtype=np.int64)
        for edge, tap in self.faults.stuck.items():
            taps[edge] = tap
        super().set_taps(taps)

    def true_conductances(self, twin: int = 0, time: float | None = None) -> np.ndarray:
        g = super().true_conductances(twin, time)
        if not (self.faults.open or self.faults.short):
            return g
        g = np.array(g, dtype=float)
        g[list(self.faults.open)] = self.faults.open_conductance
        g[list(self.faults.short)] = 1.0 / self.faults.short_resistance
        return g

    def true_table(self) -> np.ndarray:
        """(m, n_taps) true conductance (S) of every edge at every tap, faults included, at
        the reference temperature. Emulator only: a bench has no such oracle."""
        edges = self.edges
        assert isinstance(edges, SteppedEdges)
        m, n_taps = edges.table.shape
        bench = self._bench
        if bench is None:
            table = edges.table.copy()
        else:
            twin = bench.twins[0]
            assert twin.fixed is not None and twin.element is not None
            table = 1.0 / (twin.fixed + twin.element)
        for edge, tap in self.faults.stuck.items():
            table[edge] = table[edge, tap]
        table[list(self.faults.open)] = self.faults.open_conductance
        table[list(self.faults.short)] = 1.0 / self.faults.short_resistance
        return table

    def true_channels(self) -> dict[str, np.ndarray]:
        """The DAQ channels' true errors (per node's AI channel, per AO channel) and the
        source output impedance. Emulator only."""
        bench = self._bench
        n = self.network.n_nodes
        n_ao = len(self.network.roles.sources) + len(self.network.roles.clamps)
        if bench is None:
            return {"ai_gain": np.zeros(n), "ai_offset": np.zeros(n), "ao_gain": np.zeros(n_ao),
                    "ao_offset": np.zeros(n_ao), "source_impedance": np.zeros(n_ao)}
        return {"ai_gain": bench.ai_gain.copy(), "ai_offset": bench.ai_offset.copy(),
                "ao_gain": bench.ao_gain.copy(), "ao_offset": bench.ao_offset.copy(),
                "source_impedance": np.full(n_ao, self.imperfections.source_impedance)}

    def read_grounded(self, repeats: int) -> np.ndarray:
        """(repeats, n) AI readings, V, with every input grounded: each channel's offset,
        noise and quantization (``repeats`` samples of the simulated clock)."""
        n = self.network.n_nodes
        self.clock.advance(repeats)
        bench = self._bench
        if bench is None:
            return np.zeros((repeats, n))
        p = bench.params
        return adc_read(np.zeros((repeats, n)), gain=bench.ai_gain, offset=bench.ai_offset,
                        noise_rms=p.ai_noise_rms, bits=p.ai_bits, full_range=p.ai_range,
                        averaging=p.averaging, rng=self._noise)

    def two_point_resistance(self, a: int, b: int) -> float:
        """Resistance (ohm) between nodes a and b with every output at 0 V: sources held
        through the source output impedance, grounds at 0 V, clamps open (floating)."""
        net = self.network
        n = net.n_nodes
        g = self.true_conductances()
        e = net.edges
        lap = np.zeros((n, n))
        np.add.at(lap, (e[:, 0], e[:, 0]), g)
        np.add.at(lap, (e[:, 1], e[:, 1]), g)
        np.add.at(lap, (e[:, 0], e[:, 1]), -g)
        np.add.at(lap, (e[:, 1], e[:, 0]), -g)
        held = set(net.roles.grounds)
        z = self.imperfections.source_impedance
        for s in net.roles.sources:
            if z > 0:
                lap[s, s] += 1.0 / z
            else:
                held.add(s)
        keep = np.array([i for i in range(n) if i not in held])
        rhs = np.zeros(n)
        rhs[a] += 1.0
        rhs[b] -= 1.0
        v = np.zeros(n)
        v[keep] = np.linalg.solve(lap[np.ix_(keep, keep)], rhs[keep])
        return float(v[a] - v[b])
