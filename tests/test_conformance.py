"""The NetworkBackend conformance suite on the simulated backends."""

from __future__ import annotations

import numpy as np
import pytest
from conformance import BackendConformance
from conftest import random_network

from clln.controller import ContinuousEdges, SteppedEdges
from clln.simulator import SimulatedBackend, make_imperfections
from clln.simulator.rheostat import rheostat_table

POT = (129, 10_000.0, 75.0, 1000.0)


def pot_table(m: int) -> SteppedEdges:
    taps, r_ab, r_w, r_s = POT
    return SteppedEdges(rheostat_table(taps, r_ab, r_w, r_s, edges=m))


class TestIdealContinuous(BackendConformance):
    @pytest.fixture
    def backend(self) -> SimulatedBackend:
        net, g, _ = random_network(0, n=40)
        return SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), g)


class TestIdealStepped(BackendConformance):
    @pytest.fixture
    def backend(self) -> SimulatedBackend:
        net, _, _ = random_network(1, n=40)
        return SimulatedBackend(net, pot_table(net.n_edges), np.full(net.n_edges, 64))


class TestPotBench(BackendConformance):
    volt_tolerance = 3e-3  # offsets, gains, noise, settling and 1 ohm sources, V

    @pytest.fixture
    def backend(self) -> SimulatedBackend:
        net, _, _ = random_network(2, n=40)
        return SimulatedBackend(net, pot_table(net.n_edges), np.full(net.n_edges, 64),
                                imperfections=make_imperfections("pot-bench"), pot=POT,
                                bench_seed=5, noise_seed=6, preset="pot-bench")


class TestTwinBench(BackendConformance):
    volt_tolerance = 3e-3

    @pytest.fixture
    def backend(self) -> SimulatedBackend:
        net, g, _ = random_network(3, n=40)
        return SimulatedBackend(net, ContinuousEdges(1e-5, 1e-2), 0.2 * g,  # 1-5 kOhm edges
                                imperfections=make_imperfections("twin-bench"), bench_seed=5,
                                noise_seed=6, preset="twin-bench")
