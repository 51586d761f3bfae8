"""Every number on every model card, recomputed from the run's predictions.csv and the data.

The recomputation is written independently of heartml.evidence.measures: pandas groupings,
scikit-learn's metrics, and heartml.evidence.stats only for the intervals and calibration fits
(checked against their textbook definitions in tests/unit/test_stats.py). The Markdown and HTML
are then checked to be the rendering of the JSON, so no number reaches a reader that was not
recomputed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm

from conftest import invoke_heartml, make_settings
from heartml.data.download import ALL_SITES
from heartml.data.schema import FEATURE_NAMES
from heartml.data.validate import load_dataset
from heartml.evidence.card import CARD_HTML, CARD_JSON, CARD_MD, render_markdown
from heartml.evidence.stats import (
    calibration,
    calibration_curve,
    paired_auc_difference,
    repeated_cv_interval,
    roc_auc_interval,
)
from heartml.registry import configure_mlflow, read_family
from heartml.settings import Settings

pytestmark = pytest.mark.slow

SLOPE_BAND, INTERCEPT_BAND = (0.7, 1.3), 0.35  # the default Settings


@pytest.fixture(scope="module")
def settings(trained_root: Path, mirror: Path) -> Settings:
    settings = make_settings(trained_root, mirror)
    configure_mlflow(settings)
    return settings


@pytest.fixture(scope="module")
def data(settings: Settings) -> pd.DataFrame:
    frame = load_dataset(settings, ALL_SITES).frame.copy()
    frame["row_id"] = frame["site"] + ":" + frame["line"].astype(str)
    frame["y"] = (frame["num"] > 0).astype(int)
    return frame.set_index("row_id")


def artifacts(settings: Settings, tmp: Path) -> dict[str, tuple[pd.DataFrame, dict[str, Any]]]:
    """Each candidate's predictions table and card, as its run logged them."""
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    found = {}
    for version in read_family(settings).versions:
        where = tmp / version.name
        table = client.download_artifacts(version.run_id, "predictions.csv", str(where))
        card = client.download_artifacts(version.run_id, CARD_JSON, str(where))
        predictions = pd.read_csv(table, dtype={"repeat": "Int64", "fold": "Int64"})
        found[version.tags["model_type"]] = (predictions, json.loads(Path(card).read_text()))
    return found


def close(actual: Any, expected: Any, where: str) -> None:
    assert actual == pytest.approx(expected, abs=1e-9, nan_ok=True), where


def check_interval(found: dict[str, float] | None, interval: Any, where: str) -> None:
    assert found is not None, where
    close(found["estimate"], interval.estimate, where + ".estimate")
    close(found["low"], interval.low, where + ".low")
    close(found["high"], interval.high, where + ".high")


def check_population(found: dict[str, Any], y: np.ndarray, p: np.ndarray, where: str) -> None:
    assert found["rows"] == len(y), where
    close(found["prevalence"], y.mean(), where + ".prevalence")
    close(found["mean_predicted"], p.mean(), where + ".mean_predicted")
    if min(y.sum(), len(y) - y.sum()) >= 5:
        close(found["roc_auc"]["estimate"], skm.roc_auc_score(y, p), where + ".auc")
        check_interval(found["roc_auc"], roc_auc_interval(y, p), where + ".auc")
    else:
        assert found["roc_auc"] is None, where
    cal = calibration(y, p)
    close(found["calibration"]["slope"], cal.slope, where + ".slope")
    close(found["calibration"]["intercept"], cal.intercept, where + ".intercept")


def check_curve(bins: list[dict[str, Any]], y: np.ndarray, p: np.ndarray, n: int) -> None:
    expected = calibration_curve(y, p, n)
    assert len(bins) == len(expected)
    for got, want in zip(bins, expected, strict=True):
        assert got["rows"] == want.rows
        for key in ("mean_predicted", "observed", "low", "high"):
            close(got[key], getattr(want, key), f"curve.{key}")


def check_resampled(found: dict[str, Any], rows: pd.DataFrame, test_fraction: float) -> None:
    folds = [
        skm.roc_auc_score(group["y"], group["probability"])
        for _, group in rows.groupby(["repeat", "fold"], sort=True)
    ]
    check_interval(found["roc_auc"], repeated_cv_interval(folds, test_fraction), "cv")
    close(found["fold_roc_auc_sd"], np.std(folds, ddof=1), "cv.sd")
    assert found["repeats"] == rows["repeat"].nunique()
    per_row = rows.groupby("row_id", sort=False).agg(y=("y", "first"), p=("probability", "mean"))
    y, p = per_row["y"].to_numpy(), per_row["p"].to_numpy()
    check_population(found["out_of_fold"], y, p, "out_of_fold")
    check_curve(found["calibration_curve"], y, p, 10)


def test_every_number_on_every_card_is_recomputed(
    settings: Settings, data: pd.DataFrame, tmp_path: Path
) -> None:
    found = artifacts(settings, tmp_path)
    assert set(found) == {"logistic_regression", "random_forest", "gradient_boosting", "svm", "knn"}
    features = data[list(FEATURE_NAMES)]
    for name, (table, card) in found.items():
        sets = dict(iter(table.groupby("set", sort=False)))
        assert card["model"]["candidate"] == name
        evidence = card["evidence"]
        test_fraction = 1 / (card["experiment"]["cv"]["folds"] - 1)
        # Outcomes in the table are the data's.
        assert (table["y"].to_numpy() == data.loc[table["row_id"], "y"].to_numpy()).all()

        check_resampled(evidence["cv"], sets["cv"], test_fraction)
        holdout = sets["holdout"]
        y, p = holdout["y"].to_numpy(), holdout["probability"].to_numpy()
        check_population(evidence["holdout"], y, p, "holdout")
        check_curve(evidence["holdout"]["calibration_curve"], y, p, 5)
        at = evidence["holdout"]["at_threshold"]
        close(at["accuracy"], skm.accuracy_score(y, p >= 0.5), "accuracy")
        close(at["precision"], skm.precision_score(y, p >= 0.5), "precision")
        close(at["recall"], skm.recall_score(y, p >= 0.5), "recall")
        close(at["f1"], skm.f1_score(y, p >= 0.5), "f1")
        close(at["brier_score"], skm.brier_score_loss(y, p), "brier")
        close(at["log_loss"], skm.log_loss(y, p), "log_loss")
        # The held-out rows are the data's held-out share, never trained on.
        assert len(holdout) == card["data"]["heldout_rows"] == 61
        assert not set(holdout["row_id"]) & set(sets["cv"]["row_id"])

        # Every site not trained on, with its missing values counted in the data.
        assert set(evidence["sites"]) == {"hungarian", "switzerland", "va"}
        for site, numbers in evidence["sites"].items():
            rows = sets[f"site:{site}"]
            y, p = rows["y"].to_numpy(), rows["probability"].to_numpy()
            check_population(numbers, y, p, site)
            assert numbers["missing_values"] == int(
                features[data["site"] == site].isna().sum().sum()
            )
            cal = numbers["calibration"]
            outside = (
                not (SLOPE_BAND[0] <= cal["slope"] <= SLOPE_BAND[1])
                or abs(cal["intercept"]) > INTERCEPT_BAND
            )
            assert numbers["recalibrate"] == outside, site

        # Subgroups of the out-of-fold rows, by the data's sex and age.
        cv = sets["cv"]
        per_row = cv.groupby("row_id", sort=False).agg(y=("y", "first"), p=("probability", "mean"))
        sex, age = data.loc[per_row.index, "sex"], data.loc[per_row.index, "age"]
        groups: dict[str, pd.Series] = {
            "female": sex == 0,
            "male": sex == 1,
            "age_under_55": age < 55,
            "age_55_plus": age >= 55,
        }
        for group, chosen in groups.items():
            subset = per_row[chosen.to_numpy()]
            check_population(
                evidence["subgroups"][group], subset["y"].to_numpy(), subset["p"].to_numpy(), group
            )

        # Missing tests: the first repeat's rows with the fields removed, paired with the same
        # repeat complete; and the other sites' rows that lack them.
        first = cv[cv["repeat"] == 0].set_index("row_id")
        outside_rows = table[table["set"].str.startswith("site:")].set_index("row_id")
        for masking, numbers in evidence["missing_tests"].items():
            masked = sets[f"cv_masked:{masking}"].set_index("row_id")
            complete = first.loc[masked.index, "probability"].to_numpy()
            paired = paired_auc_difference(masked["y"], masked["probability"], complete)
            check_interval(numbers["delta_roc_auc"], paired.difference, masking)
            check_interval(
                numbers["roc_auc"], roc_auc_interval(masked["y"], masked["probability"]), masking
            )
            close(numbers["complete_roc_auc"], skm.roc_auc_score(masked["y"], complete), masking)
            lacking = features.loc[outside_rows.index, numbers["fields"]].isna().all(axis=1)
            assert numbers["other_sites"]["rows"] == int(lacking.sum()), masking

        # The data section, from the data files.
        for site, numbers in card["data"]["sites"].items():
            rows = data[data["site"] == site]
            assert numbers["rows"] == len(rows)
            assert numbers["events"] == int(rows["y"].sum())
            close(numbers["prevalence"], rows["y"].mean(), site)
            missing = {c: int(n) for c, n in rows[list(FEATURE_NAMES)].isna().sum().items() if n}
            assert numbers["missing"] == missing, site

        # The session's comparison is each candidate's own numbers.
        for row in card["selection"]["candidates"]:
            other = found[row["candidate"]][1]["evidence"]
            assert row["cv_roc_auc"] == other["cv"]["roc_auc"]
            assert row["holdout_roc_auc"] == other["holdout"]["roc_auc"]

        if card["selection"]["chosen"]:
            internal = sets["internal"]
            assert internal["row_id"].nunique() == 303  # every Cleveland row
            check_resampled(evidence["internal_validation"], internal, test_fraction)
        else:
            assert "internal_validation" not in evidence


def test_the_markdown_and_html_are_the_rendering_of_the_json(
    settings: Settings, tmp_path: Path
) -> None:
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    for version in read_family(settings).versions:
        where = tmp_path / version.name
        paths = {
            name: Path(client.download_artifacts(version.run_id, name, str(where)))
            for name in (CARD_JSON, CARD_MD, CARD_HTML)
        }
        plots = {
            p.name
            for p in Path(client.download_artifacts(version.run_id, "plots", str(where))).iterdir()
        }
        card = json.loads(paths[CARD_JSON].read_text())
        markdown = paths[CARD_MD].read_text()
        assert markdown == render_markdown(card, available=plots)
        html = paths[CARD_HTML].read_text()
        # Self-contained: every plot embedded, nothing fetched from elsewhere.
        assert html.count('src="data:image/png;base64,') == len(plots)
        assert 'src="plots/' not in html and "http" not in html.split("<body>")[1]
        for section in ("Intended use", "Data", "Candidates compared", "Calibration",
                        "Every site", "Subgroups", "Patients with missing tests",
                        "Promotion gate", "Lineage", "TRIPOD+AI"):  # fmt: skip
            assert f"## {section}" in markdown, section
            assert section in html, section


def test_report_writes_the_champion_s_card_with_the_gate_s_evidence(
    settings: Settings, tmp_path: Path
) -> None:
    champion = read_family(settings).champion
    assert champion is not None
    result = invoke_heartml(
        settings, "report", champion.name, str(champion.version), "--out", str(tmp_path / "card")
    )
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "card" / CARD_JSON).read_text())
    # Training promoted it through the gate: the card was rendered again with the verdict.
    assert card["gate"]["verdict"] == "passed"
    assert card["gate"]["challenger"] == champion.ref
    markdown = (tmp_path / "card" / CARD_MD).read_text()
    assert "- Verdict: **passed**" in markdown
    assert (tmp_path / "card" / CARD_HTML).is_file()
