"""`heartml adapt` on the suite's trained store, the real UCI site files, real CLI processes.

One adaptation run per module (three sites, one process, as `make adapt` runs it) on a private
copy of the trained store; the tests read what it registered.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_settings, one_line_error, run_heartml
from heartml.evidence.recalibration import Method
from heartml.settings import Settings

pytestmark = pytest.mark.slow

SITES = ("hungarian", "switzerland", "va")
METHODS = (Method.NONE, Method.INTERCEPT, Method.LOGISTIC)


@pytest.fixture(scope="module")
def adapted(
    trained_root: Path, tmp_path_factory: pytest.TempPathFactory, mirror: Path
) -> dict[str, Any]:
    """The trained store's champion adapted to the three sites (auto), and VA again with
    ``--method logistic``."""
    root = tmp_path_factory.mktemp("adapted")
    shutil.copy2(trained_root / "mlflow.db", root / "mlflow.db")
    shutil.copytree(trained_root / "data", root / "data")
    shutil.copytree(trained_root / "mlartifacts", root / "mlartifacts")
    settings = make_settings(root, mirror)
    champion = run_heartml(settings, "promote", "--list", "--json")
    auto = run_heartml(settings, "adapt", "champion", *(f"--site={s}" for s in SITES), "--promote")
    promoted = run_heartml(settings, "promote", "--list", "--json")
    logistic = run_heartml(settings, "adapt", "champion", "--site", "va", "--method", "logistic")
    va_gate = run_heartml(settings, "promote", "--auto", "--site", "va")
    after_va = run_heartml(settings, "promote", "--list", "--json")
    return {
        "settings": settings,
        "auto": auto,
        "logistic": logistic,
        "before": json.loads(champion.stdout),
        "promoted": json.loads(promoted.stdout),
        "va_gate": va_gate,
        "after_va": json.loads(after_va.stdout),
    }


def _client(settings: Settings) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


def _adapted_versions(settings: Settings) -> list[Any]:
    client = _client(settings)
    found = client.search_model_versions(f"name LIKE '{settings.model_prefix}%'")
    return sorted((v for v in found if "site" in v.tags), key=lambda v: int(v.version))


def _artifacts(settings: Settings, version: Any, tmp: Path) -> tuple[dict[str, Any], Any]:
    from heartml.evidence.predictions import read_predictions

    client = _client(settings)
    card = json.loads(
        Path(client.download_artifacts(version.run_id, "model_card.json", str(tmp))).read_text()
    )
    sets = read_predictions(
        Path(client.download_artifacts(version.run_id, "predictions.csv", str(tmp))).read_text()
    )
    return card, sets


def test_auto_adapts_hungary_and_va_and_refuses_switzerland(adapted: dict[str, Any]) -> None:
    auto = adapted["auto"]
    assert auto.returncode == 2, auto.stderr
    assert "Traceback" not in auto.stderr
    refusal = [line for line in auto.stderr.splitlines() if "switzerland" in line]
    assert len(refusal) == 1, auto.stderr
    # No slope on 8 patients without disease: the line names the counts and the criterion.
    assert "not adapted" in refusal[0]
    assert "108 with disease and 8 without" in refusal[0]
    assert "10 rows of each outcome" in refusal[0]
    sites = [v.tags["site"] for v in _adapted_versions(adapted["settings"])]
    assert sorted(sites) == ["hungarian", "va", "va"]
    for site in ("hungarian", "va", "switzerland"):
        assert site in auto.stdout


def test_promote_puts_each_adapted_version_through_the_site_gate(
    adapted: dict[str, Any],
) -> None:
    before, after = adapted["before"], adapted["promoted"]
    assert after["champion"] == before["champion"]  # the global champion is untouched
    versions = {v.tags["site"]: v for v in _adapted_versions(adapted["settings"])}
    assert after["site_champions"] == {"hungarian": after["site_champions"]["hungarian"]}, adapted[
        "auto"
    ].stdout[-1500:]
    assert after["site_champions"]["hungarian"]["version"] == int(versions["hungarian"].version)
    lines = adapted["auto"].stdout.splitlines()
    assert any(line.startswith("🏥 hungarian: promoted") for line in lines)
    # auto kept VA's slope (the closed test found no significant evidence against it), and the
    # gate refuses a version whose validated slope lies outside the calibration band.
    [va] = [line for line in lines if line.startswith("⛔ va: refused by the gate")]
    assert "calibration slope 0.59 outside" in va


def test_the_logistic_update_for_va_passes_the_site_gate(adapted: dict[str, Any]) -> None:
    gate = adapted["va_gate"]
    assert gate.returncode == 0, gate.stdout + gate.stderr
    va = adapted["after_va"]["site_champions"]["va"]
    assert va["adapted"] is True
    assert va["adaptation_method"] == "logistic"
    assert adapted["after_va"]["champion"] == adapted["before"]["champion"]


def test_versions_carry_the_lineage_tags(adapted: dict[str, Any]) -> None:
    from heartml.data.download import SITE_FILES

    settings = adapted["settings"]
    client = _client(settings)
    champion = next(m for m in client.search_registered_models() if "champion" in (m.aliases or {}))
    base = f"{champion.name}/{champion.aliases['champion']}"
    for version in _adapted_versions(settings):
        tags = version.tags
        assert version.name == champion.name  # a new version of the same registered model
        assert tags["adapted_from"] == base
        assert tags["adaptation_method"] in {"none", "intercept", "logistic", "refit"}
        assert tags["data_sha256"] == SITE_FILES[tags["site"]].sha256
        assert "best_model" not in tags
        assert {"config_hash", "git_commit", "model_type", "roc_auc"} <= tags.keys()


def test_card_numbers_are_recomputed_from_the_predictions(
    adapted: dict[str, Any], tmp_path: Path
) -> None:
    """Every number of the Site adaptation section, from the version's predictions.csv."""
    from heartml.adaptation.procedure import calibration_intervals, per_repeat_slopes
    from heartml.evidence.recalibration import closed_test
    from heartml.evidence.stats import roc_auc

    settings = adapted["settings"]
    for i, version in enumerate(_adapted_versions(settings)):
        card, sets = _artifacts(settings, version, tmp_path / str(i))
        section = card["site_adaptation"]
        site = version.tags["site"]
        validated, base = sets[f"site:{site}"], sets[f"site_base:{site}"]
        assert list(validated.row_ids) == list(base.row_ids)
        assert all(r.startswith(f"{site}:") for r in validated.row_ids)
        assert section["rows"]["answered"] == len(validated)
        assert section["rows"]["answered"] + section["rows"]["refused"] == section["rows"]["total"]
        per_row = sets[f"site_cv:{site}"].by_row()
        assert np.allclose(per_row.probability, validated.probability, atol=1e-12)
        for key, rows in (("before", base), ("after", validated)):
            expected = calibration_intervals(rows.y, rows.probability)
            for field in ("slope", "intercept", "difference"):
                assert section[key][field] == pytest.approx(expected[field], rel=1e-9)
            assert section[key]["roc_auc"]["estimate"] == pytest.approx(
                roc_auc(rows.y, rows.probability)
            )
        cv = sets[f"site_cv:{site}"]
        slopes = per_repeat_slopes(validated.y, cv.probability.reshape(cv.repeats, -1))
        assert section["per_repeat_slope"]["min"] == pytest.approx(slopes.min())
        if section["requested"] == "auto":
            test = closed_test(base.y, base.probability, None, METHODS)
            assert section["closed_test"]["chosen"] == str(test.chosen) == section["method"]
            ours = [t["statistic"] for t in section["closed_test"]["tests"]]
            assert ours == pytest.approx([t.statistic for t in test.tests])
        # The registered update is monotone: the site's ROC-AUC is unchanged by it.
        assert section["roc_auc_registered"] == pytest.approx(
            section["before"]["roc_auc"]["estimate"], abs=1e-12
        )
        # ... and the version's roc_auc tag is that one, not the pooled validated predictions'.
        assert version.tags["roc_auc"] == f"{section['before']['roc_auc']['estimate']:.4f}"
        refused = sets.get(f"site_refused:{site}")
        assert section["refused"]["rows"] == (0 if refused is None else len(refused))


def test_va_logistic_meets_the_targets(adapted: dict[str, Any], tmp_path: Path) -> None:
    """VA: validated slope in [0.8, 1.25], |mean predicted − observed| ≤ 0.05, AUC unchanged
    by the registered update; the refused rows counted per field."""
    logistic = adapted["logistic"]
    assert logistic.returncode == 0, logistic.stderr
    settings = adapted["settings"]
    version = [v for v in _adapted_versions(settings) if v.tags["adaptation_method"] == "logistic"][
        -1
    ]
    card, _ = _artifacts(settings, version, tmp_path)
    section = card["site_adaptation"]
    assert section["site"] == "va"
    assert 0.8 <= section["after"]["slope"]["estimate"] <= 1.25
    assert abs(section["after"]["difference"]["estimate"]) <= 0.05
    assert section["after"]["slope"]["low"] < section["after"]["slope"]["high"]
    assert section["rows"] == {
        "total": 200,
        "answered": 140,
        "refused": 60,
        "events": 110,
        "non_events": 30,
    }
    assert section["refused"]["by_field"]["trestbps"] == 57
    assert section["precision"] is not None  # 30 without disease: the intervals are wide
    assert section["refused"]["base_on_refused"]["roc_auc"] is not None


def test_card_has_the_section_and_its_plot(adapted: dict[str, Any], tmp_path: Path) -> None:
    settings = adapted["settings"]
    version = _adapted_versions(settings)[0]
    client = _client(settings)
    markdown = Path(
        client.download_artifacts(version.run_id, "model_card.md", str(tmp_path))
    ).read_text()
    html = Path(
        client.download_artifacts(version.run_id, "model_card.html", str(tmp_path))
    ).read_text()
    assert "## Site adaptation" in markdown
    assert "plots/calibration_site_adaptation.png" in markdown
    assert "monotone recalibration" in markdown
    assert "Refused rows" in markdown
    assert "data:image/png;base64," in html


def test_onnx_graph_matches_the_python_update_on_every_site_row(
    adapted: dict[str, Any], tmp_path: Path
) -> None:
    """The served graph, loaded as serving loads it, against mlflow.sklearn's adapted model."""
    import mlflow.artifacts
    import mlflow.sklearn
    import pandas as pd

    from heartml.adaptation.sample import read_site_sample
    from heartml.data.schema import FEATURE_NAMES
    from heartml.evidence.stats import logit
    from heartml.model.explain import load_explainer
    from heartml.model.onnx_form import OnnxEngine, find_onnx_files

    settings = adapted["settings"]
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    for i, version in enumerate(_adapted_versions(settings)):
        model_dir = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{version.name}/{version.version}",
                dst_path=str(tmp_path / str(i)),
            )
        )
        files = find_onnx_files(model_dir)
        assert files is not None
        sample = read_site_sample(settings, version.tags["site"], None)
        model = mlflow.sklearn.load_model(str(model_dir))
        expected = model.predict_proba(pd.DataFrame(sample.features, columns=FEATURE_NAMES))
        served = OnnxEngine(files.graph.read_bytes()).predict_proba(sample.features)
        assert np.max(np.abs(served - expected)) <= 1e-6
        assert (model_dir / "extra_files" / "reference_profile.json").is_file() or any(
            p.name == "reference_profile.json" for p in model_dir.rglob("*.json")
        )
        # The adapted version explains its own answers: base + contributions is its log-odds
        # (the base's explanation through the update; the linear one stays exact).
        explainer = load_explainer(model_dir, OnnxEngine(files.graph.read_bytes()))
        assert explainer is not None
        explained = explainer.explain(sample.features)
        total = explained.base + explained.contributions.sum(axis=1)
        assert np.max(np.abs(total - logit(expected[:, 1]))) <= 1e-6


def test_model_directory_is_what_mlflow_sklearn_writes(
    adapted: dict[str, Any], tmp_path: Path
) -> None:
    """The command's process writes the adapted model's directory without scikit-learn
    (heartml.adaptation.register.StagedSklearnFlavor): it must be the directory
    mlflow.sklearn.save_model writes for the same model and arguments."""
    import mlflow.artifacts
    import mlflow.sklearn
    import yaml
    from mlflow.models import Model

    from heartml.training.tracking import pip_requirements

    settings = adapted["settings"]
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    version = _adapted_versions(settings)[0]
    logged = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}",
            dst_path=str(tmp_path / "logged"),
        )
    )
    ours = Model.load(str(logged / "MLmodel"))
    flavor = ours.flavors["sklearn"]
    saved = tmp_path / "saved"
    mlflow.sklearn.save_model(
        mlflow.sklearn.load_model(str(logged)),
        str(saved),
        serialization_format="skops",
        skops_trusted_types=flavor["skops_trusted_types"],
        signature=ours.signature,
        pyfunc_predict_fn="predict_proba",
        pip_requirements=pip_requirements(),
        extra_files=[str(logged / entry["path"]) for entry in flavor["extra_files"]],
    )
    theirs = Model.load(str(saved / "MLmodel"))
    assert ours.flavors == theirs.flavors
    assert ours.signature == theirs.signature
    # registered_model_meta: written by the download of a registered version, not by saving.
    downloaded = {p.relative_to(logged) for p in logged.rglob("*")}
    assert downloaded - {Path("registered_model_meta")} == {
        p.relative_to(saved) for p in saved.rglob("*")
    }
    for name in ("conda.yaml", "python_env.yaml", "requirements.txt"):
        assert (logged / name).read_text() == (saved / name).read_text(), name
    for name in flavor["extra_files"]:
        assert (logged / name["path"]).read_bytes() == (saved / name["path"]).read_bytes()
    assert yaml.safe_load((logged / "MLmodel").read_text())["model_size_bytes"] > 0


def test_bad_input_is_one_line_and_registers_nothing(
    adapted: dict[str, Any], tmp_path: Path
) -> None:
    settings = adapted["settings"]
    before = len(_adapted_versions(settings))
    lines = (Path(settings.data_dir) / "processed.va.data").read_text().splitlines()
    header = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num"
    bad = tmp_path / "bad.csv"
    row = lines[0].split(",")
    row[2] = "9"  # cp: unknown code
    bad.write_text("\n".join([header, ",".join(row), *lines[1:]]) + "\n")
    result = run_heartml(settings, "adapt", "champion", "--site", "st_marys", "--data", str(bad))
    assert result.returncode == 1
    assert "st_marys row 1, cp: 9 is unknown code" in result.stderr
    assert "Traceback" not in result.stderr

    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text(
        "\n".join([header.rsplit(",", 1)[0], *(ln.rsplit(",", 1)[0] for ln in lines)]) + "\n"
    )
    one_line_error(
        run_heartml(settings, "adapt", "champion", "--site", "va", "--data", str(unlabelled)),
        "no outcome column 'num'",
    )
    one_line_error(
        run_heartml(settings, "adapt", "champion", "--site", "VA-Long-Beach"),
        "invalid site name",
    )
    adapted_ref = "{0.name}/{0.version}".format(_adapted_versions(settings)[0])
    one_line_error(
        run_heartml(settings, "adapt", adapted_ref, "--site", "hungarian"), "is itself adapted"
    )
    one_line_error(
        run_heartml(settings, "adapt", "champion", "--site", "switzerland", "--method", "logistic"),
        "cannot logistic on this sample",
        "needs at least 20 rows of each outcome",
    )
    assert len(_adapted_versions(settings)) == before
    listed = run_heartml(settings, "promote", "--list")
    assert listed.returncode == 0, listed.stderr


def test_refit_on_a_large_synthetic_site(adapted: dict[str, Any], tmp_path: Path) -> None:
    """The UCI sites are too small to refit on; a synthetic site of 3000 rows is not."""
    from heartml.data.schema import COLUMNS, synthetic_rows

    settings = adapted["settings"]
    rows = synthetic_rows(3000, seed=3, missing=0.0)
    rng = np.random.default_rng(3)
    age, oldpeak = rows[:, 0], rows[:, 9]
    risk = 1 / (1 + np.exp(-(0.04 * (age - 55) + 0.6 * oldpeak - 1.0)))
    num = (rng.uniform(size=len(rows)) < risk).astype(int) * 2
    frame = np.column_stack([rows, num])
    path = tmp_path / "big.csv"
    path.write_text(
        ",".join(COLUMNS) + "\n" + "\n".join(",".join(f"{v:g}" for v in r) for r in frame) + "\n"
    )
    result = run_heartml(
        settings,
        "adapt",
        "champion",
        "--site",
        "big_site",
        "--data",
        str(path),
        "--method",
        "refit",
    )
    assert result.returncode == 0, result.stderr
    version = [v for v in _adapted_versions(settings) if v.tags["site"] == "big_site"][-1]
    assert version.tags["adaptation_method"] == "refit"
    card, sets = _artifacts(settings, version, tmp_path / "card")
    section = card["site_adaptation"]
    assert section["sample_checks"][0]["ok"]
    # Refitted on the site, it discriminates there better than the Cleveland model.
    assert section["after"]["roc_auc"]["estimate"] > section["before"]["roc_auc"]["estimate"]
    assert len(sets["site:big_site"]) == 3000
