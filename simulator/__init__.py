"""The network model: linear-network physics, imperfection presets, SimulatedBackend."""

from clln.simulator.backend import SimClock, SimulatedBackend
from clln.simulator.imperfections import PRESETS, Preset, make_preset
from clln.simulator.physics import LinearNetworkSolver, StateBasis, available_solvers

__all__ = [
    "PRESETS", "LinearNetworkSolver", "Preset", "SimClock", "SimulatedBackend", "StateBasis",
    "available_solvers", "make_preset",
]
