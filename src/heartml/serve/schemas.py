"""The API's request and response models; the patient's is built from :mod:`heartml.data.schema`.

``PatientFeatures`` comes from :mod:`heartml.data.patient`, shared with the cohort scorer, so
the API accepts exactly the coding the models were trained on. A value is rejected, with one
error entry per bad field, when it is missing, extra, not a JSON number (strings and booleans
are not coerced), fractional where the schema wants an integer, outside the schema's range, or
not one of a coded column's codes (``cp`` 0, ``thal`` 2). The schema's optional fields (the
tests a clinician may not have: :data:`heartml.data.schema.OPTIONAL_FEATURES`) may also be null
or left out: the model imputes them as training did, and the answer lists them in ``imputed``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from heartml.data.patient import PatientFeatures
from heartml.data.schema import NEGATIVE_LABEL, OPTIONAL_FEATURES, POSITIVE_LABEL


class BatchRequest(BaseModel):
    """Several patients at once; the limit is the server's ``max_batch_size``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instances: list[PatientFeatures] = Field(
        ..., min_length=1, description="The patients, at least one."
    )


class RiskPrediction(BaseModel):
    """The model's answer for one patient."""

    prediction: Literal[0, 1] = Field(description="1: heart disease predicted")
    probability: float = Field(ge=0.0, le=1.0, description="Probability of heart disease")
    label: Literal["heart disease", "no heart disease"]
    imputed: list[str] = Field(
        description="The optional fields that were null or absent and were imputed as in "
        "training (empty when the patient's record was complete)"
    )
    model_name: str
    model_version: int


class BatchPrediction(BaseModel):
    """One prediction per instance, in the order of the request."""

    predictions: list[RiskPrediction]
    count: int
    model_name: str
    model_version: int


class VersionCard(BaseModel):
    """A registered version as the API shows it (``heartml.registry.ModelCard``'s fields)."""

    name: str
    version: int
    run_id: str
    roc_auc: float | None
    model_type: str | None
    promoted_at: str | None


class ModelInfo(VersionCard):
    """What is served, where it came from, and how following the registry is going."""

    loaded_at: str
    source: Literal["registry", "directory"]
    uri: str
    engine: Literal["onnx", "sklearn"] = Field(
        description="What computes the predictions: onnx (ONNX Runtime, the model's checked ONNX "
        "form) or sklearn (its scikit-learn pipeline)"
    )
    reload_interval_s: float
    last_check_at: str | None
    last_check: str | None = Field(description="Outcome of the last look at the registry")
    last_error: str | None = Field(description="The last failed check or load, if any")
    registry_refusal: str | None = Field(
        default=None,
        description="Set while the registry refuses the serving account (HTTP 401: wrong or "
        "missing password, 403: no permission): the model above keeps serving, promotions are "
        "not followed",
    )
    reloads: int = Field(description="Successful loads since start")
    failed_reloads: int


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    model: str | None = None
    reason: str | None = None
    warning: str | None = Field(
        default=None,
        description="Ready, but the registry refuses the serving account: promotions are not "
        "followed until its credentials are fixed",
    )


class ReloadResult(BaseModel):
    """The outcome of ``POST /admin/reload``."""

    result: Literal["reloaded", "unchanged", "failed"]
    message: str
    model: ModelInfo | None


class ErrorEntry(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """422: one entry per bad field."""

    detail: list[ErrorEntry]


class Problem(BaseModel):
    """Any other error: a one-line reason."""

    detail: str


LABELS: tuple[str, str] = (NEGATIVE_LABEL, POSITIVE_LABEL)


def imputed_fields(patient: BaseModel) -> list[str]:
    """The optional fields a patient's record lacks, in schema order."""
    values = patient.__dict__
    return [name for name in OPTIONAL_FEATURES if values[name] is None]
