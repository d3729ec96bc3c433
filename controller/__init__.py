"""The model-free core of clln: topology, tasks, the backend seam, rules, training, run store."""

from clln.controller.backend import (
    Applied,
    ContinuousEdges,
    EdgeState,
    GateEdges,
    Measurement,
    NetworkBackend,
    SteppedEdges,
)
from clln.controller.errors import CllnError, LimitError, NetworkError, ProtocolError, UserError
from clln.controller.network import Network, NodeRoles, delaunay, from_edge_file, square_lattice
from clln.controller.packing import Packing, jammed, jammed_packing
from clln.controller.rules import CoupledRule, SteppedRule, contrastive_signal
from clln.controller.task import Dataset, Task
from clln.controller.trainer import StepRecord, TrainConfig, Trainer, TrainResult

__all__ = [
    "Applied", "CllnError", "ContinuousEdges", "GateEdges", "CoupledRule", "Dataset", "EdgeState",
    "LimitError", "Measurement", "Network", "NetworkBackend", "NetworkError", "NodeRoles",
    "Packing", "ProtocolError", "StepRecord", "SteppedEdges", "SteppedRule", "Task", "TrainConfig",
    "TrainResult", "Trainer", "UserError", "contrastive_signal", "delaunay", "from_edge_file",
    "jammed", "jammed_packing", "square_lattice",
]
