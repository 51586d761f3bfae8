"""Runtime settings: one typed class, read from the environment (and a `.env` file).

Field names match the environment variables the Kubernetes ConfigMap sets: every field is
``HEARTML_<FIELD>`` except the tracking URI, which keeps MLflow's own ``MLFLOW_TRACKING_URI``.
An empty value of an optional setting means unset: a ConfigMap or compose file cannot leave a
key out as easily as it can leave it blank, and ``Path("")`` would otherwise be the working
directory (a prediction log beside the process).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

UCI_BASE_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/heart-disease"

AUTO = "auto"
OFF = "off"


def parse_shadow_setting(value: str) -> tuple[str, int] | str:
    """``auto``, ``off``, or ``(name, version)`` for ``NAME/VERSION``; ValueError otherwise."""
    text = value.strip()
    if text.lower() in (AUTO, OFF):
        return text.lower()
    name, sep, version = text.rpartition("/")
    if not sep or not name or not version.isdigit() or int(version) < 1:
        raise ValueError(f"HEARTML_SHADOW must be auto, off or NAME/VERSION, not {value!r}")
    return name, int(version)


def admits_none(annotation: Any) -> bool:
    """True for an optional field's annotation (``X | None``)."""
    return annotation is None or type(None) in get_args(annotation)


class Settings(BaseSettings):
    """Everything that changes between a laptop, CI and a cluster."""

    model_config = SettingsConfigDict(
        env_prefix="HEARTML_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # --- tracking and registry -------------------------------------------------------------
    mlflow_tracking_uri: str = Field(
        default="sqlite:///mlflow.db",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "HEARTML_MLFLOW_TRACKING_URI"),
        description="MLflow tracking and registry store; the embedded default is SQLite in the "
        "working directory.",
    )
    artifact_dir: Path = Field(
        default=Path("mlartifacts"),
        description="Where run artifacts go when the store is a local SQLite file.",
    )
    experiment_name: str = "heart-disease-classification"
    model_prefix: str = Field(
        default="heart-disease-",
        description="Registered models are named <prefix><algorithm>; the family is every model "
        "whose name starts with it.",
    )
    champion_alias: str = "champion"
    registry_access_config: Path = Field(
        default=Path("configs/registry-access.yaml"),
        description="Who uses an authenticated registry (pipeline, serving, promoters, people): "
        "read by `heartml registry bootstrap`, and by training to let the promoters promote "
        "the models it creates.",
    )
    registry_secrets_dir: Path = Field(
        default=Path(".run/registry"),
        description="Where `heartml registry bootstrap` keeps the accounts' passwords (mode 600).",
    )

    # --- data ----------------------------------------------------------------------------------
    data_source: str = Field(
        default=UCI_BASE_URL,
        description="Base URL or local directory the UCI files are fetched from (a mirror).",
    )
    data_dir: Path = Field(default=Path("data/raw"), description="Verified download cache.")
    download_timeout_s: float = 30.0

    # --- training ------------------------------------------------------------------------------
    experiment_config: Path = Field(
        default=Path("configs/experiment.yaml"), description="The versioned experiment YAML."
    )

    # --- promotion gate (the README's "The promotion gate" justifies each default) ------------
    min_roc_auc: float = Field(
        default=0.80, ge=0.0, le=1.0, description="The challenger's roc_auc tag must reach it."
    )
    promotion_margin: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Non-inferiority margin: the lower end of the 95 % interval of the "
        "challenger's ROC-AUC minus the champion's, on the same rows, must be at least -margin.",
    )
    calibration_slope_min: float = Field(default=0.7, gt=0.0)
    calibration_slope_max: float = Field(default=1.3, gt=0.0)
    calibration_intercept_max: float = Field(
        default=0.35, ge=0.0, description="Largest |calibration intercept| (logit scale)."
    )
    gate_min_rows: int = Field(
        default=30,
        ge=2,
        description="Fewest rows of both models' held-out sets (with both outcomes) for a paired "
        "comparison; fewer, and the two are compared each on its own held-out rows.",
    )
    registry_retries: int = Field(default=3, ge=0, description="Retries of transient errors.")

    # --- serving -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    model_dir: Path | None = Field(
        default=None, description="Serve an exported model from here instead of the registry."
    )
    reload_interval_s: float = Field(default=30.0, ge=0.0)
    site: str | None = Field(
        default=None,
        description="The site this deployment serves when a request names none (query "
        "parameter `site` or header X-Heartml-Site): its champion (alias champion-SITE) "
        "answers, else the global champion. Unset (or empty): requests without a site are "
        "answered by the global champion.",
    )
    admin_token: SecretStr | None = None
    max_batch_size: int = Field(default=1000, ge=1)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    cors_origins: list[str] = Field(default_factory=list)
    log_level: str = "info"
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0.0,
        le=60.0,
        description="After SIGTERM, keep serving this long before stopping, so that requests "
        "still routed to a terminating pod are answered (Kubernetes: a few seconds; this plus "
        "the 10 s graceful close must stay below terminationGracePeriodSeconds).",
    )

    # --- live evidence (shadow challenger, prediction log, drift) ----------------------------
    shadow: str = Field(
        default="auto",
        description="Challenger scored in the shadow of every answer: auto (the best-tagged "
        "version when it is not the champion), off, or NAME/VERSION.",
    )
    prediction_log_dir: Path | None = Field(
        default=None,
        description="Append every answered row to JSON-lines files here (0600); unset: no log.",
    )
    prediction_log_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=4096, description="A log file is rotated past this size."
    )
    drift_window: int = Field(
        default=500,
        ge=10,
        le=100_000,
        description="Recent requests' rows compared with the training profile (PSI, missing).",
    )
    background_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Answers the server keeps for the shadow process while it is busy (and "
        "its pipe's size: ~200 bytes each, up to the system's pipe-max-size); beyond, dropped "
        "and counted.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """A blank value of an optional setting, from any source, is None."""
        if (
            isinstance(value, str)
            and not value.strip()
            and info.field_name is not None
            and admits_none(cls.model_fields[info.field_name].annotation)
        ):
            return None
        return value

    @field_validator("shadow")
    @classmethod
    def _check_shadow(cls, value: str) -> str:
        parsed = parse_shadow_setting(value)
        return parsed if isinstance(parsed, str) else f"{parsed[0]}/{parsed[1]}"

    @property
    def is_local_store(self) -> bool:
        """True for the embedded SQLite store, where artifacts live next to the database."""
        return self.mlflow_tracking_uri.startswith("sqlite:")


def env_name(field: str) -> str:
    """The environment variable that sets ``field``: its alias, else ``HEARTML_<FIELD>``."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    if isinstance(alias, str):
        return alias
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _shown(field: str, value: object) -> str:
    """The value as the error line shows it: quoted, cut short, never a secret."""
    annotation = Settings.model_fields[field].annotation
    if SecretStr in (annotation, *get_args(annotation)):
        return "'***'"
    text = repr(value if isinstance(value, str) else str(value))
    return text if len(text) <= 60 else f"{text[:56]}...'"


def _field_of(name: object) -> str | None:
    """The field a validation error's location starts with (a field name or an alias)."""
    if not isinstance(name, str):
        return None
    if name in Settings.model_fields:
        return name
    return next((f for f in Settings.model_fields if env_name(f) == name), None)


def describe_invalid(
    exc: ValidationError | SettingsError, name_of: Callable[[str], str] = env_name
) -> str:
    """One line naming each invalid setting, its value and what is wrong with it.

    ``name_of`` names a field as the user set it: its environment variable unless a command
    says it came from an option.
    """
    if isinstance(exc, SettingsError):
        # pydantic-settings decodes a list setting's JSON before validation, and says only which.
        found = re.search(r'field "(\w+)"', str(exc))
        field = found.group(1) if found else None
        cause = f": {' '.join(str(exc.__cause__).split())}" if exc.__cause__ else ""
        if field is None or field not in Settings.model_fields:
            return f"invalid settings: {' '.join(str(exc).split())}{cause}"
        return f"invalid setting {name_of(field)}: not valid JSON{cause}"
    parts = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        field = _field_of(loc[0]) if loc else None
        if field is None:
            parts.append(f"{'.'.join(map(str, loc))}: {error['msg']}")
            continue
        index = "".join(f"[{part}]" for part in loc[1:])
        reason = error.get("ctx", {}).get("error") if error["type"] == "value_error" else None
        message = str(reason) if reason is not None else error["msg"]
        parts.append(f"{name_of(field)}{index}={_shown(field, error['input'])}: {message}")
    return f"invalid setting{'s' if len(parts) > 1 else ''} {'; '.join(parts)}"
