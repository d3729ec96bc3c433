"""Optional backend capabilities, declared rather than probed.

Each capability is a small ``@runtime_checkable`` Protocol; the controller asks for
one with :func:`require`, which raises a clear :class:`CapabilityError` when the
backend does not declare it. Twin measurement and checkpointable state belong here too
as they are declared; learning in place is the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np

from clln.controller.errors import UserError

if TYPE_CHECKING:  # the experiment and record types live with the executor
    from clln.controller.insitu import InSituExperiment, InSituRecord


class CapabilityError(UserError):
    """A backend lacks a capability the protocol asks for; nothing was sent to it."""


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


Capability = TypeVar("Capability")


def require(backend: object, capability: type[Capability], *, what: str) -> Capability:
    """``backend`` as a ``capability``; CapabilityError naming ``what`` needs it otherwise."""
    if not isinstance(backend, capability):  # type: ignore[misc]
        kind = getattr(backend, "describe", lambda: {})().get("kind", type(backend).__name__)
        raise CapabilityError(
            f"{what} needs a bench that declares {capability.__name__}; "
            f"this backend ({kind}) does not")
    return backend
