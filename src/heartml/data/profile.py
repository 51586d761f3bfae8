"""Reference profile of the training rows, and the drift measure the server compares it with.

Training stores one profile with every model (``reference_profile.json``, in the MLflow model
directory beside the ONNX files, so the registry, an export and the serving image all carry
it; also logged on the candidate's run). Per feature, in schema order:

* numeric features (age, trestbps, chol, thalach, oldpeak): the inner edges of ten quantile
  bins of the training values and the share of training values in each bin;
* coded features (sex, cp, fbs, restecg, exang, slope, ca, thal): the share of each code;
* the share of missing values, and the value the model imputes for a missing one (median for
  numeric features, most frequent code for coded ones, as :mod:`heartml.training.features` does).

:func:`population_stability` is the population stability index of recent values against
those shares: ``sum((a - e) * ln(a / e))`` over the bins, both sides smoothed by half a count
per bin so that an empty bin gives a finite, sample-size-aware value. Missing values are not in
the PSI (they would dominate it when a site lacks a test): their share is reported on its own.

Numpy only: the serving image has no pandas or SciPy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from heartml.data.schema import FEATURES, Feature, Kind

PROFILE_FILE = "reference_profile.json"
PROFILE_FORMAT = 1
QUANTILE_BINS = 10
# Half a count per bin, on both sides: the smoothing of Laplace's rule of succession, halved.
SMOOTHING = 0.5


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    """One feature of the training rows: how its values spread, how often it was missing."""

    name: str
    kind: str  # "numeric": quantile bins; "coded": one bin per code
    edges: tuple[float, ...]  # numeric: inner bin edges (len(bins) - 1); coded: the codes
    frequencies: tuple[float, ...]  # share of the non-missing training values per bin
    missing_rate: float
    impute_value: float

    @property
    def bins(self) -> int:
        return len(self.frequencies)

    def bin_counts(self, values: NDArray[np.float64]) -> NDArray[np.int64]:
        """How many of ``values`` (missing ones skipped) fall in each bin."""
        present = values[~np.isnan(values)]
        edges = np.asarray(self.edges, dtype=np.float64)
        if self.kind == "numeric":
            # Bin i holds edges[i-1] < x <= edges[i]: the same rule as at training.
            index = np.searchsorted(edges, present, side="left")
        else:
            index = np.searchsorted(edges, present)
            known = (index < len(edges)) & (edges[np.minimum(index, len(edges) - 1)] == present)
            index = index[known]  # a code the schema does not know cannot reach the server
        return np.bincount(index, minlength=self.bins).astype(np.int64)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "edges": list(self.edges),
            "frequencies": list(self.frequencies),
            "missing_rate": self.missing_rate,
            "impute_value": self.impute_value,
        }


@dataclass(frozen=True, slots=True)
class ReferenceProfile:
    """Every feature's profile, in schema order, and how many training rows made it."""

    features: tuple[FeatureProfile, ...]
    rows: int
    # Built once: the server hands it over with every answered request.
    impute_values: NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = np.array([f.impute_value for f in self.features], dtype=np.float64)
        values.flags.writeable = False
        object.__setattr__(self, "impute_values", values)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "rows": self.rows,
            "features": [f.as_dict() for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: Any) -> ReferenceProfile:
        """Read a stored profile; ValueError when it is not one of this schema."""
        try:
            if data["format"] != PROFILE_FORMAT:
                raise ValueError(f"profile format {data['format']!r}, expected {PROFILE_FORMAT}")
            features = tuple(
                FeatureProfile(
                    name=str(f["name"]),
                    kind=str(f["kind"]),
                    edges=tuple(float(e) for e in f["edges"]),
                    frequencies=tuple(float(p) for p in f["frequencies"]),
                    missing_rate=float(f["missing_rate"]),
                    impute_value=float(f["impute_value"]),
                )
                for f in data["features"]
            )
            profile = cls(features=features, rows=int(data["rows"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a reference profile: {exc!r}") from exc
        if profile.names != tuple(f.name for f in FEATURES):
            raise ValueError("the profile's features are not this schema's")
        return profile

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _profile_feature(feature: Feature, values: NDArray[np.float64], bins: int) -> FeatureProfile:
    present = values[~np.isnan(values)]
    missing_rate = 1.0 - len(present) / len(values) if len(values) else 0.0
    if len(present) == 0:
        raise ValueError(f"{feature.name}: every training value is missing")
    if feature.is_coded:
        codes = np.asarray(feature.codes, dtype=np.float64)
        counts = np.array([(present == c).sum() for c in codes], dtype=np.float64)
        # The value the pipeline's imputer puts in: the median for a numeric column with codes
        # (`ca`, imputed with the numeric columns), else the most frequent code, ties to the
        # smallest as scikit-learn's.
        imputed = (
            float(np.median(present))
            if feature.kind is Kind.NUMERIC
            else float(codes[int(np.argmax(counts))])
        )
        return FeatureProfile(
            feature.name,
            "coded",
            tuple(codes.tolist()),
            tuple((counts / counts.sum()).tolist()),
            missing_rate,
            imputed,
        )
    quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    edges: NDArray[np.float64] = np.unique(quantiles)  # oldpeak's many zeros merge bins
    binned = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    return FeatureProfile(
        feature.name,
        "numeric",
        tuple(edges.tolist()),
        tuple((binned / binned.sum()).tolist()),
        missing_rate,
        float(np.median(present)),
    )


def build_profile(rows: NDArray[np.float64], bins: int = QUANTILE_BINS) -> ReferenceProfile:
    """The profile of training ``rows`` (the 13 features in schema order, NaN = missing)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(FEATURES):
        raise ValueError(f"expected rows of {len(FEATURES)} features, got shape {rows.shape}")
    return ReferenceProfile(
        features=tuple(_profile_feature(f, rows[:, i], bins) for i, f in enumerate(FEATURES)),
        rows=len(rows),
    )


def write_profile(rows: NDArray[np.float64], directory: Path) -> str:
    """Build the profile of ``rows`` into ``directory``; its path, for ``extra_files``."""
    return str(build_profile(rows).save(directory / PROFILE_FILE))


def population_stability(expected: NDArray[np.float64], counts: NDArray[np.int64]) -> float:
    """PSI of observed bin ``counts`` against the reference shares ``expected``.

    Both sides get half a count per bin (the reference as if from a sample as large as the
    observed one), so a bin the window has not seen yet costs a bounded amount.
    """
    total = float(counts.sum())
    if total == 0:
        return math.nan
    bins = len(expected)
    observed = (counts + SMOOTHING) / (total + SMOOTHING * bins)
    reference = (np.asarray(expected) * total + SMOOTHING) / (total + SMOOTHING * bins)
    return float(np.sum((observed - reference) * np.log(observed / reference)))


def feature_stability(profile: ReferenceProfile, rows: NDArray[np.float64]) -> list[float]:
    """PSI of each feature of ``rows`` against the profile (NaN when all are missing)."""
    return [
        population_stability(np.asarray(f.frequencies), f.bin_counts(rows[:, i]))
        for i, f in enumerate(profile.features)
    ]


def missing_ratios(rows: NDArray[np.float64]) -> NDArray[np.float64]:
    """The share of missing values per feature (0 for no rows)."""
    if len(rows) == 0:
        return np.zeros(rows.shape[1] if rows.ndim == 2 else len(FEATURES))
    ratios: NDArray[np.float64] = np.isnan(rows).mean(axis=0)
    return ratios


def impute_rows(
    rows: NDArray[np.float64], impute_values: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``rows`` with each missing value replaced by its feature's imputed value.

    What the model sees for a missing field: the training median or most frequent code (the
    ONNX graph's imputer holds the same statistics; the profile stores them for the log).
    """
    return np.where(np.isnan(rows), impute_values, rows)


def read_profile(model_dir: Path) -> ReferenceProfile | None:
    """The profile stored in an MLflow model directory, or None (a model trained without one,
    or a file that is not a profile: drift is then not measured, the model still serves)."""
    import logging

    for path in (model_dir / "extra_files" / PROFILE_FILE, model_dir / PROFILE_FILE):
        if path.is_file():
            try:
                return ReferenceProfile.load(path)
            except (OSError, ValueError) as exc:
                logging.getLogger(__name__).warning("ignoring %s: %s", path, exc)
                return None
    return None
