"""Imperfection models of the simulated bench, grouped in named presets.

A preset turns the *commanded* edge state into the *true* conductances the
physics sees, and the *true* node voltages into *measured* ones. The ``ideal``
preset does neither: what is commanded is what the physics sees, and every
measurement is exact. Realistic presets (``pot-bench``, ``twin-bench``) plug in
here with their seeded models (tolerance, wiper resistance, noise, offsets,
quantization, mismatch, bias, drift).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clln.controller.errors import ProtocolError

PRESETS = ("ideal",)


@dataclass(frozen=True)
class Preset:
    """A named set of imperfection models and their parameters."""

    name: str = "ideal"
    parameters: dict[str, Any] = field(default_factory=dict)

    def true_conductances(self, commanded: np.ndarray) -> np.ndarray:
        """(m,) conductances the physics sees for the commanded ones (S)."""
        return commanded

    @property
    def exact(self) -> bool:
        """True when measurements are the exact physics (the factored fast path is valid)."""
        return True

    def describe(self) -> dict[str, Any]:
        return {"preset": self.name, **self.parameters}


def make_preset(name: str, **overrides: Any) -> Preset:
    """The preset called ``name`` with parameter overrides."""
    if name not in PRESETS:
        raise ProtocolError(f"unknown simulator preset {name!r}; allowed: {', '.join(PRESETS)}")
    if overrides:
        raise ProtocolError(
            f"preset {name!r} takes no parameters; got {', '.join(sorted(overrides))}"
        )
    return Preset(name=name)
