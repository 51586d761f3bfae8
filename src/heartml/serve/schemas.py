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

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from heartml.data.patient import PatientFeatures
from heartml.data.schema import NEGATIVE_LABEL, OPTIONAL_FEATURES, POSITIVE_LABEL


class BatchRequest(BaseModel):
    """Several patients at once; the limit is the server's ``max_batch_size``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instances: list[PatientFeatures] = Field(
        ..., min_length=1, description="The patients, at least one."
    )


class Explanation(BaseModel):
    """Why the model gave this risk (``explain=true``): each field's share of the log-odds.

    ``base + sum(contributions) == log_odds`` (to 1e-9 for the linear model, 1e-6 otherwise);
    the probability is ``1 / (1 + exp(-log_odds))``. A positive contribution raised this
    patient's risk above the reference, a negative one lowered it.
    """

    method: str = Field(
        description="How the contributions were computed: 'exact linear' (a logistic "
        "regression: β·(z − z̄) on the logit, against the mean training row) or 'Shapley "
        "estimate, N permutations, B background rows' (every other model: interventional "
        "Shapley values on the log-odds, against B training rows stored with the model)"
    )
    base: float = Field(
        description="The log-odds of the reference: the linear model's at the mean training "
        "row, or the mean log-odds over the background rows"
    )
    log_odds: float = Field(description="The model's log-odds for this patient")
    contributions: dict[str, float] = Field(
        description="Every UCI field's contribution to the log-odds (one-hot columns summed "
        "back to their field)"
    )
    imputed: list[str] = Field(
        description="Fields the patient lacked: their contribution is that of the value the "
        "model imputed"
    )
    top: list[str] = Field(
        description="The three largest contributions by size, in words: "
        "'thal = 7, reversible defect: +0.92'"
    )


# Both kinds of answer say which site the request named and whether a site's model answered.
RequestedSite = Annotated[
    str | None,
    Field(
        description="The site the request named (query `site`, header X-Heartml-Site, or the "
        "deployment's HEARTML_SITE); null when none"
    ),
]
SiteAdapted = Annotated[
    bool,
    Field(
        description="True when the model that answered is the site's champion and was adapted "
        "for it; false when the global champion answered (no site named, or no champion for "
        "it)"
    ),
]


class RiskPrediction(BaseModel):
    """The model's answer for one patient."""

    prediction: Literal[0, 1] = Field(description="1: heart disease predicted")
    probability: float = Field(ge=0.0, le=1.0, description="Probability of heart disease")
    label: Literal["heart disease", "no heart disease"]
    imputed: list[str] = Field(
        description="The optional fields that were null or absent and were imputed as in "
        "training (empty when the patient's record was complete)"
    )
    model_name: str = Field(description="The registered model that answered")
    model_version: int
    site: RequestedSite = None
    site_adapted: SiteAdapted = False
    explanation: Explanation | None = Field(
        default=None, description="Only with explain=true: why the model gave this risk"
    )


class BatchPrediction(BaseModel):
    """One prediction per instance, in the order of the request."""

    predictions: list[RiskPrediction]
    count: int
    model_name: str = Field(description="The registered model that answered")
    model_version: int
    site: RequestedSite = None
    site_adapted: SiteAdapted = False


class VersionSummary(BaseModel):
    """A registered version as the API shows it (``heartml.registry.VersionSummary``'s fields)."""

    name: str
    version: int
    run_id: str
    roc_auc: float | None
    model_type: str | None
    promoted_at: str | None


class ModelInfo(VersionSummary):
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


class FeatureDescription(BaseModel):
    """One feature of a patient record, as ``GET /schema`` describes it."""

    name: str
    description: str
    kind: str
    type: Literal["integer", "number"]
    # int before float: a bound written 0 stays 0 in the answer, not 0.0.
    minimum: int | float
    maximum: int | float
    codes: list[int] | None
    labels: dict[str, str] | None = Field(
        default=None, description="What each code means (code -> words)"
    )
    unit: str | None
    optional: bool


class TargetDescription(BaseModel):
    """What the model predicts."""

    name: str
    description: str
    positive_when: str
    labels: dict[str, str]


class SchemaInfo(BaseModel):
    """``GET /schema``: the features, the target, the request limits and the request's JSON
    Schema (from :mod:`heartml.data.schema`, the one schema module)."""

    features: list[FeatureDescription]
    optional: list[str]
    imputation: str
    target: TargetDescription
    max_batch_size: int
    max_body_bytes: int
    request_schema: dict[str, Any]
    explanation: dict[str, str] = Field(
        description="What explain=true on /predict and /predict/batch adds to each answer"
    )


LABELS: tuple[str, str] = (NEGATIVE_LABEL, POSITIVE_LABEL)

# ``GET /schema``'s account of explanations: the Explanation model's fields, and how to ask.
EXPLANATION_FIELDS: dict[str, str] = {
    "request": "explain=true in the query of POST /predict or /predict/batch (default false: "
    "the answer is unchanged and costs nothing more); a served version registered without "
    "explainer files answers 409",
    **{name: field.description or "" for name, field in Explanation.model_fields.items()},
}


def imputed_fields(patient: BaseModel) -> list[str]:
    """The optional fields a patient's record lacks, in schema order."""
    values = patient.__dict__
    return [name for name in OPTIONAL_FEATURES if values[name] is None]
