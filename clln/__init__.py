"""clln: lab control for contrastive local learning networks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clln")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"


def load_run(run: str = "latest", out: str = "runs"):  # noqa: ANN201
    """A run of the run store at ``out`` as an xarray Dataset: see :func:`clln.dataset.load_run`."""
    from clln.dataset import load_run as _load

    return _load(run, out)
