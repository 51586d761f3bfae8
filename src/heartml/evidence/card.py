"""The model card's files: ``model_card.json`` (every number), ``model_card.md`` and a
self-contained ``model_card.html`` (the same text, plots embedded), rendered from the JSON alone.

The JSON is built at training (:mod:`heartml.training.card`) and rendered again, with the
promotion gate's evidence, whenever a gated promotion decides about it (:func:`with_gate`).
Rendering is a pure function of the JSON (and the plots): every number the Markdown or the HTML
shows is in the JSON, which a test checks.

The layout is in Jinja2 templates shipped with the package (``templates/``): the Markdown in
``model_card.md.j2``, the page around its HTML in ``model_card.html.j2`` (autoescaped).
:func:`card_view` prepares the rows the Markdown shows; the filters ``num``, ``ci``, ``pct``
and ``fmt`` format the numbers.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartml.data.schema import FEATURES, TARGET

if TYPE_CHECKING:
    from jinja2 import Environment
    from markdown_it.token import Token

CARD_JSON = "model_card.json"


CARD_MD = "model_card.md"


CARD_HTML = "model_card.html"


PLOTS_DIR = "plots"


CARD_VERSION = 1


SUBGROUP_LABELS = {
    "female": "female",
    "male": "male",
    "age_under_55": "age < 55",
    "age_55_plus": "age ≥ 55",
}


MASKING_LABELS = {"all_optional": "all optional tests"}


# The sections on other sites, in order: the evidence key and its title (its plot is
# calibration_<key>.png).
SITE_SECTIONS = (
    ("sites", "Scored by this model on the sites it was not trained on"),
    ("leave_one_site_out", "Leave-one-site-out: fitted on the other sites, scored on this"),
)


TRIPOD_ANSWERED = (
    "1 title (model, outcome, population)",
    "3b target population and intended use",
    "5a data sources",
    "6a setting and centres",
    "7 data preparation",
    "8a outcome",
    "9a predictors",
    "10 sample size (rows, events)",
    "11 missing data",
    "12a data use (training, held-out, other sites)",
    "12c model, selection and internal validation",
    "12d heterogeneity across sites",
    "12e performance measures and their intervals",
    "14 fairness (sex and age subgroups)",
    "15 model output",
    "16 training versus evaluation data",
    "20b participant characteristics per site",
    "22 model specification (the registered model)",
    "23a performance with intervals",
    "23b performance per site",
    "26 limitations (sites needing recalibration, missing tests)",
    "27a input data that is missing",
)


TRIPOD_OPEN = (
    "2 abstract",
    "3c health inequalities",
    "4 objectives",
    "17 ethics",
    "18 open science (funding, protocol, registration)",
    "19 patient and public involvement",
    "25 interpretation",
    "27b-c users' expertise and future research",
)


def with_gate(card: Mapping[str, Any], gate: Mapping[str, Any]) -> dict[str, Any]:
    """The card with a promotion decision's evidence (the gate's JSON record)."""
    return {**card, "gate": dict(gate)}


def write_card_files(
    card: Mapping[str, Any], directory: Path, plots: Mapping[str, bytes] | None = None
) -> None:
    """``model_card.json``, ``.md`` and ``.html`` into ``directory``; the HTML embeds the PNGs
    of ``plots`` (path under ``plots/`` -> bytes; default: the files in ``directory/plots``)."""
    if plots is None:
        folder = directory / PLOTS_DIR
        plots = (
            {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
            if folder.is_dir()
            else {}
        )
    (directory / CARD_JSON).write_text(json.dumps(card, indent=2), "utf-8")
    markdown = render_markdown(card, available=set(plots))
    (directory / CARD_MD).write_text(markdown, "utf-8")
    (directory / CARD_HTML).write_text(render_html(markdown, card, plots), "utf-8")


# --- number formats: the templates' filters -------------------------------------------------


def format_number(value: float | None, digits: int = 4) -> str:
    """``num``: fixed decimals; ``n/a`` for a number the JSON does not have."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_interval(found: Mapping[str, float | None] | None, digits: int = 4) -> str:
    """``ci``: ``estimate [low, high]``."""
    if found is None:
        return "n/a (too few rows of an outcome)"
    return (
        f"{format_number(found['estimate'], digits)} "
        f"[{format_number(found['low'], digits)}, {format_number(found['high'], digits)}]"
    )


def format_percent(value: float) -> str:
    """``pct``: a share as a whole percentage."""
    return f"{100 * value:.0f} %"


def format_counts(counts: Mapping[str, int]) -> str:
    """``counts``: ``column n, column n`` (``none`` when empty)."""
    return ", ".join(f"{column} {n}" for column, n in counts.items()) or "none"


@functools.cache
def templates() -> Environment:
    """The card's templates, from the installed package; HTML templates autoescaped."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(
        loader=PackageLoader("heartml.evidence", "templates"),
        autoescape=select_autoescape(["html.j2"]),
        undefined=StrictUndefined,
        # A block tag on its own line leaves no line behind: Markdown is line-based.
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        num=format_number, ci=format_interval, pct=format_percent, counts=format_counts, fmt=format
    )
    return environment


# --- rendering -------------------------------------------------------------------------------


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """The session's candidates side by side, as a Markdown table."""
    table = templates().get_template("comparison.md.j2").render(candidates=rows)
    return table.rstrip("\n")


def card_view(card: Mapping[str, Any], available: set[str]) -> dict[str, Any]:
    """What the Markdown template shows: the card's sections, with the rows of its tables
    prepared (labels looked up, the sections on other sites that have entries)."""
    evidence = card["evidence"]
    site_tables = [
        {
            "key": key,
            "title": title,
            "rows": [{"site": site, **found} for site, found in entries.items()],
        }
        for key, title in SITE_SECTIONS
        if (entries := evidence.get(key) or {})
    ]
    return {
        "model": card["model"],
        "data": card["data"],
        "experiment": card["experiment"],
        "selection": card["selection"],
        "candidates": card["selection"]["candidates"],
        "cv": evidence["cv"],
        "holdout": evidence["holdout"],
        "internal": evidence.get("internal_validation"),
        "gate": card.get("gate"),
        "site_adaptation": card.get("site_adaptation"),
        "lineage": card["lineage"],
        "optional_fields": card["optional_fields"],
        "outcome": TARGET.description.lower(),
        "feature_count": len(FEATURES),
        "plots": available,
        "plots_dir": PLOTS_DIR,
        "data_sites": [{"site": site, **found} for site, found in card["data"]["sites"].items()],
        "site_tables": site_tables,
        "subgroups": [
            {"label": SUBGROUP_LABELS.get(key, key), **found}
            for key, found in evidence["subgroups"].items()
        ],
        "missing_tests": [
            {"label": MASKING_LABELS.get(key, key), **found}
            for key, found in evidence["missing_tests"].items()
        ],
        "params": json.dumps(card["model"]["params"], sort_keys=True),
        "tripod_answered": TRIPOD_ANSWERED,
        "tripod_open": TRIPOD_OPEN,
    }


def render_markdown(card: Mapping[str, Any], available: set[str] | None = None) -> str:
    """The card as Markdown (plots referenced under ``plots/``: those in ``available``)."""
    view = card_view(card, available if available is not None else set())
    return templates().get_template("model_card.md.j2").render(view)


def render_html(markdown: str, card: Mapping[str, Any], plots: Mapping[str, bytes]) -> str:
    """One self-contained HTML page: the Markdown rendered, each plot embedded as a data URI."""
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown)
    _embed_plots(tokens, plots)
    body = parser.renderer.render(tokens, parser.options, {})
    # markdown-it escapes the text it renders (raw HTML is off): the body is safe as it is.
    template = templates().get_template("model_card.html.j2")
    return template.render(model=card["model"], body=Markup(body))


def _embed_plots(tokens: list[Token], plots: Mapping[str, bytes]) -> None:
    """Point each image under ``plots/`` whose bytes are known at a ``data:`` URI instead."""
    for token in tokens:
        _embed_plots(token.children or [], plots)
        if token.type != "image":
            continue
        src = str(token.attrGet("src") or "")
        name = src.removeprefix(f"{PLOTS_DIR}/")
        if name != src and name in plots:
            encoded = base64.b64encode(plots[name]).decode("ascii")
            token.attrSet("src", f"data:image/png;base64,{encoded}")
