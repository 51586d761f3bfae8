"""Updating a model for a new site, and choosing how far to update it on the site's data.

Steyerberg's updating hierarchy (Clinical Prediction Models, 2nd ed., ch. 20), from least to most
estimated on the site's rows:

* ``none``: the model as it is;
* ``intercept``: recalibration in the large, ``logit p' = a + logit p`` (one parameter);
* ``logistic``: logistic recalibration, ``logit p' = a + b·logit p`` (two parameters);
* ``refit``: every coefficient estimated again on the site's rows (the candidate refitted).

A monotone update (``intercept``, ``logistic`` with ``b > 0``) keeps the order of the risks, so
it leaves the ROC-AUC unchanged and changes only calibration.

``auto`` chooses with the closed testing procedure of Vergouwe et al. (Stat Med 2017;36:4529):
each simpler model is compared by a likelihood-ratio test with the most extensive one the data
support, from the simplest up, and the first that is not significantly worse is kept; so the
model is updated only as far as the site's data show it must be.

How many rows an update needs: at least ``MIN_PER_PARAMETER`` rows of each outcome per estimated
parameter (the rule of ten events per parameter applied to the rarer outcome; Riley et al., BMJ
2020;368:m441 show it is a floor, not a target). A method the sample cannot support is refused, or
dropped from ``auto``'s choices, with the counts and the criterion in its message.

Pure numpy and scipy: arrays in, small frozen results out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

from heartml.evidence.stats import EPSILON, logistic_fit, logit

MIN_PER_PARAMETER = 10
# External validation: Riley et al. (Stat Med 2021;40:4230) size a validation sample for a
# precise calibration slope; below about 100 rows of each outcome the intervals are wide
# (Collins et al., Stat Med 2016;35:214), which the card says.
VALIDATION_ROWS_PER_OUTCOME = 100
ALPHA = 0.05


class Method(StrEnum):
    NONE = "none"
    INTERCEPT = "intercept"
    LOGISTIC = "logistic"
    REFIT = "refit"


PARAMETERS = {Method.NONE: 0, Method.INTERCEPT: 1, Method.LOGISTIC: 2}
DESCRIPTIONS = {
    Method.NONE: "the model unchanged",
    Method.INTERCEPT: "recalibration in the large (intercept)",
    Method.LOGISTIC: "logistic recalibration (intercept and slope on the model's logit)",
    Method.REFIT: "the candidate refitted on the site's rows",
}


@dataclass(frozen=True, slots=True)
class Recalibration:
    """``logit p' = intercept + slope · logit p``; ``none`` is (0, 1)."""

    method: Method
    intercept: float = 0.0
    slope: float = 1.0

    def apply(self, probability: ArrayLike) -> NDArray[np.float64]:
        """The updated probabilities, computed as the ONNX graph computes them."""
        p = np.asarray(probability, dtype=np.float64)
        if self.method is Method.NONE:
            return p.copy()
        z = self.intercept + self.slope * logit(p)
        result: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
        return result

    @property
    def monotone(self) -> bool:
        """True when the update keeps the order of the risks (so the ROC-AUC)."""
        return self.slope > 0


@dataclass(frozen=True, slots=True)
class SampleCheck:
    """Whether a sample has enough rows of each outcome for a method."""

    method: Method
    events: int
    non_events: int
    parameters: int
    needed: int  # rows of each outcome

    @property
    def ok(self) -> bool:
        return min(self.events, self.non_events) >= self.needed

    @property
    def criterion(self) -> str:
        return (
            f"{self.method} estimates {self.parameters} parameter(s) and needs at least "
            f"{self.needed} rows of each outcome ({MIN_PER_PARAMETER} per parameter)"
        )

    @property
    def message(self) -> str:
        counts = f"{self.events} with disease and {self.non_events} without"
        verdict = "enough" if self.ok else "too few"
        return f"{counts}: {verdict}; {self.criterion}"


@dataclass(frozen=True, slots=True)
class LikelihoodRatio:
    """A likelihood-ratio test of a simpler model against a more extensive one."""

    simpler: Method
    extensive: Method
    statistic: float
    df: int
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def as_dict(self) -> dict[str, object]:
        return {
            "simpler": str(self.simpler),
            "extensive": str(self.extensive),
            "statistic": self.statistic,
            "df": self.df,
            "p_value": self.p_value,
        }


@dataclass(frozen=True, slots=True)
class ClosedTest:
    """What the closed testing procedure chose, the tests it ran and what it could not try."""

    chosen: Method
    tests: tuple[LikelihoodRatio, ...]
    considered: tuple[Method, ...]
    left_out: tuple[SampleCheck, ...]  # methods the sample could not support

    @property
    def fell_back(self) -> bool:
        return bool(self.left_out)

    def as_dict(self) -> dict[str, object]:
        return {
            "chosen": str(self.chosen),
            "considered": [str(m) for m in self.considered],
            "tests": [t.as_dict() for t in self.tests],
            "left_out": [{"method": str(c.method), "why": c.message} for c in self.left_out],
            "alpha": ALPHA,
        }


def _labels(y_true: ArrayLike) -> NDArray[np.float64]:
    return np.asarray(y_true, dtype=np.float64).ravel()


def sample_check(method: Method, y_true: ArrayLike, parameters: int | None = None) -> SampleCheck:
    """Whether the rows ``y_true`` support ``method`` (``parameters``: a refit's count)."""
    y = _labels(y_true)
    count = PARAMETERS.get(method, 0) if parameters is None else parameters
    events = int(y.sum())
    return SampleCheck(method, events, int(y.size) - events, count, MIN_PER_PARAMETER * count)


def log_likelihood(y_true: ArrayLike, probability: ArrayLike) -> float:
    y = _labels(y_true)
    p = np.clip(np.asarray(probability, dtype=np.float64).ravel(), EPSILON, 1.0 - EPSILON)
    return float(np.sum(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def fit_recalibration(y_true: ArrayLike, probability: ArrayLike, method: Method) -> Recalibration:
    """The maximum-likelihood update of ``method`` on these rows (``none``: the identity)."""
    y = _labels(y_true)
    lp = logit(probability).ravel()
    if method is Method.NONE:
        return Recalibration(Method.NONE)
    if method is Method.INTERCEPT:
        (intercept,) = logistic_fit(y, np.ones((lp.size, 1)), offset=lp)
        slope = 1.0
    elif method is Method.LOGISTIC:
        intercept, slope = logistic_fit(
            y, np.column_stack([np.ones_like(lp), lp]), np.zeros_like(lp)
        )
    else:
        raise ValueError(f"{method} is not a recalibration")
    if not (math.isfinite(intercept) and math.isfinite(slope)):
        raise ValueError(f"{method}: the outcome is separable on these rows; no finite fit")
    return Recalibration(method, float(intercept), float(slope))


def likelihood_ratio(
    y_true: ArrayLike,
    simpler: tuple[Method, ArrayLike, int],
    extensive: tuple[Method, ArrayLike, int],
) -> LikelihoodRatio:
    """``2 (ℓ_extensive − ℓ_simpler)`` against χ² with the difference in parameters as df."""
    from scipy.stats import chi2

    (m0, p0, k0), (m1, p1, k1) = simpler, extensive
    statistic = max(0.0, 2.0 * (log_likelihood(y_true, p1) - log_likelihood(y_true, p0)))
    df = k1 - k0
    return LikelihoodRatio(m0, m1, statistic, df, float(chi2.sf(statistic, df)))


def closed_test(
    y_true: ArrayLike,
    probability: ArrayLike,
    refit: tuple[ArrayLike, int] | None = None,
    methods: Sequence[Method] = (Method.NONE, Method.INTERCEPT, Method.LOGISTIC, Method.REFIT),
) -> ClosedTest:
    """Vergouwe's closed test among ``methods`` on the adaptation rows.

    ``refit``: the refitted candidate's probabilities on the same rows and its parameter count,
    when a refit was tried. Methods the sample cannot support are left out, and said so.
    """
    y = _labels(y_true)
    fitted: dict[Method, tuple[NDArray[np.float64], int]] = {
        Method.NONE: (np.asarray(probability, dtype=np.float64).ravel(), 0)
    }
    left_out: list[SampleCheck] = []
    for method in methods:
        if method is Method.NONE:
            continue
        if method is Method.REFIT:
            if refit is None:
                continue
            check = sample_check(method, y, refit[1])
            if check.ok:
                fitted[method] = (np.asarray(refit[0], dtype=np.float64).ravel(), refit[1])
            else:
                left_out.append(check)
            continue
        check = sample_check(method, y)
        if not check.ok:
            left_out.append(check)
            continue
        fitted[method] = (
            fit_recalibration(y, probability, method).apply(probability),
            check.parameters,
        )
    order = [
        m for m in (Method.NONE, Method.INTERCEPT, Method.LOGISTIC, Method.REFIT) if m in fitted
    ]
    most = order[-1]
    tests: list[LikelihoodRatio] = []
    chosen = most
    for simpler in order[:-1]:
        test = likelihood_ratio(y, (simpler, *fitted[simpler]), (most, *fitted[most]))
        tests.append(test)
        if not test.significant:
            chosen = simpler
            break
    return ClosedTest(chosen, tuple(tests), tuple(order), tuple(left_out))
