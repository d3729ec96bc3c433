"""What the commands share: the console, the common options, terminal-safe text, the run store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from clln.controller.store import RunStore

console = Console()
if not console.is_terminal:  # piped output: never wrap ids and paths at 80 columns
    console = Console(width=200)

OutOption = Annotated[Path, typer.Option("--out", help="Runs directory (run store).")]
VisaOption = Annotated[str | None, typer.Option(
    "--visa-library", help="VISA library for the bench's SMU: a backend (@py, @ivi, @sim), a "
    "library path, or FILE.yaml@sim (default: $CLLN_VISA_LIBRARY, else [smu] visa_library).")]
LogFileOption = Annotated[Path | None, typer.Option(
    help="Append progress lines and the run's event log to this file.")]
ProgressEveryOption = Annotated[float, typer.Option(
    help="Seconds between progress lines when output is not a terminal or goes to --log-file.",
    min=0.1, max=3600)]


def open_store(out: Path, *, write: bool = False) -> RunStore:
    """The run store in ``out``; read-only unless ``write`` (read commands work on a
    read-only folder and never change the store)."""
    from clln.controller.errors import UserError
    from clln.controller.store import RunStore

    if not (out / "runs.sqlite").exists():
        raise UserError(f"{out}: no run store here (train first, or pass --out DIR)")
    return RunStore(out, readonly=not write)


def escaped(text: object, keep: str = "") -> str:
    """``text`` safe for a terminal: control and format characters (escape sequences,
    line breaks, bidirectional overrides) shown as Python escapes, except those in ``keep``."""
    import unicodedata

    return "".join(c if c in keep or not unicodedata.category(c).startswith("C")
                   else repr(c)[1:-1] for c in str(text))


def plain(text: object, keep: str = "") -> str:
    """:func:`escaped` and safe inside rich markup (brackets taken literally)."""
    from rich.markup import escape

    return escape(escaped(text, keep))


def say(message: str) -> None:
    """One unwrapped line on stderr (line breaks and escape sequences inside a message
    are shown escaped)."""
    print(escaped(message), file=sys.stderr, flush=True)
