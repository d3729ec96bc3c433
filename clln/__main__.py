"""``python -m clln``: the command line."""

from clln.cli import main

main()
