"""`heartml store repair`: finish the schema migration of an embedded store left half-done."""

from __future__ import annotations

import typer

from heartml.cli.common import load_settings, user_errors

store_app = typer.Typer(help="Look after the embedded SQLite tracking store.", no_args_is_help=True)


@store_app.command("repair")
def repair() -> None:
    """Repair a store left half-migrated: keep a copy, drop alembic's leftovers, upgrade.

    Only for the embedded SQLite store (MLFLOW_TRACKING_URI=sqlite:///…); a store that needs
    nothing is left as it is.
    """
    from heartml.registry import repair_sqlite_store

    settings = load_settings()
    with user_errors():
        result = repair_sqlite_store(settings.mlflow_tracking_uri)
    if not result.repaired:
        typer.echo(f"✅ {result.path} is at schema revision {result.revision}; nothing to repair")
        return
    dropped = f"dropped {', '.join(result.dropped)}; " if result.dropped else ""
    typer.echo(
        f"✅ repaired {result.path}: {dropped}migrated to schema revision {result.revision} "
        f"(the store as it was: {result.backup})"
    )
