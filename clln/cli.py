"""The ``clln`` command line: the application, its commands (from :mod:`clln.commands`)
and the entry point that turns errors into one line and an exit code."""

from __future__ import annotations

import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from clln.commands.bench import calibrate, check
from clln.commands.common import say
from clln.commands.live import control, sweep, watch
from clln.commands.runs import analyze, export, report, runs, show
from clln.commands.training import resume, train

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Lab control for contrastive local learning networks: train, inspect and export runs.",
)
_state = {"debug": False}

# in the order ``clln --help`` lists them
for _command in (train, resume, check, calibrate, runs, show, report, export, analyze, sweep, watch,
                 control):
    app.command()(_command)


def _print_version(value: bool) -> None:
    if value:
        import clln

        print(f"clln {clln.__version__}", flush=True)
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks of unexpected errors (also accepted after the command).")]
        = False,
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_print_version, is_eager=True)]
        = False,
) -> None:
    _state["debug"] = _state["debug"] or debug


def _is_click(exc: Exception, name: str) -> bool:
    """Whether exc is click's exception ``name`` (typer may bundle its own click)."""
    import importlib

    kinds = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return isinstance(exc, tuple(kinds))


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    from clln.benchrun import BenchOverrideWarning
    from clln.controller.calibration import CalibrationWarning

    if issubclass(category, (CalibrationWarning, BenchOverrideWarning)):
        say(f"warning: {message}")
    else:  # any other warning: one escaped line too (it may quote a name or a file)
        say(f"warning: {category.__name__}: {message}")


def _exit_code(exc: Exception) -> int | None:
    """The exit code for an exception out of a command, after saying what happened: user
    errors 2, interruptions 130, anything else 1; None to re-raise it (--debug)."""
    from clln.controller.errors import CllnError, Interrupted, UserError

    if isinstance(exc, UserError):
        say(f"error: {exc}")
        return 2
    if isinstance(exc, sqlite3.DatabaseError):  # a damaged, full or unwritable run store
        from clln.controller.store import store_problem

        say(f"error: {store_problem(Path('runs.sqlite'), exc)}")
        return 2
    if isinstance(exc, Interrupted):
        say(str(exc))
        return 130
    if isinstance(exc, CllnError):
        if _state["debug"]:
            return None
        say(f"error: {exc}")
        return 1
    if _is_click(exc, "ClickException"):  # usage errors: bad option, unknown command
        exc.show()  # type: ignore[attr-defined]
        return 2 if exc.exit_code == 1 else exc.exit_code  # type: ignore[attr-defined,no-any-return]
    if _is_click(exc, "Abort"):
        return 130
    if _state["debug"]:
        return None
    say(f"unexpected error: {type(exc).__name__}: {exc} (run with --debug for a traceback)")
    return 1


def main() -> None:
    """Entry point: user errors print one line and exit 2; Ctrl-C exits 130."""
    warnings.showwarning = _show_warning
    args = sys.argv[1:]
    if "--debug" in args[:args.index("--")] if "--" in args else "--debug" in args:
        _state["debug"] = True  # --debug anywhere on the line, as the error messages suggest
        args.remove("--debug")
    # numpy's overflow and invalid-value warnings: the finite checks turn a non-finite
    # result into one line ("training diverged at step k: ..."), nothing more is printed
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="clln")
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # names drawn in reports
    try:
        code: Any = app(args=args, prog_name="clln", standalone_mode=False)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
    except Exception as exc:
        exit_code = _exit_code(exc)
        if exit_code is None:
            raise
        sys.exit(exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
