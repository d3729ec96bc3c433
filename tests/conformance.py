"""One conformance suite for every NetworkBackend (docs/contributing.md, "Style").

Subclass :class:`BackendConformance` and provide a ``backend`` fixture that yields a
fresh backend plus the class attribute ``volt_tolerance`` (how far a measured node
voltage may be from its imposed value, V: 0-ish for the ideal simulator, a few mV
for a bench with converters and output impedance). The same tests run on the
simulated backends, the emulated bench and, with a flag, a real bench.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from clln.controller import (
    Applied,
    ContinuousEdges,
    EdgeState,
    Measurement,
    NetworkBackend,
    SteppedEdges,
)


class BackendConformance:
    volt_tolerance: float = 1e-12

    @pytest.fixture
    def backend(self) -> NetworkBackend:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    @staticmethod
    def _sources(backend: NetworkBackend, batch: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.uniform(0.1, 1.0, (batch, len(backend.network.roles.sources)))

    def test_is_a_network_backend(self, backend: NetworkBackend) -> None:
        assert isinstance(backend, NetworkBackend)
        assert isinstance(backend.edges, (ContinuousEdges, SteppedEdges))
        json.dumps(backend.describe())

    def test_free_measurement_shapes_and_boundary(self, backend: NetworkBackend) -> None:
        net = backend.network
        x = self._sources(backend, 5)
        meas = backend.measure(x)
        assert isinstance(meas, Measurement)
        assert meas.voltages.shape == (5, net.n_nodes)
        assert meas.timestamps.shape == (5,) and np.all(np.diff(meas.timestamps) > 0)
        assert np.all(np.isfinite(meas.voltages))
        assert np.allclose(meas.at_nodes(net.roles.sources), x, atol=self.volt_tolerance)
        assert np.allclose(meas.at_nodes(net.roles.grounds), 0.0, atol=self.volt_tolerance)

    def test_clamped_nodes_follow_their_clamps(self, backend: NetworkBackend) -> None:
        net = backend.network
        x = self._sources(backend, 4)
        clamps = np.random.default_rng(1).uniform(0.1, 0.5, (4, len(net.roles.clamps)))
        meas = backend.measure(x, clamps)
        assert np.allclose(meas.at_nodes(net.roles.clamps), clamps, atol=self.volt_tolerance)
        assert np.allclose(meas.at_nodes(net.roles.sources), x, atol=self.volt_tolerance)

    def test_voltages_lie_between_the_boundary_extremes(self, backend: NetworkBackend) -> None:
        x = self._sources(backend, 6)
        v = backend.measure(x).voltages
        lo = min(0.0, x.min()) - self.volt_tolerance
        hi = max(0.0, x.max()) + self.volt_tolerance
        assert np.all(v >= lo) and np.all(v <= hi)  # the maximum principle of a resistor network

    def test_response_is_linear_in_the_sources(self, backend: NetworkBackend) -> None:
        x = self._sources(backend, 3)
        v1 = backend.measure(x).voltages
        v2 = backend.measure(0.5 * x).voltages
        assert np.allclose(v2, 0.5 * v1, atol=2 * self.volt_tolerance)

    def test_bad_shapes_are_refused(self, backend: NetworkBackend) -> None:
        n_src = len(backend.network.roles.sources)
        with pytest.raises(ValueError):
            backend.measure(np.zeros((2, n_src + 1)))
        with pytest.raises(ValueError):
            backend.measure(np.zeros((2, n_src)), np.zeros((3, len(backend.network.roles.clamps))))
        with pytest.raises(ValueError):
            backend.adjust(np.zeros(backend.network.n_edges + 1))

    def test_adjust_moves_state_and_reports_it(self, backend: NetworkBackend) -> None:
        m = backend.network.n_edges
        before = backend.read_edges()
        assert isinstance(before, EdgeState) and before.conductances.shape == (m,)
        edges = backend.edges
        if isinstance(edges, SteppedEdges):
            command = np.zeros(m, dtype=np.int64)
            command[0], command[1] = 1, -2
        else:
            command = np.zeros(m)
            command[0], command[1] = 1e-5, -1e-5
        applied = backend.adjust(command)
        assert isinstance(applied, Applied)
        after = backend.read_edges()
        if isinstance(edges, SteppedEdges):
            assert np.array_equal(after.taps - before.taps, applied.commands)
            assert np.allclose(after.conductances, edges.conductance(after.taps))
        else:
            assert np.allclose(after.conductances - before.conductances, applied.commands)
        assert np.array_equal(applied.commands[2:], np.zeros(m - 2))
        backend.adjust(np.zeros_like(command))
        assert np.array_equal(backend.read_edges().conductances, after.conductances)

    def test_clipping_at_the_ends_is_reported(self, backend: NetworkBackend) -> None:
        m = backend.network.n_edges
        edges = backend.edges
        big = (np.full(m, 10 * edges.n_taps, dtype=np.int64) if isinstance(edges, SteppedEdges)
               else np.full(m, 10 * edges.gmax))
        applied = backend.adjust(big)
        assert applied.clipped.all()
        state = backend.read_edges()
        if isinstance(edges, SteppedEdges):
            assert np.all(state.taps == edges.n_taps - 1)
        else:
            assert np.allclose(state.conductances, edges.gmax)
        applied = backend.adjust(-big)
        assert applied.clipped.all()

    def test_measurements_follow_the_edges(self, backend: NetworkBackend) -> None:
        x = self._sources(backend, 2)
        v1 = backend.measure(x).voltages
        edges = backend.edges
        m = backend.network.n_edges
        step = (np.full(m, -60, dtype=np.int64) if isinstance(edges, SteppedEdges)
                else np.random.default_rng(2).uniform(-0.3, 0.3, m) * backend.read_edges().conductances)
        step[: m // 2] *= -1
        backend.adjust(step)
        v2 = backend.measure(x).voltages
        assert np.abs(v2 - v1).max() > 5 * self.volt_tolerance + 1e-6

    def test_safe_is_idempotent_and_close_works(self, backend: NetworkBackend) -> None:
        backend.measure(self._sources(backend, 1))
        assert backend.is_safe is False  # driving outputs
        backend.safe()
        assert backend.is_safe is True
        backend.safe()
        assert backend.is_safe is True
        backend.close()
        assert backend.is_safe is True
