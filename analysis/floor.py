"""The error floor of a run: where its test error settled."""

from __future__ import annotations

import math

import numpy as np


def error_floor(test_error: np.ndarray) -> float | None:
    """Median test error over the last quarter of the evaluations (at least 3 of them);
    None with fewer than 4 evaluations or a non-finite median."""
    if test_error.size < 4:
        return None
    tail = test_error[-max(3, test_error.size // 4):]
    value = float(np.median(tail))
    return value if math.isfinite(value) else None
