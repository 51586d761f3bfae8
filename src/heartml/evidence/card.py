"""The model card's files: ``model_card.json`` (every number), ``model_card.md`` and a
self-contained ``model_card.html`` (the same text, plots embedded), rendered from the JSON alone.

The JSON is built at training (:mod:`heartml.training.card`) and rendered again, with the
promotion gate's evidence, whenever a gated promotion decides about it (:func:`with_gate`).
Rendering is a pure function of the JSON (and the plots): every number the Markdown or the HTML
shows is in the JSON, which a test checks.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from heartml.data.schema import FEATURES, TARGET

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


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(found: Mapping[str, float | None] | None, digits: int = 4) -> str:
    if found is None:
        return "n/a (too few rows of an outcome)"
    return (
        f"{_num(found['estimate'], digits)} "
        f"[{_num(found['low'], digits)}, {_num(found['high'], digits)}]"
    )


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    return _table(
        [
            "candidate",
            "CV ROC-AUC [95 % CI]",
            "OOF calibration slope",
            "held-out ROC-AUC [95 % CI]",
            "held-out Brier",
        ],
        [
            [
                ("**" + row["candidate"] + "** (chosen)") if row["chosen"] else row["candidate"],
                _ci(row["cv_roc_auc"]),
                _num(row["oof_calibration_slope"], 2),
                _ci(row["holdout_roc_auc"]),
                _num(row["brier_score"]),
            ]
            for row in rows
        ],
    )


def _population_rows(
    entries: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str] | None = None
) -> list[list[str]]:
    return [
        [
            (labels or {}).get(key, key),
            str(found["rows"]),
            _pct(found["prevalence"]),
            _pct(found["mean_predicted"]),
            _ci(found["roc_auc"], 3),
            _num(found["calibration"]["slope"], 2),
            _num(found["calibration"]["intercept"], 2),
        ]
        for key, found in entries.items()
    ]


POPULATION_HEADER = [
    "rows",
    "observed",
    "mean predicted",
    "ROC-AUC [95 % CI]",
    "calibration slope",
    "intercept",
]


def render_markdown(card: Mapping[str, Any], available: set[str] | None = None) -> str:
    """The card as Markdown (plots referenced under ``plots/``: those in ``available``)."""
    model, evidence, data = card["model"], card["evidence"], card["data"]
    experiment = card["experiment"]
    plots = available if available is not None else set()
    cv, holdout = evidence["cv"], evidence["holdout"]
    out: list[str] = []

    def add(*lines: str) -> None:
        out.extend(lines)

    def plot(path: str, caption: str) -> None:
        if path in plots:
            add(f"![{caption}]({PLOTS_DIR}/{path})", "")

    add(
        f"# Model card: {model['name']} version {model['version']}",
        "",
        f"Risk of angiographic coronary artery disease ({TARGET.description.lower()}; "
        f"positive when num > 0), from {len(FEATURES)} clinical fields, by "
        f"{model['candidate'].replace('_', ' ')}. Output: P(disease), a probability between 0 "
        "and 1, and the class at 0.5.",
        "",
        f"Status: {_status(card)}",
        "",
        "## Intended use",
        "",
        "- **For**: decision support for a clinician assessing an adult referred with chest "
        "pain or suspected coronary artery disease, at a centre whose patients resemble the "
        "training site's (see *Every site*): the probability that angiography would show a "
        "> 50 % narrowing, next to the clinician's own judgement.",
        "- **Not for**: screening people without symptoms; acute chest pain or suspected "
        "acute coronary syndrome; deciding on angiography or treatment without a clinician; "
        "patients outside the training ages "
        f"({_age_range(card)}); any site where *Every site* says to recalibrate first; "
        "children.",
        "- The data are from 1981-1988 (UCI Heart Disease): practice, tests and populations "
        "have changed since. A local validation comes before clinical use.",
        "",
        "## Data",
        "",
    )
    site_rows = []
    for site, found in data["sites"].items():
        missing = ", ".join(f"{c} {n}" for c, n in found["missing"].items()) or "none"
        cleaned = ", ".join(f"{c} {n}" for c, n in found["cleaned"].items()) or "none"
        site_rows.append(
            [
                site,
                found["role"],
                str(found["rows"]),
                f"{found['events']} ({_pct(found['prevalence'])})",
                missing,
                cleaned,
            ]
        )
    add(
        _table(
            [
                "site",
                "use",
                "rows",
                "with disease",
                "missing values",
                "zeros read as missing",
            ],
            site_rows,
        ),
        "",
        f"Training rows: {data['training_rows']} ({data['training_events']} with disease); "
        f"held-out rows, never trained on: {data['heldout_rows']} ({data['heldout_events']} "
        f"with disease), a {experiment['split']['test_size']:.0%} split stratified by outcome "
        f"within site, seed {experiment['split']['seed']}. Rows with a value outside the "
        "schema are refused, not trained on; 0 for blood pressure or cholesterol means "
        "'not measured' and is read as missing. Missing values are imputed inside the model "
        "(median for measurements, most frequent value for codes), fitted on training rows "
        "only.",
        "",
        "## Candidates compared",
        "",
        f"Selection: {experiment['selection']['primary_metric']} over repeated stratified "
        f"{experiment['cv']['folds']}-fold cross-validation ({experiment['cv']['repeats']} "
        "repeats) of the training rows; 95 % intervals: Nadeau-Bengio corrected t for the "
        "cross-validation mean, DeLong for held-out ROC-AUC.",
        "",
        comparison_markdown(card["selection"]["candidates"]),
        "",
        card["selection"]["why"],
        "",
        "## Discrimination",
        "",
        _table(
            ["estimate", "rows", "ROC-AUC [95 % CI]", "method"],
            [
                [
                    "cross-validation mean (selection)",
                    str(cv["rows"]),
                    _ci(cv["roc_auc"]),
                    f"{cv['repeats']}×{cv['folds']}-fold, Nadeau-Bengio",
                ],
                [
                    "out-of-fold predictions, averaged per row",
                    str(cv["out_of_fold"]["rows"]),
                    _ci(cv["out_of_fold"]["roc_auc"]),
                    "DeLong",
                ],
                ["held-out rows", str(holdout["rows"]), _ci(holdout["roc_auc"]), "DeLong"],
                *(
                    [
                        [
                            "internal validation: the procedure over every row",
                            str(evidence["internal_validation"]["rows"]),
                            _ci(evidence["internal_validation"]["roc_auc"]),
                            f"{evidence['internal_validation']['repeats']}×"
                            f"{evidence['internal_validation']['folds']}-fold, Nadeau-Bengio",
                        ]
                    ]
                    if "internal_validation" in evidence
                    else []
                ),
            ],
        ),
        "",
    )
    if "internal_validation" in evidence:
        add(
            "The internal validation repeats the whole modelling procedure (imputation, "
            "scaling, fitting) in cross-validation over every row of the training sites, "
            "held-out rows included: it estimates how well this procedure does on new patients "
            "of the same population (TRIPOD's preferred internal validation). The registered "
            "model itself is fitted on the training rows only, so that the held-out rows stay "
            "unseen for the promotion gate.",
            "",
        )
    at = holdout["at_threshold"]
    add(
        f"At risk ≥ 0.5 on the held-out rows: accuracy {_num(at['accuracy'], 3)}, precision "
        f"{_num(at['precision'], 3)}, recall {_num(at['recall'], 3)}, F1 {_num(at['f1'], 3)}; "
        f"Brier score {_num(at['brier_score'])}, log loss {_num(at['log_loss'])}.",
        "",
    )
    plot("roc_curve.png", "ROC curves")
    plot("confusion_matrix.png", "Confusion matrix")
    oof_cal = cv["out_of_fold"]["calibration"]
    held_cal = holdout["calibration"]
    add(
        "## Calibration",
        "",
        f"Out-of-fold: slope {_num(oof_cal['slope'], 2)}, intercept "
        f"{_num(oof_cal['intercept'], 2)} (mean predicted {_pct(oof_cal['mean_predicted'])}, "
        f"observed {_pct(oof_cal['observed'])}); held-out: slope {_num(held_cal['slope'], 2)}, "
        f"intercept {_num(held_cal['intercept'], 2)}. A slope of 1 and an intercept of 0 are "
        "perfect; a slope below 1 means risks too extreme, above 1 too timid (Van Calster et "
        "al. 2019). Held-out slopes on a few dozen rows are noisy: the gate judges the "
        "out-of-fold ones.",
        "",
        _table(
            ["decile of predicted risk", "rows", "mean predicted", "observed [95 % CI]"],
            [
                [
                    str(i + 1),
                    str(b["rows"]),
                    _num(b["mean_predicted"], 3),
                    f"{_num(b['observed'], 3)} [{_num(b['low'], 3)}, {_num(b['high'], 3)}]",
                ]
                for i, b in enumerate(cv["calibration_curve"])
            ],
        ),
        "",
    )
    plot("calibration_curve.png", "Calibration curve")
    add("## Every site", "")
    for key, title in (
        ("sites", "Scored by this model on the sites it was not trained on"),
        ("leave_one_site_out", "Leave-one-site-out: fitted on the other sites, scored on this"),
    ):
        entries = evidence.get(key) or {}
        if not entries:
            continue
        add(
            f"{title}:",
            "",
            _table(
                ["site", *POPULATION_HEADER, "missing values"],
                [
                    [*row, str(found["missing_values"])]
                    for row, found in zip(_population_rows(entries), entries.values(), strict=True)
                ],
            ),
            "",
        )
        for site, found in entries.items():
            if found["recalibrate"]:
                add(
                    f"- **{site}: do not use without local recalibration** — {found['why']} "
                    f"(mean predicted {_pct(found['mean_predicted'])} against "
                    f"{_pct(found['prevalence'])} observed).",
                )
            else:
                add(f"- {site}: calibration within the acceptable band.")
        add("")
        plot(f"calibration_{key}.png", f"Calibration, {title.lower()}")
    if not evidence.get("sites") and not evidence.get("leave_one_site_out"):
        add(
            "No other site was scored: `heartml data download --all-sites` before training "
            "adds Hungary, Switzerland and VA Long Beach. Until then, nothing is known of this "
            "model outside its training site.",
            "",
        )
    add(
        "## Subgroups",
        "",
        "Out-of-fold predictions (averaged per row) of the training rows:",
        "",
        _table(
            ["subgroup", *POPULATION_HEADER],
            _population_rows(evidence["subgroups"], SUBGROUP_LABELS),
        ),
        "",
        "## Patients with missing tests",
        "",
        f"The API accepts null for {', '.join(card['optional_fields'])} and imputes them as "
        "training did. What a missing test costs, on the training rows' out-of-fold "
        "predictions with the field removed (the same folds' models), paired with the same "
        "rows complete, and on the other sites' rows that really lack it:",
        "",
        _table(
            [
                "missing",
                "ROC-AUC without it [95 % CI]",
                "complete",
                "difference [95 % CI]",
                "other sites' rows lacking it",
                "their ROC-AUC [95 % CI]",
            ],
            [
                [
                    MASKING_LABELS.get(masking, masking),
                    _ci(found["roc_auc"]),
                    _num(found["complete_roc_auc"]),
                    _ci(found["delta_roc_auc"]),
                    str(found["other_sites"]["rows"]),
                    _ci(found["other_sites"]["roc_auc"], 3)
                    if found["other_sites"]["rows"]
                    else "n/a (no such rows)",
                ]
                for masking, found in evidence["missing_tests"].items()
            ],
        ),
        "",
    )
    plot("feature_importance.png", "What drives the model")
    add("## Promotion gate", "")
    add(*_gate_lines(card.get("gate")), "")
    lineage = card["lineage"]
    add(
        "## Lineage",
        "",
        f"- Model: `{model['uri']}`, run `{lineage['run_id']}`",
        f"- Data: sites {lineage['data_sites']}, sha256 `{lineage['data_sha256']}`",
        f"- Code: git commit `{lineage['git_commit']}`",
        f"- Experiment: version {lineage['experiment_version']}, config hash "
        f"`{lineage['config_hash']}`, split seed {lineage['split_seed']}, held-out fraction "
        f"{lineage['split_test_size']}",
        f"- Hyper-parameters: {json.dumps(model['params'], sort_keys=True)}",
        "- Every number on this card is computed from `predictions.csv` (logged with the run) "
        "and the data files above; `model_card.json` holds them all.",
        "",
        "## TRIPOD+AI",
        "",
        "Items of the TRIPOD+AI checklist (Collins et al., BMJ 2024;385:e078378) this card "
        "answers: " + "; ".join(TRIPOD_ANSWERED) + ".",
        "",
        "Left to the team that deploys it: " + "; ".join(TRIPOD_OPEN) + ".",
        "",
    )
    return "\n".join(out)


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


def _age_range(card: Mapping[str, Any]) -> str:
    ranges = card.get("data", {}).get("age_range")
    return f"{ranges[0]:g}-{ranges[1]:g} years" if ranges else "see Data"


def _status(card: Mapping[str, Any]) -> str:
    gate = card.get("gate")
    chosen = card["selection"]["chosen"]
    base = "best of its training session" if chosen else "candidate, not chosen in its session"
    if not gate:
        return base + "; no promotion decided yet."
    return base + f"; promotion gate {gate['verdict']} at {gate['at']}."


def _gate_lines(gate: Mapping[str, Any] | None) -> list[str]:
    if not gate:
        return [
            "No gated promotion has judged this version yet: the card is rendered again, "
            "with the evidence, when one does."
        ]
    lines = [
        f"- Verdict: **{gate['verdict']}** at {gate['at']} by {gate.get('by') or 'unknown'}"
        + (" (the gate was overridden with --force)" if gate.get("forced") else ""),
        f"- Champion compared with: {gate.get('champion') or 'none (first promotion)'}",
    ]
    comparison = gate.get("comparison")
    if comparison:
        lines.append(f"- Rows compared: {comparison['description']}")
        if comparison.get("delta") is not None:
            lines.append(
                f"- ROC-AUC: challenger {_num(comparison['challenger_roc_auc'])}, champion "
                f"{_num(comparison['champion_roc_auc'])}, difference {_ci(comparison['delta'])}"
            )
    for check in gate.get("checks", []):
        mark = "passed" if check["passed"] else "FAILED"
        lines.append(f"- Rule {check['rule']}: {mark} — {check['detail']}")
    return lines


def render_html(markdown: str, card: Mapping[str, Any], plots: Mapping[str, bytes]) -> str:
    """One self-contained HTML page: the Markdown rendered, each plot embedded as a data URI."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def embed(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in plots:
            return match.group(0)
        encoded = base64.b64encode(plots[name]).decode("ascii")
        return f'src="data:image/png;base64,{encoded}"'

    body = re.sub(rf'src="{PLOTS_DIR}/([^"]+)"', embed, body)
    title = html.escape(f"Model card: {card['model']['name']} v{card['model']['version']}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "line-height:1.45;color:#1b1f24}table{border-collapse:collapse;margin:0.5rem 0 1rem}"
    "th,td{border:1px solid #c9d1d9;padding:0.25rem 0.5rem;text-align:left;font-size:0.9rem}"
    "th{background:#f3f5f7}img{max-width:100%;display:block;margin:0.5rem 0}"
    "code{background:#f3f5f7;padding:0 0.2rem}h1{font-size:1.6rem}h2{margin-top:2rem}"
)
