"""Optional backend capabilities, declared rather than probed.

Each capability is a small ``@runtime_checkable`` Protocol, as bluesky declares a
device's (``bluesky.protocols``). The controller asks whether a backend has one with
:func:`supports` (a choice between two paths) or demands it with :func:`require`, which
raises a clear :class:`CapabilityError` when the backend does not declare it:

* :class:`MeasuresTwin`: a twin bench, free and clamped copies measured together;
* :class:`Checkpointable`: the backend's state round-trips through a checkpoint;
* :class:`KeepsAlive`: a bench whose controller must hear from the host while a run
  is held at a pause;
* :class:`LearnsInPlace`: a bench whose edges update themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar, cast, runtime_checkable

import numpy as np

from clln.controller.errors import UserError

if TYPE_CHECKING:  # the experiment and record types live with the executor
    from clln.controller.backend import EdgeActuators, EdgeState, Measurement
    from clln.controller.insitu import InSituExperiment, InSituRecord
    from clln.controller.network import Network


class CapabilityError(UserError):
    """A backend lacks a capability the protocol asks for; nothing was sent to it."""


@runtime_checkable
class MeasuresTwin(Protocol):
    """A twin bench: a free and a clamped copy of the network measured together.

    ``twin`` says whether this instance has two copies now (a simulator declares the
    capability and has a second copy only with twin mismatch set). ``measure_twin``
    returns (free, clamped) measurements, the clamps given by ``clamp_rule(free)`` from
    the free twin's measurement (the bench's nudge circuit). With ``swap=True`` (the
    ``chop`` scheme) the twins exchange roles, free on the second and clamped on the
    first, and the measurements still come back as (free, clamped): a bench whose
    per-edge circuits compare the two twins sees their inputs reversed, so a fixed
    circuit offset enters (dV_free)^2 - (dV_clamped)^2 with the opposite sign; over a
    normal and a swapped step it cancels, and a fixed twin mismatch cancels to first
    order.
    """

    @property
    def twin(self) -> bool:
        ...

    def measure_twin(self, sources: np.ndarray, clamp_rule: Callable[[Measurement], np.ndarray], *,
                     swap: bool = False) -> tuple[Measurement, Measurement]:
        ...


@runtime_checkable
class Checkpointable(Protocol):
    """A backend whose state (actuators, and for a simulator its noise generator and
    clock) is saved with every checkpoint and restored on resume. A backend with nothing
    to save declares it with an empty ``state_dict``: a checkpoint of a backend that does
    not declare this capability is refused, never written without its state."""

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


@runtime_checkable
class KeepsAlive(Protocol):
    """A bench whose controller parks its outputs unless it hears from the host: while a
    run is held at a pause, ``keepalive`` tells it the host is still there."""

    def keepalive(self) -> None:
        ...


@runtime_checkable
class LearnsInPlace(Protocol):
    """A bench whose edges update themselves (local analog circuits, a clock per edge).

    The host downloads an experiment and consumes its records; it never computes an
    update. ``run_insitu`` yields one :class:`~clln.controller.insitu.InSituRecord` per
    step, ``start_step + 1 .. start_step + n_steps`` (and a step-0 record holding the
    initial test evaluation when ``start_step == 0``). ``read_state`` is the adjustable
    state now: tracked taps, or gate voltages (V), shape (m,).
    """

    def run_insitu(self, experiment: InSituExperiment, start_step: int,
                   n_steps: int) -> Iterator[InSituRecord]:
        ...

    def read_state(self) -> np.ndarray:
        ...

    @property
    def network(self) -> Network:
        ...

    @property
    def edges(self) -> EdgeActuators:
        ...

    def read_edges(self) -> EdgeState:
        ...


Capability = TypeVar("Capability")


def supports(backend: object, capability: Callable[..., Capability]) -> TypeGuard[Capability]:
    """Whether ``backend`` declares ``capability``, one of the Protocols here (has every
    member of it); a type checker then treats ``backend`` as one. (``capability`` is
    typed as a callable: a type checker refuses a Protocol class where ``type[...]`` is
    expected.)"""
    return isinstance(backend, cast(type, capability))


def require(backend: object, capability: Callable[..., Capability], *, what: str) -> Capability:
    """``backend`` as a ``capability``; CapabilityError naming ``what`` needs it otherwise."""
    if not supports(backend, capability):
        raise CapabilityError(
            f"{what} needs a bench that declares {cast(type, capability).__name__}; "
            f"this backend ({type(backend).__name__}) does not")
    return backend


def twin_bench(backend: object) -> MeasuresTwin | None:
    """``backend`` when it measures a free and a clamped twin together now (declares
    :class:`MeasuresTwin` and ``twin`` is true), else None."""
    if isinstance(backend, MeasuresTwin) and backend.twin:
        return backend
    return None
