"""`heartml serve` and `heartml export`: the champion over HTTP, or written to a directory.

Nothing heavy is imported at module level, so that `heartml --help` and
`heartml promote --list` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from heartml.cli.common import fail, format_score, load_settings, user_errors


def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind (env HEARTML_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (env HEARTML_PORT, default 8000).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Worker processes (env HEARTML_WORKERS).")
    ] = None,
    model_dir: Annotated[
        Path | None,
        typer.Option(
            "--model-dir",
            help="Serve a model written by `heartml export` instead of the registry's champion "
            "(env HEARTML_MODEL_DIR); no tracking server needed.",
        ),
    ] = None,
) -> None:
    """Serve the champion over HTTP and follow promotions (see /docs once running)."""
    from heartml.serve.server import ServeError, run_server

    settings = load_settings(host=host, port=port, workers=workers, model_dir=model_dir)
    with user_errors():
        if settings.site is not None:
            from heartml.data.sites import check_site

            check_site(settings.site)  # HEARTML_SITE: refused in one line, before starting
        try:
            run_server(settings)
        except ServeError as exc:
            fail(str(exc))


def export(
    directory: Annotated[Path, typer.Argument(help="Where to write the model directory.")],
) -> None:
    """Write the champion's model files and model.json to DIRECTORY, for `serve --model-dir`."""
    from heartml.model.export import ExportError, export_champion

    settings = load_settings()
    with user_errors():
        try:
            result = export_champion(settings, directory)
        except ExportError as exc:
            fail(str(exc))
    info = result.info
    typer.echo(
        f"✅ exported {info.name} v{info.version} (ROC-AUC: {format_score(info.roc_auc)}, "
        f"run {info.run_id}) "
        f"to {result.directory}"
    )
    typer.echo(f"   files: {', '.join(result.files)}")
    typer.echo(f"   serve it with: heartml serve --model-dir {result.directory}")
