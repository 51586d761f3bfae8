"""Settings come from the environment under the names the ConfigMap uses."""

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from heartml.settings import UCI_BASE_URL, Settings, admits_none, describe_invalid, env_name


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


OPTIONAL = [name for name, field in Settings.model_fields.items() if admits_none(field.annotation)]


def test_the_optional_settings_are_found() -> None:
    # The tests below iterate over OPTIONAL: a wrong admits_none would make them test nothing.
    assert {"model_dir", "prediction_log_dir", "admin_token"} <= set(OPTIONAL)
    assert not admits_none(Settings.model_fields["data_dir"].annotation)


@pytest.mark.parametrize("blank", ["", "  "])
@pytest.mark.parametrize("name", OPTIONAL)
def test_an_empty_optional_setting_is_unset(
    name: str, blank: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env_name(name), "value")
    assert getattr(Settings(), name) is not None
    monkeypatch.setenv(env_name(name), blank)
    assert getattr(Settings(), name) is None
    # A command-line option passes its value in, as `heartml serve --model-dir` does.
    monkeypatch.delenv(env_name(name))
    assert getattr(Settings(**{name: blank}), name) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("name", OPTIONAL)
def test_an_empty_optional_setting_in_the_env_file_is_unset(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"{env_name(name)}=\n")
    assert getattr(Settings(), name) is None


def test_an_empty_required_setting_is_still_read() -> None:
    assert Settings(data_source="").data_source == ""


def test_every_setting_is_named_by_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert env_name("mlflow_tracking_uri") == "MLFLOW_TRACKING_URI"
    assert env_name("prediction_log_dir") == "HEARTML_PREDICTION_LOG_DIR"
    for name in Settings.model_fields:
        # An invalid value under that name makes Settings() fail (or, for text, changes it):
        # the name is one that Settings reads.
        monkeypatch.setenv(env_name(name), "[[not a value")
        try:
            value = getattr(Settings(), name)
        except (ValidationError, SettingsError) as exc:
            assert env_name(name) in describe_invalid(exc)
        else:
            assert "[[not a value" in str(
                value.get_secret_value() if name == "admin_token" else value
            )
        monkeypatch.delenv(env_name(name))


def test_the_error_names_each_invalid_setting_with_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEARTML_PORT", "abc")
    monkeypatch.setenv("HEARTML_WORKERS", "0")
    with pytest.raises(ValidationError) as caught:
        Settings()
    line = describe_invalid(caught.value)
    assert line == (
        "invalid settings HEARTML_PORT='abc': Input should be a valid integer, unable to parse "
        "string as an integer; HEARTML_WORKERS='0': Input should be greater than or equal to 1"
    )
    monkeypatch.delenv("HEARTML_PORT")
    monkeypatch.delenv("HEARTML_WORKERS")
    with pytest.raises(ValidationError) as caught:
        Settings(cors_origins=["ok", 3])
    assert describe_invalid(caught.value, lambda field: f"--{field}") == (
        "invalid setting --cors_origins[1]='3': Input should be a valid string"
    )
