"""`heartml adapt`: a registered version recalibrated for a site, validated there, registered.

With ``--promote``, each version just adapted is then put through the site gate
(``promote --auto --site SITE``) in the same process, so a pipeline imports MLflow once.

Exit codes: 0 every site adapted (and, with ``--promote``, promoted or already champion); 2 a
site's sample supports no update (``auto`` registered nothing for it and says why; the other
sites are adapted), or the site gate refused a version, as the gate's refusal, so a pipeline
can go on; 1 bad input (a row outside the schema, no outcome column, a bad site name,
a method the sample cannot support, a version that is itself adapted), with nothing
registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from heartml.cli.common import EXIT_ERROR, EXIT_REFUSED, fail, load_settings, user_errors

if TYPE_CHECKING:
    from heartml.adaptation.register import SiteOutcome

METHODS = ("auto", "intercept", "logistic", "refit")


def adapt(
    model: Annotated[
        str,
        typer.Argument(
            help="NAME/VERSION, NAME (its newest version not itself adapted) or 'champion'.",
            show_default=False,
        ),
    ],
    site: Annotated[
        list[str],
        typer.Option("--site", help="Site to adapt for ([a-z0-9_]); give it once per site."),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="The site's labelled patients: CSV in UCI coding with the outcome column "
            "'num' (default: the UCI site's own file). One site only.",
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="auto (Vergouwe's closed test), intercept, logistic or refit.",
        ),
    ] = "auto",
    promote: Annotated[
        bool,
        typer.Option(
            "--promote",
            help="Then promote each adapted version through the site gate "
            "(as promote --auto --site SITE).",
        ),
    ] = False,
) -> None:
    """Recalibrate a version for each site, validate it on the site's rows, register it."""
    from heartml.data.sites import check_site

    if method not in METHODS:
        fail(f"unknown method '{method}': choose from {', '.join(METHODS)}")
    with user_errors():
        sites = [check_site(s) for s in site]
    if len(set(sites)) != len(sites):
        fail("a site is given twice")
    if data is not None and len(sites) != 1:
        fail("--data is one site's file: give exactly one --site with it")
    settings = load_settings()
    outcomes = _run(settings, model, sites, data, method)
    _print_outcomes(outcomes)
    for outcome in outcomes:
        if outcome.refusal:
            typer.echo(f"⚠️  {outcome.refusal}", err=True)
    refused = any(o.refusal for o in outcomes)
    if promote:
        adapted = [o.site for o in outcomes if o.version]
        refused = _promote_sites(settings, adapted) or refused
    if refused:
        raise typer.Exit(EXIT_REFUSED)


def _promote_sites(settings: Any, sites: list[str]) -> bool:
    """Each site's newest adapted version through the site gate; True when one was refused."""
    from heartml import registry

    refused = False
    for site in sites:
        with user_errors():
            result = registry.promote_site_best(settings, site)
        marker = "⛔" if result.refused else "🏥"
        typer.echo(f"{marker} {site}: {result.message}")
        refused = refused or result.refused
    return refused


def _run(
    settings: Any, model: str, sites: list[str], data: Path | None, method: str
) -> list[SiteOutcome]:
    from heartml.adaptation.register import adapt_sites
    from heartml.adaptation.sample import InvalidSampleError
    from heartml.training.experiment import load_experiment

    with user_errors():
        seed = load_experiment(settings.experiment_config).split.seed
        try:
            return adapt_sites(settings, model, sites, data, method, seed)
        except InvalidSampleError as exc:
            from heartml.cli.data import print_report

            print_report(exc.report)
            raise typer.Exit(EXIT_ERROR) from exc


def _interval(found: dict[str, Any] | None, digits: int = 2) -> str:
    if found is None or found.get("estimate") is None:
        return "n/a"
    low, high = found.get("low"), found.get("high")
    if low is None or high is None:
        return f"{found['estimate']:.{digits}f}"
    return f"{found['estimate']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _print_outcomes(outcomes: list[SiteOutcome]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Site adaptation (after: validated by repeated cross-validation; 95 % intervals)"
    )
    for column in (
        "site",
        "method",
        "rows used / refused",
        "slope before → after",
        "intercept before → after",
        "mean pred. − obs. before → after",
        "ROC-AUC before → after",
        "registered",
    ):
        table.add_column(column, no_wrap=column == "registered")
    for outcome in outcomes:
        found = outcome.section
        if found is None:
            table.add_row(outcome.site, "not adapted", "", "", "", "", "", "nothing")
            continue
        before, after, rows = found["before"], found["after"], found["rows"]
        refused = ", ".join(f"{k} {n}" for k, n in found["refused"]["by_field"].items())
        table.add_row(
            outcome.site,
            found["method"],
            f"{rows['answered']} / {rows['refused']}" + (f" ({refused})" if refused else ""),
            f"{_interval(before['slope'])} → {_interval(after['slope'])}",
            f"{_interval(before['intercept'])} → {_interval(after['intercept'])}",
            f"{_interval(before['difference'], 3)} → {_interval(after['difference'], 3)}",
            _auc_change(found),
            outcome.version or "",
        )
    console = Console(width=200)
    console.print(table)
    for outcome in outcomes:
        if outcome.section is not None:
            console.print(
                f"{outcome.site}: {outcome.section['method']}, {_short_why(outcome.section)}"
            )


def _auc_change(found: dict[str, Any]) -> str:
    """Before → after; a recalibration keeps the order of the risks, so its ROC-AUC."""
    from heartml.adaptation.register import reported_roc_auc

    before = _interval(found["before"]["roc_auc"], 3)
    if found["recalibration"] is not None:
        return f"{before} → unchanged (same order of risks)"
    return f"{before} → {_interval(reported_roc_auc(found), 3)}"


def _short_why(found: dict[str, Any]) -> str:
    test = found["closed_test"]
    if test is None:
        return "asked for"
    shown = [f"{t['simpler']} vs {t['extensive']} p={t['p_value']:.2g}" for t in test["tests"]]
    left = [entry["method"] for entry in test["left_out"]]
    text = "closed test: " + ("; ".join(shown) or "nothing else estimable")
    if left:
        text += f"; too few rows for {', '.join(left)}"
    return text
