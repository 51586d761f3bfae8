"""The `heartml` command line: one Typer app wiring the command groups, and its entry points.

Every command parses its options, calls one library function, prints a table or JSON and exits
non-zero on failure with a one-line message. Heavy libraries (MLflow, scikit-learn, pandas)
are imported by the stage that needs them, so `heartml promote --list` pays only for what it
reads.

Exit codes are part of the contract: 2 means "refused by the gate", so a usage error (click's
2) exits 1. The mapping lives in the command classes, so the console script,
scripts/promote-model.py and an in-process ``CliRunner`` all see the same codes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from heartml.cli.accounts import registry_app
from heartml.cli.adapt import adapt
from heartml.cli.common import EXIT_ERROR, EXIT_OK, setup_logging
from heartml.cli.data import data_app
from heartml.cli.monitor import monitor
from heartml.cli.promote import PROMOTE_HELP, promote
from heartml.cli.report import report
from heartml.cli.score import score
from heartml.cli.serve import export, serve
from heartml.cli.store import store_app
from heartml.cli.train import train


class _HeartmlExitCodes:
    """Run the command in click's non-standalone mode and map what it raises to an exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        setup_logging()
        try:
            result = super().main(  # type: ignore[misc]
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
            code = result if isinstance(result, int) else EXIT_OK
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = EXIT_ERROR
        except Exception as exc:
            # click's UsageError and friends (Typer vendors its own click): shown click's way.
            if not (hasattr(exc, "show") and hasattr(exc, "exit_code")):
                raise
            exc.show()
            code = EXIT_ERROR
        if standalone_mode:
            sys.exit(code)
        return code


class HeartmlGroup(_HeartmlExitCodes, TyperGroup):
    """The `heartml` group, with heartml's exit codes."""


class HeartmlCommand(_HeartmlExitCodes, TyperCommand):
    """A command run on its own (scripts/promote-model.py), with heartml's exit codes."""


app = typer.Typer(
    name="heartml",
    cls=HeartmlGroup,
    help="Heart-disease risk models: data, training, promotion and serving on MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.command()(train)
app.command()(adapt)
app.command(name="promote", help=PROMOTE_HELP, no_args_is_help=False)(promote)
app.command()(report)
app.command()(serve)
app.command()(export)
app.add_typer(store_app, name="store")
app.add_typer(registry_app, name="registry")
app.command()(monitor)
app.command()(score)

promote_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
promote_app.command(cls=HeartmlCommand, help=PROMOTE_HELP)(promote)


def run(args: Sequence[str] | None = None, *, promote_only: bool = False) -> int:
    """Run `heartml ARGS` (or the promote command alone) in this process; returns the code."""
    command = typer.main.get_command(promote_app if promote_only else app)
    code: int = command.main(args=args, standalone_mode=False)
    return code


def main(args: list[str] | None = None) -> NoReturn:
    """The `heartml` console script."""
    sys.exit(run(args))


def promote_main(args: list[str] | None = None) -> NoReturn:
    """`scripts/promote-model.py`: the promote command on its own, same flags."""
    sys.exit(run(args, promote_only=True))
