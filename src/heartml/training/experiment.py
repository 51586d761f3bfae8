"""The experiment: a versioned YAML file of candidates, split, CV and selection rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from heartml.data.download import ALL_SITES, DEFAULT_SITES
from heartml.errors import UserError

# Candidate name -> the scikit-learn estimator class it builds (module path, class name).
CANDIDATE_ESTIMATORS: dict[str, tuple[str, str]] = {
    "logistic_regression": ("sklearn.linear_model", "LogisticRegression"),
    "random_forest": ("sklearn.ensemble", "RandomForestClassifier"),
    "gradient_boosting": ("sklearn.ensemble", "GradientBoostingClassifier"),
    "svm": ("sklearn.svm", "SVC"),
    "knn": ("sklearn.neighbors", "KNeighborsClassifier"),
    "extra_trees": ("sklearn.ensemble", "ExtraTreesClassifier"),
}

# What selection may rank candidates by: the mean ROC-AUC of the repeated cross-validation over
# the training rows, or the ROC-AUC on the held-out rows. Both are ROC-AUCs, so the `roc_auc`
# tag (the score selection used) always means one.
SelectionMetric = Literal["cv_roc_auc_mean", "holdout_roc_auc"]


class ConfigError(UserError):
    """The experiment file is missing, not YAML, or does not fit the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    sites: tuple[str, ...] = DEFAULT_SITES

    @field_validator("sites")
    @classmethod
    def _known_sites(cls, sites: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(sites) - set(ALL_SITES))
        if unknown or not sites:
            raise ValueError(f"sites must be a non-empty subset of {list(ALL_SITES)}")
        return sites


class SplitConfig(_Strict):
    test_size: float = Field(default=0.2, gt=0.0, lt=1.0)
    stratify: bool = True
    seed: int = 42


class CvConfig(_Strict):
    """Repeated stratified k-fold over the training rows: ``repeats`` shuffles of ``folds``."""

    folds: int = Field(default=5, ge=2, le=20)
    repeats: int = Field(default=5, ge=1, le=50)

    @property
    def test_fraction(self) -> float:
        """n_test / n_train of one fold: Nadeau and Bengio's correction term."""
        return 1.0 / (self.folds - 1)


class SelectionConfig(_Strict):
    primary_metric: SelectionMetric = "cv_roc_auc_mean"
    tie_break: SelectionMetric = "holdout_roc_auc"


class ValidationConfig(_Strict):
    """What is measured besides selection.

    ``internal``: the chosen candidate's whole modelling procedure cross-validated (the ``cv``
    folds and repeats) over every row of ``data.sites``, held-out rows included: TRIPOD's
    internal validation of the procedure, reported on the card, never used to choose.
    ``leave_one_site_out``: with several sites, each candidate is also fitted on all sites but
    one and scored on that one, for every site.
    """

    internal: bool = True
    leave_one_site_out: bool = False


class ExperimentConfig(_Strict):
    version: int = Field(ge=1)
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    cv: CvConfig = CvConfig()
    selection: SelectionConfig = SelectionConfig()
    validation: ValidationConfig = ValidationConfig()
    candidates: dict[str, dict[str, Any]] = Field(min_length=1)

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, candidates: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(candidates) - set(CANDIDATE_ESTIMATORS))
        if unknown:
            raise ValueError(
                f"unknown candidate(s) {unknown}; known: {sorted(CANDIDATE_ESTIMATORS)}"
            )
        return {name: dict(params or {}) for name, params in candidates.items()}

    @model_validator(mode="after")
    def _sites_to_leave_out(self) -> ExperimentConfig:
        if self.validation.leave_one_site_out and len(self.data.sites) < 2:
            raise ValueError("validation.leave_one_site_out needs at least two data.sites")
        return self

    @property
    def config_hash(self) -> str:
        """A short digest of the effective configuration: the lineage tag of a run."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    return f"{where}: {error['msg']}"


def load_experiment(path: Path) -> ExperimentConfig:
    """Parse and check the experiment file; every problem becomes a one-line ConfigError."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read experiment file ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from exc
