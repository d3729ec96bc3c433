"""The network model: linear-network physics, imperfection models, SimulatedBackend."""

from clln.simulator.backend import SimClock, SimulatedBackend, with_drivers
from clln.simulator.imperfections import PRESETS, BenchInstance, Imperfections, make_imperfections
from clln.simulator.physics import LinearNetworkSolver, StateBasis, available_solvers

__all__ = [
    "PRESETS", "BenchInstance", "Imperfections", "LinearNetworkSolver", "SimClock",
    "SimulatedBackend", "StateBasis", "available_solvers", "make_imperfections", "with_drivers",
]
