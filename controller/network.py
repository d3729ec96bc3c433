"""Network topology: nodes, edges, optional positions and node roles.

A :class:`Network` is immutable. Node and edge order are fixed by it and every
array in the project (voltages, conductances, taps) follows that order.

Incidence ``B`` (m x n): ``B[j, a_j] = +1`` and ``B[j, b_j] = -1``, so the edge
voltage drops are ``dv = B @ v``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from scipy.spatial import Delaunay

from clln.controller.errors import NetworkError, ProtocolError
from clln.controller.files import read_user_text


@dataclass(frozen=True)
class NodeRoles:
    """Which nodes the boundary conditions act on.

    Attributes
    ----------
    sources : node indices driven by the source voltages, in the order of the
        columns of a ``sources`` array given to ``NetworkBackend.measure``.
    grounds : node indices held at 0 V.
    clamps : node indices held at the clamp voltages in the clamped phase, in
        the order of the columns of a ``clamps`` array.
    """

    sources: tuple[int, ...] = ()
    grounds: tuple[int, ...] = ()
    clamps: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Network:
    """A resistor network's topology.

    Parameters
    ----------
    n_nodes : number of nodes n.
    edges : (m, 2) int array of node pairs (a_j, b_j), a_j != b_j.
    positions : optional (n, 2) array of node positions (arbitrary units), for plots
        and spatial analyses.
    roles : boundary node roles.
    """

    n_nodes: int
    edges: np.ndarray
    positions: np.ndarray | None = None
    roles: NodeRoles = field(default_factory=NodeRoles)

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, dtype=np.int64).reshape(-1, 2)
        object.__setattr__(self, "edges", edges)
        edges.setflags(write=False)
        if self.n_nodes < 2:
            raise NetworkError(f"a network needs at least 2 nodes, got {self.n_nodes}")
        if edges.size and (edges.min() < 0 or edges.max() >= self.n_nodes):
            raise NetworkError(f"edge endpoints must be node indices in 0..{self.n_nodes - 1}")
        if np.any(edges[:, 0] == edges[:, 1]):
            raise NetworkError("an edge joins a node to itself")
        if self.positions is not None:
            pos = np.asarray(self.positions, dtype=float)
            if pos.shape != (self.n_nodes, 2):
                raise NetworkError(f"positions must be ({self.n_nodes}, 2), got {pos.shape}")
            object.__setattr__(self, "positions", pos)
        roles = self.roles
        used = list(roles.sources) + list(roles.grounds)
        for name, nodes in (("sources", roles.sources), ("grounds", roles.grounds),
                            ("clamps", roles.clamps)):
            for node in nodes:
                if not 0 <= node < self.n_nodes:
                    raise NetworkError(f"{name} node {node} is not in 0..{self.n_nodes - 1}")
        if len(set(used)) != len(used):
            raise NetworkError("a node is listed twice among sources and grounds")
        if set(roles.clamps) & set(used) or len(set(roles.clamps)) != len(roles.clamps):
            raise NetworkError("clamped nodes must be distinct and neither sources nor grounds")

    @property
    def n_edges(self) -> int:
        """Number of edges m."""
        return int(self.edges.shape[0])

    @cached_property
    def incidence(self) -> sp.csr_matrix:
        """Signed incidence matrix B, (m, n) CSR, +1 at a_j and -1 at b_j."""
        m = self.n_edges
        rows = np.repeat(np.arange(m), 2)
        cols = self.edges.ravel()
        vals = np.tile([1.0, -1.0], m)
        return sp.csr_matrix((vals, (rows, cols)), shape=(m, self.n_nodes))

    def laplacian(self, conductances: np.ndarray) -> sp.csr_matrix:
        """Weighted Laplacian L(g) = B^T diag(g) B, (n, n), siemens."""
        b = self.incidence
        return (b.T @ sp.diags(np.asarray(conductances, dtype=float)) @ b).tocsr()

    def with_roles(self, roles: NodeRoles) -> Network:
        """The same topology with other node roles."""
        return replace(self, roles=roles)

    def components(self) -> tuple[int, np.ndarray]:
        """Connected components: (count, label per node)."""
        adj = sp.coo_matrix(
            (np.ones(self.n_edges), (self.edges[:, 0], self.edges[:, 1])),
            shape=(self.n_nodes, self.n_nodes),
        )
        count, labels = connected_components(adj, directed=False)
        return int(count), labels

    def edge_midpoints(self) -> np.ndarray:
        """(m, 2) midpoints of the edges; needs positions."""
        if self.positions is None:
            raise NetworkError("this network has no node positions")
        return 0.5 * (self.positions[self.edges[:, 0]] + self.positions[self.edges[:, 1]])

    def degrees(self) -> np.ndarray:
        """(n,) number of edges at each node."""
        return np.bincount(self.edges.ravel(), minlength=self.n_nodes)


def square_lattice(rows: int, cols: int, *, periodic: bool = False) -> Network:
    """A rows x cols square lattice; node k sits at (k % cols, k // cols)."""
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise NetworkError(f"a lattice needs at least 2 nodes, got {rows} x {cols}")
    idx = np.arange(rows * cols).reshape(rows, cols)
    pairs = [np.c_[idx[:, :-1].ravel(), idx[:, 1:].ravel()],
             np.c_[idx[:-1, :].ravel(), idx[1:, :].ravel()]]
    if periodic:
        if cols > 2:
            pairs.append(np.c_[idx[:, -1], idx[:, 0]])
        if rows > 2:
            pairs.append(np.c_[idx[-1, :], idx[0, :]])
    edges = np.vstack(pairs)
    yy, xx = np.divmod(np.arange(rows * cols), cols)
    return Network(rows * cols, edges, positions=np.c_[xx, yy].astype(float))


def delaunay(
    n_nodes: int, rng: np.random.Generator, *, coordination: float | None = None
) -> Network:
    """Delaunay triangulation of n random points in the unit square.

    Parameters
    ----------
    coordination : if given, remove random edges (never a spanning tree's) until
        the mean coordination 2 m / n is at most this value; the network stays
        connected.
    """
    if n_nodes < 3:
        raise NetworkError(f"a Delaunay network needs at least 3 nodes, got {n_nodes}")
    points = rng.random((n_nodes, 2))
    tri = Delaunay(points).simplices
    pairs = np.vstack([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [0, 2]]])
    pairs.sort(axis=1)
    edges = np.unique(pairs, axis=0)
    if coordination is not None:
        target_m = int(np.floor(coordination * n_nodes / 2))
        if target_m < n_nodes - 1:
            raise NetworkError(
                f"coordination {coordination} is below a spanning tree's ({2 * (n_nodes - 1) / n_nodes:.2f})"
            )
        if target_m < len(edges):
            weights = rng.random(len(edges)) + 1e-9
            graph = sp.coo_matrix((weights, (edges[:, 0], edges[:, 1])), shape=(n_nodes,) * 2)
            tree = minimum_spanning_tree(graph).tocoo()
            tree_keys = set(zip(tree.row.tolist(), tree.col.tolist()))
            in_tree = np.array([(a, b) in tree_keys for a, b in edges.tolist()])
            optional = np.flatnonzero(~in_tree)
            keep = rng.choice(optional, size=target_m - int(in_tree.sum()), replace=False)
            edges = edges[np.sort(np.r_[np.flatnonzero(in_tree), keep])]
    return Network(n_nodes, edges, positions=points)


def from_edge_file(path: str | Path) -> Network:
    """Read a network from a text file (see :func:`from_edge_text`); a regular UTF-8
    file within the size cap of clln.controller.files."""
    return from_edge_text(read_user_text(path, "edge-list"), str(path))


MAX_EDGE_INDEX = 10**8


def from_edge_text(text: str, path: str) -> Network:
    """A network from the text of an edge list (``path`` names it in errors).

    Lines ``a b`` give edges between integer node indices; optional lines
    ``node k x y`` give positions (all nodes or none). ``#`` starts a comment.
    An offending line is quoted only as a short escaped excerpt.
    """
    edges: list[tuple[int, int]] = []
    positions: dict[int, tuple[float, float]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        try:
            if line[0] == "node" and len(line) == 4:
                k, x, y = int(line[1]), float(line[2]), float(line[3])
                if not (0 <= k <= MAX_EDGE_INDEX and math.isfinite(x) and math.isfinite(y)):
                    raise ValueError
                positions[k] = (x, y)
            elif len(line) == 2:
                a, b = int(line[0]), int(line[1])
                if not (0 <= a <= MAX_EDGE_INDEX and 0 <= b <= MAX_EDGE_INDEX):
                    raise ValueError
                edges.append((a, b))
            else:
                raise ValueError
        except ValueError:
            excerpt = raw.strip()
            excerpt = repr(excerpt[:40]) + (" ..." if len(excerpt) > 40 else "")
            raise ProtocolError(
                f"{path}:{lineno}: expected 'a b' (edge) or 'node k x y' with node indices in "
                f"0..{MAX_EDGE_INDEX} and finite positions, got {excerpt}"
            ) from None
    if not edges:
        raise ProtocolError(f"{path}: no edges found")
    n_nodes = int(max(max(e) for e in edges)) + 1
    if positions:
        n_nodes = max(n_nodes, max(positions) + 1)
        if len(positions) != n_nodes:
            raise ProtocolError(f"{path}: positions given for {len(positions)} of {n_nodes} nodes")
        pos = np.array([positions[k] for k in range(n_nodes)])
    else:
        pos = None
    try:
        return Network(n_nodes, np.array(edges), positions=pos)
    except NetworkError as exc:
        raise ProtocolError(f"{path}: {exc}") from None
