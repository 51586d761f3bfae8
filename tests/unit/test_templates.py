"""The Jinja2 templates of the model card and the monitor report: shipped with the package; the
card rendered from its JSON alone, HTML escaped (the report's escaping: test_monitor_report)."""

from __future__ import annotations

import base64
import fnmatch
import json
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest

from heartml.evidence import card as card_module
from heartml.evidence.card import (
    CARD_HTML,
    CARD_JSON,
    CARD_MD,
    format_interval,
    format_number,
    render_markdown,
    write_card_files,
)
from heartml.evidence.measures import CalibrationBand, RowFacts, candidate_evidence
from heartml.evidence.predictions import (
    CV,
    HOLDOUT,
    MASKED_PREFIX,
    SITE_PREFIX,
    prediction_set,
    resampled_set,
)
from heartml.monitoring import report

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
SCRIPT = "<script>alert('card')</script>"


def synthetic_card(gate: dict[str, Any] | None = None) -> dict[str, Any]:
    """A card as training writes it, its evidence computed from synthetic predictions."""
    rng = np.random.default_rng(7)
    n = 80
    ids = np.array([f"cleveland:{i + 1}" for i in range(n)], dtype=object)
    y = np.tile([0, 1], n // 2)
    plan = np.vstack([rng.permutation(np.arange(n) % 4) for _ in range(2)])
    cv = 1 / (1 + np.exp(-(1.5 * y + rng.normal(0, 1, (2, n)) - 0.75)))
    site_ids = np.array([f"va:{i + 1}" for i in range(40)], dtype=object)
    site_y = np.tile([0, 1], 20)
    sets = {
        CV: resampled_set(ids, y, plan, cv),
        MASKED_PREFIX + "ca": resampled_set(ids, y, plan[:1], 0.8 * cv[:1] + 0.1),
        HOLDOUT: prediction_set([f"cleveland:{200 + i}" for i in range(30)], np.tile([0, 1], 15),
                                rng.uniform(0.05, 0.95, 30)),
        SITE_PREFIX + "va": prediction_set(site_ids, site_y, rng.uniform(0.2, 0.9, 40)),
    }  # fmt: skip
    everyone = [*ids, *site_ids]
    facts = RowFacts(
        sex={r: float(i % 2) for i, r in enumerate(everyone)},
        age={r: 40.0 + i % 30 for i, r in enumerate(everyone)},
        missing={r: frozenset({"ca"}) if r.startswith("va") else frozenset() for r in everyone},
    )
    evidence = candidate_evidence(
        sets,
        test_fraction=1 / 3,
        facts=facts,
        maskings={"ca": ("ca",)},
        missing_values={"va": 40, "cleveland": 0},
        band=CalibrationBand(0.7, 1.3, 0.35),
        sites=("cleveland",),
    )
    row = {
        "candidate": "svm",
        "chosen": True,
        "cv_roc_auc": evidence["cv"]["roc_auc"],
        "oof_calibration_slope": evidence["cv"]["out_of_fold"]["calibration"]["slope"],
        "oof_calibration_intercept": evidence["cv"]["out_of_fold"]["calibration"]["intercept"],
        "holdout_roc_auc": evidence["holdout"]["roc_auc"],
        "brier_score": evidence["holdout"]["at_threshold"]["brier_score"],
    }
    site = {"rows": 40, "events": 20, "prevalence": 0.5, "missing": {"ca": 40}, "cleaned": {}}
    return {
        "card_version": 1,
        "model": {"name": "heart<b>svm", "version": 3, "run_id": "r1", "uri": "models:/x/3",
                  "candidate": "svm", "params": {"C": 1.0}},
        "experiment": {"version": 1, "config_hash": "abc", "sites": ["cleveland"],
                       "split": {"test_size": 0.2, "seed": 42},
                       "cv": {"folds": 4, "repeats": 2},
                       "selection": {"primary_metric": "cv_roc_auc_mean"}},
        "data": {"sites": {"cleveland": {**site, "role": "training", "missing": {}},
                           "va": {**site, "role": "not trained on"}},
                 "age_range": [29.0, 77.0], "training_rows": n, "training_events": n // 2,
                 "heldout_rows": 30, "heldout_events": 15},
        "selection": {"chosen": True, "best": "svm", "why": "Chosen by the rule.",
                      "candidates": [row]},
        "evidence": evidence,
        "optional_fields": ["ca"],
        "gate": gate,
        "lineage": {"run_id": "r1", "data_sites": "cleveland", "data_sha256": "0" * 64,
                    "git_commit": "f" * 40, "experiment_version": "1", "config_hash": "abc",
                    "split_seed": "42", "split_test_size": "0.2"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("package", "environment", "expected"),
    [
        ("evidence", card_module.templates, {"model_card.md.j2", "model_card.html.j2"}),
        ("monitoring", report.templates, {"report.html.j2"}),
    ],
)
def test_every_template_ships_with_the_package(
    package: str, environment: Callable[[], jinja2.Environment], expected: set[str]
) -> None:
    """Each template is read from the installed package, and pyproject's package-data puts
    each one in the wheel."""
    globs = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["heartml"]
    folder = resources.files("heartml") / package / "templates"
    shipped = sorted(p.name for p in folder.iterdir() if p.name.endswith(".j2"))
    assert expected <= set(shipped)
    assert sorted(environment().list_templates()) == shipped
    for name in shipped:
        assert any(fnmatch.fnmatch(f"{package}/templates/{name}", g) for g in globs), name


def test_the_card_is_its_json_rendered_with_html_escaped(tmp_path: Path) -> None:
    gate = {
        "verdict": "refused",
        "at": "2026-01-01T00:00:00Z",
        "by": "ci",
        "champion": "heart-disease-knn/2",
        "comparison": None,
        "checks": [{"rule": "min_roc_auc", "passed": False, "detail": SCRIPT}],
    }
    card = synthetic_card(gate)
    plots = {"roc_curve.png": b"roc bytes", "calibration_curve.png": b"calibration bytes"}
    write_card_files(card, tmp_path, plots)
    assert json.loads((tmp_path / CARD_JSON).read_text()) == card
    markdown = (tmp_path / CARD_MD).read_text()
    page = (tmp_path / CARD_HTML).read_text()

    # Markdown is text: the value as it is. The page escapes it, and the title.
    assert f"- Rule min_roc_auc: FAILED — {SCRIPT}" in markdown
    assert "<script" not in page and "&lt;script&gt;alert(" in page
    assert "<title>Model card: heart&lt;b&gt;svm v3</title>" in page
    # Numbers come from the JSON through the filters.
    holdout = card["evidence"]["holdout"]
    assert f"| held-out rows | 30 | {format_interval(holdout['roc_auc'])} | DeLong |" in markdown
    assert f"log loss {format_number(holdout['at_threshold']['log_loss'])}." in markdown
    # The plots the run has, referenced in the Markdown and embedded in the page.
    assert "](plots/roc_curve.png)" in markdown and "confusion_matrix" not in markdown
    assert page.count('src="data:image/png;base64,') == 2
    assert base64.b64encode(b"roc bytes").decode() in page


def test_a_card_missing_a_value_fails_rather_than_render_a_blank() -> None:
    card = synthetic_card()
    del card["lineage"]["git_commit"]
    with pytest.raises(jinja2.UndefinedError, match="git_commit"):
        render_markdown(card)
