"""Measuring susceptibilities without a model of the network, through the backend seam.

A bench imposes voltages (sources, clamps) and reads node voltages; it has no current
sources. Susceptibility vectors (seed 001, eq. 14) are responses to *currents*,
``s_j = H^-1 bhat_j``, with H the Laplacian bordered by the held nodes: the ground
(seed 001's convention, ``ground``) or the sources and the ground (``dirichlet``, what
a voltage-driven bench holds); see clln.analysis.susceptibility. How to get them from
voltages alone:

1. **Voltages alone fix no current scale.** Multiplying every conductance by c leaves
   every voltage pattern unchanged and divides H^-1 by c; clamping boundary nodes
   gives the columns of H^-1 at those nodes only up to an unknown k x k matrix. Some
   conductance must be known — and one is: the edge actuators are calibrated
   (``read_edges`` gives each edge's conductance, and ``adjust`` changes it by a known
   amount). No model of the rest of the network is used.

2. **An edge change injects a current dipole across that edge.** Changing edge j by
   delta siemens while the sources drive the network with x changes the node voltages
   by (Sherman-Morrison, exact for any delta)::

       v'(x) - v(x) = -delta dV_j(x) / (1 + delta r_j) * G b_j,     r_j = b_j . G b_j

   where G b_j is the node part of s_j (V/A) and dV_j(x) the drop across edge j. So
   with ``u = -(v' - v) / dV_j`` (least squares over the source patterns) and
   ``r' = u[a_j] - u[b_j] = delta r_j / (1 + delta r_j)``::

       G b_j = u / (delta (1 - r'))

   This is G_D b_j, with the sources and the ground held (``dirichlet``).

3. **The border part is a voltage response too** (``dirichlet``). Entry d of the border
   part of s_j is ``(B phi_d)_j``, the drop across edge j when held node d is at 1 V
   and the other held nodes at 0 V (reciprocity): a source pattern for a source, and
   ``1 - sum_s phi_s`` for the single ground (several grounds are always at 0 V
   together, so their currents cannot be told apart; that case is refused).

4. **Letting the sources float** (``ground``, seed 001). With only the ground held the
   sources are free nodes, and (Schur complement on the sources)::

       G_g b_j = G_D b_j + Phi N^-1 (B Phi)_j,     N[s', s] = current out of source s'
                                                           when source s is at 1 V

   N (n_sources x n_sources, S) is the sources' Dirichlet-to-Neumann map, read like an
   ammeter: the measured drops of the source patterns across the edges *at the
   sources*, times those edges' calibrated conductances. The border entry (the
   ground's current for a dipole) is zero. Exactly one ground is needed.

Cost: per edge two ``adjust`` calls (there and back) and two source-pattern
measurements (one batch of n_sources samples each). An edge whose drop is zero for
every source pattern carries no signal (its column is NaN, ``identifiable`` False);
such an edge also has a zero column in the output Jacobian, which is
``dO/dg_j = -(P s_j) dV_j``, so the cost Hessian needs nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clln.controller.backend import ContinuousEdges, NetworkBackend, SteppedEdges
from clln.controller.errors import NetworkError


@dataclass(frozen=True, eq=False)
class MeasuredSusceptibility:
    """Susceptibility vectors measured through a backend.

    Attributes
    ----------
    vectors : (n + h, m) columns s_j: node part (V/A) then border part (A/A) in the
        order of ``held``; NaN columns for unidentifiable edges.
    norms : (m,) |s_j| (NaN where unidentifiable).
    identifiable : (m,) False where the edge carried no drop for any source pattern or
        could not be moved.
    delta : (m,) conductance change actually applied to each edge, S.
    source_response : (n, n_sources) Phi, node volts per source volt.
    held : the held nodes: the ground (``ground``), or the sources then the ground if
        there is one (``dirichlet``).
    convention : ``ground`` or ``dirichlet``.
    measurements : number of ``measure`` calls made.
    """

    vectors: np.ndarray
    norms: np.ndarray
    identifiable: np.ndarray
    delta: np.ndarray
    source_response: np.ndarray
    held: tuple[int, ...]
    convention: str
    measurements: int


def source_responses(backend: NetworkBackend, volts: float = 1.0) -> np.ndarray:
    """(n, n_sources) node voltages per source volt, one source at ``volts`` at a time."""
    n_src = len(backend.network.roles.sources)
    if n_src == 0:
        raise NetworkError("the backend's network has no source node to drive")
    return backend.measure(volts * np.eye(n_src)).voltages.T / volts


def _step_command(backend: NetworkBackend, edge: int, relative_step: float, taps: int,
                  conductance: float, tap: int | None) -> np.ndarray:
    m = backend.network.n_edges
    edges = backend.edges
    if isinstance(edges, SteppedEdges):
        command: np.ndarray = np.zeros(m, dtype=np.int64)
        assert tap is not None
        command[edge] = taps if tap + taps <= edges.n_taps - 1 else -taps
        return command
    if not isinstance(edges, ContinuousEdges):
        raise NetworkError(f"a measured response needs conductance or tap edges, not {edges.kind} edges")
    command = np.zeros(m)
    step = relative_step * conductance
    command[edge] = step if conductance + step <= edges.gmax else -step
    return command


def measure_susceptibility(
    backend: NetworkBackend,
    *,
    edges: np.ndarray | None = None,
    relative_step: float = 0.1,
    taps: int = 4,
    volts: float = 1.0,
    convention: str = "ground",
) -> MeasuredSusceptibility:
    """Measure s_j for the given edges by stepping each edge and re-measuring.

    Every edge is put back (``adjust`` with the negated applied command) before the
    next one; the backend is made safe at the end.

    Parameters
    ----------
    backend : bench, emulator or simulator.
    edges : (k,) edge indices; all edges when omitted (columns of the others are NaN).
    relative_step : conductance step of continuous edges, as a fraction of g_j.
    taps : tap step of stepped edges.
    volts : source amplitude of the probe patterns, V.
    convention : ``ground`` (seed 001: only the ground held) or ``dirichlet`` (sources
        and ground held).
    """
    net = backend.network
    roles = net.roles
    if convention not in ("ground", "dirichlet"):
        raise ValueError(f"unknown convention {convention!r}; allowed: ground, dirichlet")
    wanted = "exactly one ground node" if convention == "ground" else "at most one ground node"
    if len(roles.grounds) > 1 or (convention == "ground" and len(roles.grounds) != 1):
        raise NetworkError(
            f"susceptibility measurement ({convention}) needs {wanted}, the network has "
            f"{len(roles.grounds)}: grounds held together at 0 V cannot be told apart by voltages"
        )
    if not 0 < relative_step < 1:
        raise ValueError(f"relative_step must lie in (0, 1), got {relative_step}")
    n, m = net.n_nodes, net.n_edges
    held = (tuple(roles.grounds) if convention == "ground"
            else tuple(roles.sources) + tuple(roles.grounds))
    which = np.arange(m) if edges is None else np.asarray(edges, dtype=np.int64)
    vectors = np.full((n + len(held), m), np.nan)
    delta = np.zeros(m)
    ok = np.zeros(m, dtype=bool)
    calls = 0
    incidence = net.incidence
    try:
        phi = source_responses(backend, volts)
        calls += 1
        border = phi.copy()
        if roles.grounds:
            border = np.hstack([phi, 1.0 - phi.sum(axis=1, keepdims=True)])
        border_drops = incidence @ border  # (m, h)
        source_drops = incidence @ phi  # (m, n_sources)
        if convention == "ground":
            # the sources' Dirichlet-to-Neumann map from the calibrated edges at the sources
            g0 = backend.read_edges().conductances
            at_sources = incidence[:, list(roles.sources)].toarray()  # (m, n_sources)
            dtn = at_sources.T @ (g0[:, None] * source_drops)
            float_sources = phi @ np.linalg.inv(dtn)  # (n, n_sources): Phi N^-1
        for j in which:
            a, b = net.edges[j]
            state = backend.read_edges()
            tap = None if state.taps is None else int(state.taps[j])
            command = _step_command(backend, int(j), relative_step, taps,
                                    float(state.conductances[j]), tap)
            base = backend.measure(volts * np.eye(phi.shape[1])).voltages  # (ns, n)
            applied = backend.adjust(command)
            try:
                delta[j] = backend.read_edges().conductances[j] - state.conductances[j]
                moved = backend.measure(volts * np.eye(phi.shape[1])).voltages
            finally:
                backend.adjust(-applied.commands)
            calls += 2
            drops = base[:, a] - base[:, b]  # (ns,)
            power = float(drops @ drops)
            scale = float(np.max(np.abs(base))) if base.size else 0.0
            if delta[j] == 0 or power <= (1e-9 * scale) ** 2:
                continue
            u = -(drops @ (moved - base)) / power  # (n,)
            r_prime = u[a] - u[b]
            vectors[:n, j] = u / (delta[j] * (1.0 - r_prime))
            if convention == "ground":
                vectors[:n, j] += float_sources @ source_drops[j]
                vectors[n:, j] = 0.0
            else:
                vectors[n:, j] = border_drops[j]
            ok[j] = True
    finally:
        backend.safe()
    norms = np.sqrt(np.sum(vectors**2, axis=0))
    return MeasuredSusceptibility(vectors, norms, ok, delta, phi, held, convention, calls)
