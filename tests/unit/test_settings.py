"""Settings come from the environment under the names the ConfigMap uses."""

import pytest

from heartml.settings import UCI_BASE_URL, Settings


def test_defaults_are_the_embedded_store_and_the_uci_site(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEARTML_DATA_SOURCE", raising=False)
    settings = Settings()
    assert settings.mlflow_tracking_uri == "sqlite:///mlflow.db"
    assert settings.is_local_store
    assert settings.data_source == UCI_BASE_URL
    assert settings.model_prefix == "heart-disease-"
    assert settings.champion_alias == "champion"
    assert settings.min_roc_auc == 0.80
    assert settings.promotion_margin == 0.05
    assert (settings.calibration_slope_min, settings.calibration_slope_max) == (0.7, 1.3)
    assert settings.calibration_intercept_max == 0.35
    assert settings.gate_min_rows == 30
    assert settings.port == 8000


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    monkeypatch.setenv("HEARTML_MIN_ROC_AUC", "0.9")
    monkeypatch.setenv("HEARTML_PROMOTION_MARGIN", "0.02")
    monkeypatch.setenv("HEARTML_DATA_SOURCE", "/mirror")
    settings = Settings()
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5001"
    assert not settings.is_local_store
    assert settings.min_roc_auc == 0.9
    assert settings.promotion_margin == 0.02
    assert settings.data_source == "/mirror"


def test_admin_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTML_ADMIN_TOKEN", "s3cret")
    settings = Settings()
    assert settings.admin_token is not None
    assert "s3cret" not in repr(settings)
