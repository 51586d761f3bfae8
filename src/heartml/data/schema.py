"""The one schema of a patient record, in UCI coding.

The data stage validates the downloaded rows against it, the features stage builds the
preprocessing from it, and the API builds its request models and ``GET /schema`` from it.
Nothing else in heartml hard-codes a column name, a range or a code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


class Kind(StrEnum):
    """How a feature enters the models."""

    NUMERIC = "numeric"  # imputed with the median, standardised
    CATEGORICAL = "categorical"  # imputed with the mode, one-hot encoded over its codes
    BINARY = "binary"  # imputed with the mode, passed through as 0/1


@dataclass(frozen=True, slots=True)
class Feature:
    """One column: its meaning, kind, plausible range and, for coded columns, its codes.

    ``optional``: a clinician may not have it (a test not done); the API accepts null and the
    model imputes it as it did in training (see :data:`OPTIONAL_FEATURES`). ``labels``: what
    each code means, in the order of ``codes`` (the words of an explanation's reasons).
    """

    name: str
    description: str
    kind: Kind
    minimum: float
    maximum: float
    codes: tuple[int, ...] = ()
    integer: bool = True
    unit: str = ""
    optional: bool = False
    labels: tuple[str, ...] = ()

    @property
    def is_coded(self) -> bool:
        return bool(self.codes)


FEATURES: tuple[Feature, ...] = (
    Feature("age", "Age", Kind.NUMERIC, 18, 100, unit="years"),
    Feature(
        "sex",
        "Sex: 1 male, 0 female",
        Kind.BINARY,
        0,
        1,
        codes=(0, 1),
        labels=("female", "male"),
    ),
    Feature(
        "cp",
        "Chest pain: 1 typical angina, 2 atypical angina, 3 non-anginal, 4 asymptomatic",
        Kind.CATEGORICAL,
        1,
        4,
        codes=(1, 2, 3, 4),
        labels=("typical angina", "atypical angina", "non-anginal pain", "asymptomatic"),
    ),
    Feature("trestbps", "Resting blood pressure", Kind.NUMERIC, 60, 250, unit="mm Hg"),
    Feature("chol", "Serum cholesterol", Kind.NUMERIC, 80, 700, unit="mg/dl", optional=True),
    Feature(
        "fbs",
        "Fasting blood sugar > 120 mg/dl: 1 true, 0 false",
        Kind.BINARY,
        0,
        1,
        codes=(0, 1),
        optional=True,
        labels=("fasting blood sugar ≤ 120 mg/dl", "fasting blood sugar > 120 mg/dl"),
    ),
    Feature(
        "restecg",
        "Resting ECG: 0 normal, 1 ST-T abnormality, 2 LV hypertrophy",
        Kind.CATEGORICAL,
        0,
        2,
        codes=(0, 1, 2),
        labels=("normal", "ST-T wave abnormality", "left ventricular hypertrophy"),
    ),
    Feature("thalach", "Maximum heart rate achieved", Kind.NUMERIC, 50, 250, unit="bpm"),
    Feature(
        "exang",
        "Exercise-induced angina: 1 yes, 0 no",
        Kind.BINARY,
        0,
        1,
        codes=(0, 1),
        labels=("no exercise-induced angina", "exercise-induced angina"),
    ),
    Feature(
        "oldpeak",
        "ST depression induced by exercise relative to rest",
        Kind.NUMERIC,
        -3.0,
        7.0,
        integer=False,
        unit="mm",
    ),
    Feature(
        "slope",
        "Slope of the peak exercise ST segment: 1 up, 2 flat, 3 down",
        Kind.CATEGORICAL,
        1,
        3,
        codes=(1, 2, 3),
        optional=True,
        labels=("upsloping", "flat", "downsloping"),
    ),
    # ca is an ordered count: it stays numeric so that "more vessels, more risk" is learnable
    # by a linear model, while its codes are still checked.
    Feature(
        "ca",
        "Major vessels (0-3) coloured by fluoroscopy",
        Kind.NUMERIC,
        0,
        3,
        codes=(0, 1, 2, 3),
        optional=True,
        labels=(
            "no vessel coloured",
            "1 vessel coloured",
            "2 vessels coloured",
            "3 vessels coloured",
        ),
    ),
    Feature(
        "thal",
        "Thallium scan: 3 normal, 6 fixed defect, 7 reversible defect",
        Kind.CATEGORICAL,
        3,
        7,
        codes=(3, 6, 7),
        optional=True,
        labels=("normal", "fixed defect", "reversible defect"),
    ),
)

TARGET = Feature(
    "num",
    "Angiographic disease status: 0 < 50% narrowing, 1-4 > 50%",
    Kind.CATEGORICAL,
    0,
    4,
    codes=(0, 1, 2, 3, 4),
)

# The Swiss and VA files write 0 for "not measured" in these columns; the data stage turns such
# zeros into missing values (and says so). The API never accepts them.
ZERO_MEANS_MISSING: tuple[str, ...] = ("trestbps", "chol")

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
COLUMNS: tuple[str, ...] = (*FEATURE_NAMES, TARGET.name)
FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}

NUMERIC_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.kind is Kind.NUMERIC)
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(
    f.name for f in FEATURES if f.kind is Kind.CATEGORICAL
)
BINARY_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.kind is Kind.BINARY)

# The tests a clinician may not have, decided from how often the UCI sites lack them (after the
# data stage's cleaning; the README's "Patients with missing tests" has the table): the
# imaging tests ca (fluoroscopy, 96-99 % missing outside Cleveland) and thal (thallium scan,
# 42-90 %), the exercise ECG's slope (14-65 % even where oldpeak was read), and the laboratory
# values chol (8-100 %) and fbs (up to 61 %). The history, the resting measurements and the
# exercise test's thalach, exang and oldpeak stay required: each is missing in at most 5 % of
# any site's rows, except at VA, where a quarter of the patients lack the whole exercise test
# at once, and a score without it would be mostly the training prevalence.
OPTIONAL_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.optional)
REQUIRED_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if not f.optional)

# Cleveland row 1 (a 63-year-old man, typical angina, ST depression 2.3): the example in the
# API's documentation, the benchmarks and the tests.
EXAMPLE_PATIENT: dict[str, float | int] = {
    "age": 63, "sex": 1, "cp": 1, "trestbps": 145, "chol": 233, "fbs": 1, "restecg": 2,
    "thalach": 150, "exang": 0, "oldpeak": 2.3, "slope": 3, "ca": 0, "thal": 6,
}  # fmt: skip

POSITIVE_LABEL = "heart disease"
NEGATIVE_LABEL = "no heart disease"


def binary_target(num: int) -> int:
    """The usual binary target: any angiographic narrowing above 50 % (``num > 0``)."""
    return int(num > 0)


def describe_schema() -> dict[str, object]:
    """A JSON-ready description of the features, used by ``GET /schema`` and the docs."""
    return {
        "features": [
            {
                "name": f.name,
                "description": f.description,
                "kind": f.kind.value,
                "type": "integer" if f.integer else "number",
                "minimum": f.minimum,
                "maximum": f.maximum,
                "codes": list(f.codes) or None,
                "labels": dict(zip(map(str, f.codes), f.labels, strict=True)) or None,
                "unit": f.unit or None,
                "optional": f.optional,
            }
            for f in FEATURES
        ],
        "optional": list(OPTIONAL_FEATURES),
        "imputation": "an optional field sent as null (or left out) is imputed as in training: "
        "the training rows' median (numeric) or most frequent value (coded, binary); the "
        "answer's `imputed` lists it",
        "target": {
            "name": TARGET.name,
            "description": TARGET.description,
            "positive_when": "num > 0",
            "labels": {"0": NEGATIVE_LABEL, "1": POSITIVE_LABEL},
        },
    }


def synthetic_rows(count: int, seed: int = 0, missing: float = 0.05) -> NDArray[np.float64]:
    """Rows across the schema's ranges and codes, in schema order, a share of values missing.

    For tests and benchmarks that need many plausible patients, unusual ones included.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    columns = []
    for feature in FEATURES:
        if feature.codes:
            column = rng.choice(np.array(feature.codes, dtype=np.float64), size=count)
        elif feature.integer:
            column = rng.integers(int(feature.minimum), int(feature.maximum) + 1, size=count)
        else:
            column = np.round(rng.uniform(feature.minimum, feature.maximum, size=count), 1)
        columns.append(np.asarray(column, dtype=np.float64))
    rows: NDArray[np.float64] = np.column_stack(columns)
    rows[rng.random(rows.shape) < missing] = np.nan
    return rows
