"""The commands of ``clln``, one module per group; :mod:`clln.cli` puts them together.

Each module imports what a command needs inside the command, so that ``clln --help``
starts without loading the numerics (numpy's heavier parts, scipy, the simulator)."""
