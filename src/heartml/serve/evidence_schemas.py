"""The live evidence in ``/model``: the shadowed challenger, its agreement, the drift window."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from heartml.serve.schemas import ModelInfo, VersionSummary


class ChallengerInfo(VersionSummary):
    uri: str
    engine: str
    loaded_at: str


class Agreement(BaseModel):
    """How often the challenger agreed with this champion since the pair was formed."""

    champion: str
    challenger: str
    since: str
    rows: int
    disagreements: int = Field(description="Rows where the predicted classes differ")
    agreement: float | None = Field(description="1 - disagreements / rows")
    mean_abs_diff: float | None = Field(description="Mean |P(champion) - P(challenger)|")


class ShadowProcess(BaseModel):
    """The process that scores the challenger and writes the prediction log."""

    pid: int | None = Field(description="Its process id (None: not started)")
    restarts: int = Field(description="Times it died and was started again")


class ShadowInfo(BaseModel):
    setting: str = Field(description="HEARTML_SHADOW: auto, off or NAME/VERSION")
    challenger: ChallengerInfo | None
    reason: str = Field(description="Why this challenger (or none)")
    last_error: str | None
    agreement: Agreement | None
    dropped: int = Field(
        description="Answers not shadowed because the shadow process was behind or had died"
    )
    pending: int = Field(description="Answers given to the shadow process, not yet scored")
    process: ShadowProcess


class DriftInfo(BaseModel):
    window: int = Field(description="HEARTML_DRIFT_WINDOW: rows compared with the profile")
    rows: int = Field(description="Rows in the window now")
    psi_from_rows: int = Field(description="PSI is reported once the window holds this many")
    reference_rows: int | None = Field(description="Training rows of the reference profile")
    psi: dict[str, float]


class SiteModelInfo(VersionSummary):
    """A site's champion being served (``promoted_at``: when it became the site's champion)."""

    adapted: bool = Field(description="It was adapted for this site (`heartml adapt`)")
    adapted_for: str | None = Field(description="The site it was adapted for, if any")
    loaded_at: str
    engine: Literal["onnx", "sklearn"]
    drift: DriftInfo | None = Field(
        description="The site's requests compared with this champion's reference profile "
        "(the site's rows, for an adapted version)"
    )


class LiveModelInfo(ModelInfo):
    """The served model, and the live evidence gathered beside it."""

    shadow: ShadowInfo
    drift: DriftInfo
    default_site: str | None = Field(
        default=None, description="HEARTML_SITE: the site of requests that name none"
    )
    site_check: str | None = Field(
        default=None, description="Outcome of the last look at the site champions"
    )
    sites: dict[str, SiteModelInfo] = Field(
        default_factory=dict,
        description="Each site's champion (alias champion-SITE), by site; a site not listed "
        "is answered by the model above",
    )
