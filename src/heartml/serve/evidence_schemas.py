"""The live evidence in ``/model``: the shadowed challenger, its agreement, the drift window."""

from __future__ import annotations

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


class ShadowInfo(BaseModel):
    setting: str = Field(description="HEARTML_SHADOW: auto, off or NAME/VERSION")
    challenger: ChallengerInfo | None
    reason: str = Field(description="Why this challenger (or none)")
    last_error: str | None
    agreement: Agreement | None
    dropped: int = Field(description="Answers not shadowed because the queue was full")
    pending: int


class DriftInfo(BaseModel):
    window: int = Field(description="HEARTML_DRIFT_WINDOW: rows compared with the profile")
    rows: int = Field(description="Rows in the window now")
    psi_from_rows: int = Field(description="PSI is reported once the window holds this many")
    reference_rows: int | None = Field(description="Training rows of the reference profile")
    psi: dict[str, float]


class LiveModelInfo(ModelInfo):
    """The served model, and the live evidence gathered beside it."""

    shadow: ShadowInfo
    drift: DriftInfo
