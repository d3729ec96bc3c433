"""clln: lab control for contrastive local learning networks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clln")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"
