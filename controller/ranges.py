"""Value ranges as type metadata, for the pydantic models of files.

``Annotated[float, Range(lo, hi, unit, why)]`` is a strict float in [lo, hi] whose error
line gives the range, the unit and ``why`` (the checks of :mod:`clln.controller.bounds`),
and reads to a type checker as the plain ``float`` it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import annotated_types
from pydantic import Strict

from clln.controller.bounds import _checker


@dataclass(frozen=True)
class Range(annotated_types.GroupedMetadata):
    """A strict number in [lo, hi] (``unit``; ``why`` says where the limits come from)."""

    lo: float
    hi: float
    unit: str
    why: str

    def __iter__(self) -> Iterator[Any]:
        yield Strict()
        yield _checker(self.lo, self.hi, self.unit, self.why)
