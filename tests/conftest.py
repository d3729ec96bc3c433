from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clln.controller import NodeRoles, delaunay

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "protocols"


def random_network(seed: int, n: int = 80, n_sources: int = 2, n_grounds: int = 1,
                   n_clamps: int = 2):
    """A Delaunay network with random roles and random conductances (S)."""
    rng = np.random.default_rng(seed)
    net = delaunay(n, rng)
    perm = rng.permutation(n)
    roles = NodeRoles(
        sources=tuple(int(i) for i in perm[:n_sources]),
        grounds=tuple(int(i) for i in perm[n_sources:n_sources + n_grounds]),
        clamps=tuple(int(i) for i in perm[n_sources + n_grounds:n_sources + n_grounds + n_clamps]),
    )
    g = rng.uniform(0.2e-3, 5e-3, net.n_edges)
    return net.with_roles(roles), g, rng


def dense_solution(net, g: np.ndarray, fixed, values: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """(B, n) node voltages by numpy.linalg.solve with Dirichlet nodes ``fixed`` at
    ``values`` (B, len(fixed)): the independent reference for the sparse solver."""
    fixed = np.asarray(fixed, dtype=np.int64)
    lap = net.laplacian(g).toarray()
    free = np.setdiff1d(np.arange(net.n_nodes), fixed)
    v = np.zeros((values.shape[0], net.n_nodes))
    v[:, fixed] = values
    v[:, free] = np.linalg.solve(lap[np.ix_(free, free)], -(lap[np.ix_(free, fixed)] @ values.T)).T
    return v


@pytest.fixture
def protocols_dir() -> Path:
    return PROTOCOLS


# CI runs the property-based tests on a fixed set of examples (reproducible verdicts);
# developers' runs explore new examples each time.
import os as _os  # noqa: E402

from hypothesis import settings as _settings  # noqa: E402

_settings.register_profile("ci", derandomize=True, database=None)
if _os.environ.get("CI"):
    _settings.load_profile("ci")


def require_tool(*names: str) -> None:
    """Skip a test whose system tool (ngspice, simavr, avr-gcc, chromium ...) is missing,
    saying which Debian package brings it. Under CI (``CI`` set) a missing tool fails the
    test instead: ``.ci/run`` installs them, so their absence there is a broken set-up."""
    import shutil

    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        msg = (f"needs {', '.join(missing)} on PATH (Debian packages: see .ci/run, "
               f"e.g. apt-get install {' '.join(missing)})")
        if _os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
