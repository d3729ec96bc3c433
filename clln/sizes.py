"""Memory and time estimates before anything large is built.

A protocol's network, datasets and measurements are sized from its keys alone, before
a node is placed; a run whose estimate is above the cap stops with one line giving the
estimate. Caps: ``CLLN_MAX_MEMORY_BYTES`` (default: half the machine's memory) and
``CLLN_MAX_HOURS`` (default 168, one week of simulated training). The figures are
rough upper estimates (sparse factor fill, three measurements per step, the whole
test set per evaluation); they are for refusing the absurd, not for planning.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from clln.controller.errors import UserError
from clln.protocol import Protocol

DEFAULT_MAX_HOURS = 168.0


@dataclass(frozen=True)
class Estimate:
    nodes: int
    edges: int
    bytes: float
    seconds: float

    def describe(self) -> str:
        return (f"about {self.nodes:,} nodes and {self.edges:,} edges, {self.bytes / 2**30:.3g} GiB "
                f"and {self.seconds / 3600:.3g} h of simulation")


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name}: {raw[:40]!r} is not allowed; allowed: a positive number")
    return value


def memory_cap() -> float:
    """Bytes one run may be estimated to need (``CLLN_MAX_MEMORY_BYTES``)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return _env_number("CLLN_MAX_MEMORY_BYTES", 0.5 * total)


def hours_cap() -> float:
    """Hours one run may be estimated to take (``CLLN_MAX_HOURS``)."""
    return _env_number("CLLN_MAX_HOURS", DEFAULT_MAX_HOURS)


def estimate(protocol: Protocol, *, nodes: int | None = None, edges: int | None = None,
             steps: int | None = None) -> Estimate:
    """Rough memory (bytes) and simulation time (s) of a run; ``nodes``/``edges`` when
    the network is known (a bench, an edge list)."""
    net, task, tr = protocol.network, protocol.task, protocol.training
    if nodes is None:
        if net.kind == "lattice":
            nodes = (net.rows or 1) * (net.cols or 1)
        else:
            nodes = net.nodes or 2
    if edges is None:
        per_node = 2.0 if net.kind == "lattice" else max(3.0, (net.coordination or 6.0) / 2)
        edges = int(per_node * nodes)
    n, m = float(nodes), float(edges)
    fill = 30.0 + 2.0 * math.log2(max(n, 2.0))  # doubles per node: graph, Laplacian, factor fill
    samples = float(task.train + task.test)
    batch = float(min(tr.batch, task.train))
    width = float(task.n_sources + task.n_outputs)
    memory = 8.0 * (fill * n + 8.0 * m + samples * width + 4.0 * max(batch, task.test) * (n + m))
    if protocol.edges.kind == "stepped":
        memory += 16.0 * m * protocol.edges.taps
    if net.kind == "jammed":
        memory += 8.0 * 200.0 * n  # neighbour lists and L-BFGS history of the packing
    steps = steps or tr.steps
    per_solve = 2e-7 * n * math.log2(max(n, 2.0))
    evaluations = steps / tr.test_every + 2
    seconds = steps * (3 * per_solve + 3e-8 * batch * (n + m)) + evaluations * 3e-8 * task.test * (n + m)
    return Estimate(int(n), int(m), memory, seconds)


def check_size(protocol: Protocol, source: str, **known: int | None) -> Estimate:
    """:func:`estimate`, and a UserError naming it when above a cap."""
    est = estimate(protocol, **known)
    cap, hours = memory_cap(), hours_cap()
    if est.bytes > cap:
        raise UserError(f"{source}: this run needs {est.describe()}; above the memory cap of "
                        f"{cap / 2**30:.3g} GiB (set CLLN_MAX_MEMORY_BYTES to change it)")
    if est.seconds > hours * 3600:
        raise UserError(f"{source}: this run needs {est.describe()}; above the time cap of "
                        f"{hours:g} h (set CLLN_MAX_HOURS to change it)")
    return est
