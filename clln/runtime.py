"""Process-wide runtime settings of the composition root (thread pools).

Measured on the 2-core machine of docs/benchmarks-speed.md: the simulator's calls into the
BLAS bundled with numpy and scipy are tiny (k x k clamp systems) or memory-bound
(edge chunks), so a second OpenBLAS thread never helps them; worse, OpenBLAS's idle
worker spins for a while after each call and takes the core the sparse
factorization needs. Capping that BLAS at one thread took a 1e5-node training step
from 144 to 100 ms and the per-sample ``spsolve`` baseline at 1e4 nodes from 2.8 to
1.9 s. The system BLAS that CHOLMOD's supernodal factorization calls at large sizes
is a different library and keeps its threads.
"""

from __future__ import annotations

_BUNDLED_BLAS = ("libscipy_openblas",)  # threadpoolctl prefix of numpy's and scipy's OpenBLAS


def limit_bundled_blas(threads: int = 1) -> None:
    """Cap numpy's and scipy's bundled OpenBLAS at ``threads`` threads in this process.

    Runs stay bit-identical from run to run with or without the cap. Does nothing if
    threadpoolctl is missing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a declared dependency
        return
    import numpy  # noqa: F401  - load the libraries before limiting them
    import scipy.linalg  # noqa: F401

    threadpool_limits(limits={prefix: threads for prefix in _BUNDLED_BLAS})
