"""`heartml report`: a version's model card, written to a directory or opened in a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from heartml.cli.common import load_settings, user_errors


def report(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int | None, typer.Argument(help="Version (default: latest).")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Directory to write it to (default: model-cards/NAME-vN)."),
    ] = None,
    open_: Annotated[
        bool, typer.Option("--open", help="Open the HTML card in a web browser.")
    ] = False,
) -> None:
    """Write the model card of NAME (its latest version, or VERSION): model_card.md, a
    self-contained model_card.html, and model_card.json with every number."""
    import webbrowser

    from heartml import registry
    from heartml.evidence.card import CARD_HTML, CARD_JSON, CARD_MD

    settings = load_settings()
    with user_errors():
        found = registry.read_family(settings).find(name, version)
        directory = out or Path("model-cards") / f"{found.name}-v{found.version}"
        target, written = registry.fetch_model_card(settings, name, found.version, directory)
    typer.echo(f"📄 model card of {target.ref}:")
    for file in (CARD_HTML, CARD_MD, CARD_JSON):
        typer.echo(f"   {written / file}")
    if open_:
        page = (written / CARD_HTML).resolve().as_uri()
        if not webbrowser.open(page):
            typer.echo(f"   (no browser found here: open {page} yourself)")
