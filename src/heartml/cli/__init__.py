"""The `heartml` command line (:mod:`heartml.cli.app` wires one module per command group)."""

from heartml.cli.app import app, main, promote_app, promote_main, run

__all__ = ["app", "main", "promote_app", "promote_main", "run"]
