"""Node roles of a task on a network: given in the protocol, else drawn at random."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clln.controller.errors import NetworkError, ProtocolError
from clln.controller.network import Network, NodeRoles


@dataclass(frozen=True)
class RoleRequest:
    """What a task needs of a network's nodes, and what the protocol fixes.

    Attributes
    ----------
    n_sources, n_grounds, n_outputs : how many source, ground and output nodes (output
        edges for allostery) the task needs.
    allostery : the outputs are voltage drops across edges (both ends clamped).
    source_nodes, ground_nodes, output_nodes, output_edges : the nodes (edges) given in
        the protocol, or None to draw them.
    """

    n_sources: int
    n_grounds: int
    n_outputs: int
    allostery: bool = False
    source_nodes: Sequence[int] | None = None
    ground_nodes: Sequence[int] | None = None
    output_nodes: Sequence[int] | None = None
    output_edges: Sequence[tuple[int, int]] | None = None


def pick_roles(
    network: Network, spec: RoleRequest, rng: np.random.Generator, source: str
) -> tuple[NodeRoles, tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Node roles of the task: given in the protocol, else drawn at random (seeded).

    Returns (roles, output nodes, output edges). ProtocolError (naming ``source`` and the
    task key) for roles the network cannot take.
    """
    n = network.n_nodes
    order = [int(i) for i in rng.permutation(n)]

    def take(given: Sequence[int] | None, count: int, key: str) -> list[int]:
        if given is not None:
            if len(given) != count:
                raise ProtocolError(f"{source}: task.{key}: needs {count} nodes, got {len(given)}")
            bad = [g for g in given if not 0 <= g < n]
            if bad:
                raise ProtocolError(f"{source}: task.{key}: nodes {bad} are not in 0..{n - 1}")
            chosen = list(given)
        else:
            chosen = [i for i in order if i not in used][:count]
            if len(chosen) < count:
                raise ProtocolError(
                    f"{source}: task: the network has {n} nodes, too few for the task's roles"
                )
        used.update(chosen)
        return chosen

    used: set[int] = set()
    for given in (spec.source_nodes, spec.ground_nodes, spec.output_nodes):
        if given is not None:
            used.update(given)
    sources = take(spec.source_nodes, spec.n_sources, "source_nodes")
    grounds = take(spec.ground_nodes, spec.n_grounds, "ground_nodes")
    output_edges: tuple[tuple[int, int], ...] = ()
    outputs: tuple[int, ...] = ()
    if spec.allostery:
        if spec.output_edges is not None:
            output_edges = tuple((int(a), int(b)) for a, b in spec.output_edges)
            if len(output_edges) != spec.n_outputs:
                raise ProtocolError(
                    f"{source}: task.output_edges: needs {spec.n_outputs} edges, got {len(output_edges)}"
                )
        else:
            picked: list[tuple[int, int]] = []
            taken = set(sources) | set(grounds)
            for j in rng.permutation(network.n_edges):
                a, b = (int(x) for x in network.edges[j])
                if a not in taken and b not in taken:
                    picked.append((a, b))
                    taken |= {a, b}
                if len(picked) == spec.n_outputs:
                    break
            if len(picked) < spec.n_outputs:
                raise ProtocolError(f"{source}: task: not enough free edges for {spec.n_outputs} outputs")
            output_edges = tuple(picked)
        clamps = tuple(x for e in output_edges for x in e)
    else:
        outputs = tuple(take(spec.output_nodes, spec.n_outputs, "output_nodes"))
        clamps = outputs
    try:
        roles = NodeRoles(tuple(sources), tuple(grounds), clamps)
        network.with_roles(roles)
    except NetworkError as exc:
        raise ProtocolError(f"{source}: task: {exc}") from None
    return roles, outputs, output_edges
