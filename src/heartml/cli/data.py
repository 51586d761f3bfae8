"""`heartml data download|validate`: fetch the UCI files and check them against the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from heartml.cli.common import EXIT_ERROR, load_settings, user_errors

if TYPE_CHECKING:
    from heartml.data.validate import ValidationReport

data_app = typer.Typer(help="Download and validate the UCI data.", no_args_is_help=True)

SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="Mirror to fetch from: a directory or base URL (env HEARTML_DATA_SOURCE).",
        show_default=False,
    ),
]
AllSitesOpt = Annotated[
    bool, typer.Option("--all-sites", help="All four sites, not only Cleveland.")
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Cache directory (env HEARTML_DATA_DIR).")
]


def _sites(all_sites: bool) -> tuple[str, ...]:
    from heartml.data.download import ALL_SITES, DEFAULT_SITES

    return ALL_SITES if all_sites else DEFAULT_SITES


@data_app.command("download")
def data_download(
    source: SourceOpt = None,
    all_sites: AllSitesOpt = False,
    data_dir: DataDirOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch even if cached.")] = False,
) -> None:
    """Fetch the UCI files, check each sha256 and keep them in the cache."""
    from heartml.data.download import download_data

    settings = load_settings(data_source=source, data_dir=data_dir)
    with user_errors():
        result = download_data(settings, _sites(all_sites), force=force)
    for fetched in result.files:
        state = "downloaded" if fetched.downloaded else "cached"
        typer.echo(f"✅ {fetched.path} ({state}, sha256 {fetched.sha256[:12]}…)")


@data_app.command("validate")
def data_validate(
    all_sites: AllSitesOpt = False,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the cached rows against the schema (UCI coding); exit 1 on fatal violations."""
    from heartml.data.download import verified_files
    from heartml.data.validate import read_raw, validate_frame

    settings = load_settings(data_dir=data_dir)
    with user_errors():
        report = validate_frame(read_raw(verified_files(settings, _sites(all_sites))))
    if as_json:
        typer.echo(json.dumps(_report_dict(report), indent=2))
    else:
        print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_ERROR)


def _report_dict(report: ValidationReport) -> dict[str, object]:
    return {
        "rows": report.rows,
        "ok": report.ok,
        "missing": report.missing,
        "missing_rows": {column: list(rows) for column, rows in report.missing_rows.items()},
        "violations": [
            {
                "site": v.site,
                "row": v.row,
                "column": v.column,
                "message": v.message,
                "fatal": v.fatal,
            }
            for v in report.violations
        ],
    }


def print_report(report: ValidationReport) -> None:
    typer.echo(f"📋 {report.rows} rows checked against the UCI schema")
    if report.missing:
        typer.echo("   missing values ('?' or a cleaned zero; imputed in training):")
        for column, count in report.missing.items():
            rows = report.missing_rows.get(column, ())
            shown = ", ".join(rows[:8]) + (f", … {len(rows) - 8} more" if len(rows) > 8 else "")
            typer.echo(f"     - {column}: {count} (rows {shown})")
    notes = [v for v in report.violations if not v.fatal]
    if notes:
        typer.echo(f"   {len(notes)} value(s) cleaned:")
        for note in notes[:20]:
            typer.echo(f"     - {note}")
        if len(notes) > 20:
            typer.echo(f"     … and {len(notes) - 20} more")
    for violation in report.fatal:
        typer.echo(f"❌ {violation}", err=True)
    typer.echo("✅ valid" if report.ok else f"❌ {len(report.fatal)} violation(s)")
