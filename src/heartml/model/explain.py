"""Why the model gave this risk: each field's contribution to the log-odds, for rows of patients.

For every row the answer is a base value and one contribution per UCI field such that
``base + sum(contributions) == log-odds`` of the model's answer (the efficiency property):

* **Logistic regression: exact.** On the logit, against the training reference. The model and
  its preprocessing (imputation, scaling, one-hot) are one sum of per-field terms on the imputed
  row ``x`` (:func:`heartml.model.convert.fold_logistic`, the served graph's own arithmetic):
  ``log-odds = b + Σ_f g_f(x_f)``, with ``g_f(x) = w_f·x`` for a scaled field and a look-up of
  its code's coefficient for a one-hot encoded one. Field ``f`` contributes ``g_f(x_f) − ḡ_f``,
  ``ḡ_f`` the mean of its term over the training rows, and the base is ``b + Σ ḡ_f``: the sum is
  scikit-learn's ``decision_function``, to rounding (≤ 1e-12 measured). That is the same
  number as ``Σ_{j∈f} β_j (z_j − z̄_j)`` on the preprocessed columns ``z`` (β the coefficients,
  z̄ the mean preprocessed training row), which is how a version registered before the fold
  (or a preprocessing that does not fold) is explained: its preprocessing runs as
  ``preprocess.onnx``. The folded form needs no model call: one patient's explanation is a
  few dozen float operations.
* **Every other model: a Shapley estimate.** Interventional Shapley values of ``v(S) = mean_b
  logit f(x_S, b_{not S})`` over a small background sample ``b`` stored with the model, estimated
  by antithetic permutation sampling: each sampled order of the 13 fields and its reverse, each
  field credited with the change in ``v`` when it joins. Every order's credits add up to
  ``v(all) − v(none) = logit f(x) − base``, so efficiency holds exactly while each contribution is
  an estimate. The orders are drawn from the row's bytes: the same row always gets the same
  numbers. All coalitions of a row go through the model in one call, each scored once: a
  coalition that equals the one before it in its order (the joining field has the background
  row's value) takes that one's score.

A field the patient lacked (NaN) enters as the model imputes it, and is marked ``imputed``.

A recalibrated version (``logit p' = a + b·logit p``, :mod:`heartml.model.recalibrated`) is
explained by the same arithmetic: contributions scale by ``b``, the base becomes ``a + b·base``
(for the Shapley estimate this holds by itself, the served graph being the recalibrated one).

The files, written at registration by :mod:`heartml.model.explainer_files` into the MLflow model
directory beside the ONNX form: ``explainer.npz`` (the kind, the imputed values, and the folded
terms and their means, or the background rows). Before the fold, a linear explainer stored β, z̄
and the column → field map, with ``preprocess.onnx`` (its float64 preprocessing, converted as the
served graphs convert it); such files are still read. This module needs numpy and ONNX Runtime
only: serving imports it.
"""

from __future__ import annotations

import functools
import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from heartml.data.schema import FEATURE_NAMES, FEATURES
from heartml.evidence.stats import logit
from heartml.model.onnx_form import INPUT_NAME, Rows

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

EXPLAINER_FILE = "explainer.npz"
PREPROCESS_FILE = "preprocess.onnx"
PREPROCESSED_NAME = "preprocessed"  # the output of preprocess.onnx

Kind = Literal["linear", "shapley"]

# The Shapley estimate's cost and precision (README, Explanations): the number of field orders
# sampled per row (antithetic pairs, so even), and the background rows stored with the model.
# Measured against exact values over 64 background rows (bench/explain_accuracy.py), the error
# comes from the 16 background rows, not from the orders: a second pair of orders takes the
# random forest's rms error from 0.091 to 0.090 log-odds and the SVM's from 0.119 to 0.118, at
# twice the model rows per request (the k-NN's from 0.83 to 0.65, of values whose rms is 0.81:
# its estimate is poor either way, README).
PERMUTATIONS = 2
BACKGROUND_ROWS = 16

# At most this many model rows per ONNX Runtime call when a batch is explained: a batch's
# coalitions are cut at row boundaries so that memory stays bounded (a row is never split).
# The k-NN's graph holds rows × training rows × columns of distances at once: 65,536 rows
# took 12 GB and the OOM killer's attention; 4,096 rows take ~200 MB, and cost the other
# models nothing measurable (a call's overhead is tens of µs).
CHUNK_MODEL_ROWS = 1 << 12

FIELDS = len(FEATURE_NAMES)


class ProbabilityEngine(Protocol):
    def predict_proba(self, rows: Rows) -> NDArray[np.floating[Any]]: ...


@dataclass(frozen=True, slots=True)
class Explanations:
    """The explanations of n rows: arrays in row order, fields in schema order."""

    method: str
    base: float
    log_odds: NDArray[np.float64]  # (n,)
    contributions: NDArray[np.float64]  # (n, 13)
    values: NDArray[np.float64]  # (n, 13): the value each field entered the model with
    imputed: NDArray[np.bool_]  # (n, 13): the patient lacked it; ``values`` holds the imputed

    def __len__(self) -> int:
        return len(self.log_odds)

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as the API answers it (:class:`heartml.serve.schemas.Explanation`)."""
        return answer(
            self.method,
            self.base,
            float(self.log_odds[i]),
            self.contributions[i].tolist(),
            self.values[i].tolist(),
            self.imputed[i].tolist(),
        )


def answer(
    method: str,
    base: float,
    log_odds: float,
    contributions: list[float],
    values: list[float],
    imputed: list[bool],
) -> dict[str, Any]:
    """One row's explanation as the API answers it (:class:`heartml.serve.schemas.Explanation`)."""
    return {
        "method": method,
        "base": base,
        "log_odds": log_odds,
        "contributions": dict(zip(FEATURE_NAMES, contributions, strict=True)),
        "imputed": [n for n, gone in zip(FEATURE_NAMES, imputed, strict=True) if gone],
        "top": top_reasons(contributions, values, imputed),
    }


def top_reasons(
    contributions: list[float], values: list[float], imputed: list[bool], count: int = 3
) -> list[str]:
    """The ``count`` largest contributions in words, largest |contribution| first:
    ``"thal = 7, reversible defect: +0.92"``, ``"chol = 241 mg/dl (imputed): +0.01"``."""
    # A stable sort: equal sizes keep schema order.
    order = sorted(range(FIELDS), key=[-abs(c) for c in contributions].__getitem__)[:count]
    return [_reason(j, values[j], imputed[j], contributions[j]) for j in order]


# Each coded field's codes in words ("7, reversible defect"), looked up by value: a reason is
# formatted on every explained request.
_CODES_IN_WORDS: list[dict[float, str]] = [
    {float(code): f"{code}, {label}" for code, label in zip(f.codes, f.labels, strict=True)}
    if f.labels
    else {}
    for f in FEATURES
]


def _reason(j: int, value: float, imputed: bool, contribution: float) -> str:
    feature = FEATURES[j]
    shown = _CODES_IN_WORDS[j].get(value)
    if shown is None:
        shown = f"{value:g} {feature.unit}" if feature.unit else f"{value:g}"
    note = " (imputed)" if imputed else ""
    return f"{feature.name} = {shown}{note}: {contribution:+.2f}"


@dataclass(frozen=True, slots=True)
class Recalibration:
    """``logit p' = intercept + slope · logit p``: no update is (0, 1)."""

    intercept: float = 0.0
    slope: float = 1.0

    def then(self, later: Recalibration) -> Recalibration:
        """This update followed by ``later``."""
        return Recalibration(
            later.intercept + later.slope * self.intercept, later.slope * self.slope
        )

    @property
    def is_identity(self) -> bool:
        return self.intercept == 0.0 and self.slope == 1.0


class Explainer(Protocol):
    kind: Kind

    @property
    def method(self) -> str: ...

    def explain(self, rows: Rows) -> Explanations:
        """The explanations of float64 rows in schema order (NaN: missing)."""
        ...

    def explain_one(self, row: list[float]) -> dict[str, Any]:
        """One row's explanation as the API answers it (NaN: missing)."""
        ...


def _filled(rows: Rows, fill: NDArray[np.float64]) -> tuple[Rows, NDArray[np.bool_]]:
    missing = np.isnan(rows)
    return np.where(missing, fill, rows), missing


class _ExplainsRows(ABC):
    """``explain_one`` through ``explain``: for the explainers whose one-row answer is no
    cheaper than a batch's."""

    @abstractmethod
    def explain(self, rows: Rows) -> Explanations: ...

    def explain_one(self, row: list[float]) -> dict[str, Any]:
        return self.explain(np.array([row], dtype=np.float64)).row(0)


def _linear_method(recalibration: Recalibration) -> str:
    if recalibration.is_identity:
        return "exact linear"
    r = recalibration
    return f"exact linear, recalibrated (logit p' = {r.intercept:.4g} + {r.slope:.4g}·logit p)"


@dataclass(frozen=True)
class FieldTerms:
    """A logistic regression folded onto the fields (module doc): on the imputed row ``x``,
    ``log-odds = bias + Σ_f g_f(x_f)`` with ``g_f(x) = weight_f·x + Σ_{j: source_j = f}
    table_j·[x = code_j]``; ``mean``: each ``g_f``'s mean over the training rows."""

    weight: NDArray[np.float64]  # (13,): 0 for a one-hot encoded field
    bias: float
    source: NDArray[np.int64]  # (k,): the field of each one-hot column
    code: NDArray[np.float64]  # (k,): its code (a code none matches gives 0, as scikit-learn's
    table: NDArray[np.float64]  # (k,): its coefficient          handle_unknown="ignore")
    mean: NDArray[np.float64]  # (13,)

    @functools.cached_property
    def _table_by_field(self) -> NDArray[np.float64]:
        """(k, 13): each one-hot column's coefficient in its field's column."""
        by_field = np.zeros((len(self.source), FIELDS))
        by_field[np.arange(len(self.source)), self.source] = self.table
        return by_field

    def terms(self, values: Rows) -> NDArray[np.float64]:
        """Each field's term ``g_f`` of imputed rows: (n, 13)."""
        terms: NDArray[np.float64] = values * self.weight
        if len(self.source):
            terms += (values[:, self.source] == self.code) @ self._table_by_field
        return terms


class LinearExplainer:
    """Exact contributions of a logistic regression, from its terms per field (module doc)."""

    kind: Kind = "linear"

    def __init__(
        self,
        terms: FieldTerms,
        fill: NDArray[np.float64],
        recalibration: Recalibration = Recalibration(),
    ) -> None:
        self.terms = terms
        self.fill = np.asarray(fill, dtype=np.float64)
        self.recalibration = recalibration
        self.method = _linear_method(recalibration)
        r = recalibration
        self.base = r.intercept + r.slope * (terms.bias + float(np.sum(terms.mean)))
        # One patient in plain Python (a few µs; numpy's per-call costs would be most of it):
        # per field its imputed value, weight, code → coefficient, and mean term.
        looked_up: list[dict[float, float]] = [{} for _ in range(FIELDS)]
        for field, code, value in zip(
            terms.source.tolist(), terms.code.tolist(), terms.table.tolist(), strict=True
        ):
            looked_up[field][code] = looked_up[field].get(code, 0.0) + value
        self._fields = list(
            zip(
                self.fill.tolist(),
                terms.weight.tolist(),
                looked_up,
                terms.mean.tolist(),
                strict=True,
            )
        )

    def explain(self, rows: Rows) -> Explanations:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        values, missing = _filled(rows, self.fill)
        terms = self.terms.terms(values)
        # Summed field by field from the bias, as explain_one sums: the same bits either way.
        total = np.full(len(values), self.terms.bias)
        for field in range(FIELDS):
            total += terms[:, field]
        r = self.recalibration
        return Explanations(
            method=self.method,
            base=self.base,
            log_odds=r.intercept + r.slope * total,
            contributions=r.slope * (terms - self.terms.mean),
            values=values,
            imputed=missing,
        )

    def explain_one(self, row: list[float]) -> dict[str, Any]:
        slope = self.recalibration.slope
        total = self.terms.bias
        contributions, values, imputed = [], [], []
        for (fill, weight, looked_up, mean), given in zip(self._fields, row, strict=True):
            lacked = math.isnan(given)
            value = fill if lacked else given
            term = weight * value + looked_up.get(value, 0.0)
            total += term
            contributions.append(slope * (term - mean))
            values.append(value)
            imputed.append(lacked)
        log_odds = self.recalibration.intercept + slope * total
        return answer(self.method, self.base, log_odds, contributions, values, imputed)


class ColumnLinearExplainer(_ExplainsRows):
    """Exact contributions of a logistic regression from its preprocessed columns, computed by
    ``preprocess.onnx``: a version registered before the fold, or a preprocessing that does not
    fold (module doc)."""

    kind: Kind = "linear"

    def __init__(
        self,
        preprocess: bytes,
        coef: NDArray[np.float64],
        intercept: float,
        reference: NDArray[np.float64],
        field_of_column: NDArray[np.int64],
        fill: NDArray[np.float64],
        recalibration: Recalibration = Recalibration(),
    ) -> None:
        self._session = _session(preprocess)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.reference = np.asarray(reference, dtype=np.float64)
        self.fill = np.asarray(fill, dtype=np.float64)
        self.recalibration = recalibration
        self.method = _linear_method(recalibration)
        # (columns, fields) 0/1: sums each field's columns (its one-hot ones) in one product.
        self._to_fields = np.zeros((len(self.coef), FIELDS))
        self._to_fields[np.arange(len(self.coef)), np.asarray(field_of_column)] = 1.0
        self._base = self.intercept + float(self.coef @ self.reference)

    def preprocess(self, rows: Rows) -> NDArray[np.float64]:
        result: NDArray[np.float64] = self._session.run(None, {INPUT_NAME: rows})[0]
        return result

    def explain(self, rows: Rows) -> Explanations:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        z = self.preprocess(rows)
        contributions = ((z - self.reference) * self.coef) @ self._to_fields
        log_odds = self.intercept + z @ self.coef
        r = self.recalibration
        values, missing = _filled(rows, self.fill)
        return Explanations(
            method=self.method,
            base=r.intercept + r.slope * self._base,
            log_odds=r.intercept + r.slope * log_odds,
            contributions=r.slope * contributions,
            values=values,
            imputed=missing,
        )


class ShapleyExplainer(_ExplainsRows):
    """A Shapley estimate through the served engine, against a stored background (module doc)."""

    kind: Kind = "shapley"

    def __init__(
        self,
        engine: ProbabilityEngine,
        background: NDArray[np.float64],
        fill: NDArray[np.float64],
        permutations: int = PERMUTATIONS,
    ) -> None:
        if permutations < 2 or permutations % 2:
            raise ValueError(f"permutations must be even and at least 2, not {permutations}")
        self.engine = engine
        self.background = np.ascontiguousarray(background, dtype=np.float64)
        self.fill = np.asarray(fill, dtype=np.float64)
        self.permutations = permutations
        # Each background row's log-odds: v(no field) is their mean, the same for every row.
        self._background_log_odds = self._log_odds(self.background)
        self.base = float(np.mean(self._background_log_odds))

    @property
    def method(self) -> str:
        return (
            f"Shapley estimate, {self.permutations} permutations, "
            f"{len(self.background)} background rows"
        )

    def _log_odds(self, rows: Rows) -> NDArray[np.float64]:
        return logit(np.asarray(self.engine.predict_proba(rows))[:, 1])

    def orders(self, row: NDArray[np.float64]) -> NDArray[np.int64]:
        """The field orders of one row, each followed by its reverse: the fields sorted by
        32-bit keys read from the SHAKE-128 digest of the row's bytes (independent uniform
        keys sort into a uniformly random order; a tie, about one row in 10^8, keeps field
        order). A tenth of what seeding a numpy generator per row costs, on every request."""
        half = self.permutations // 2
        digest = hashlib.shake_128(row.tobytes()).digest(4 * FIELDS * half)
        keys = np.frombuffer(digest, dtype="<u4").reshape(half, FIELDS)
        first = np.argsort(keys, axis=1, kind="stable")
        return np.stack([first, first[:, ::-1]], axis=1).reshape(self.permutations, FIELDS)

    def explain(self, rows: Rows) -> Explanations:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        per_row = self.permutations * (FIELDS - 1) * len(self.background) + 1
        step = max(1, CHUNK_MODEL_ROWS // per_row)
        parts = [self._explain(rows[i : i + step]) for i in range(0, len(rows), step)]
        contributions = np.vstack([p[0] for p in parts]) if parts else np.empty((0, FIELDS))
        log_odds = np.concatenate([p[1] for p in parts]) if parts else np.empty(0)
        values, missing = _filled(rows, self.fill)
        return Explanations(
            method=self.method,
            base=self.base,
            log_odds=log_odds,
            contributions=contributions,
            values=values,
            imputed=missing,
        )

    def _explain(self, rows: Rows) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        n, p = len(rows), self.permutations
        orders = np.stack([self.orders(row) for row in rows])  # (n, p, 13)
        # position[i, k, f]: where field f comes in order k of row i.
        position = np.argsort(orders, axis=2)
        # joined[i, k, s, f]: field f is in the coalition after s + 1 steps of the order
        # (s = 0 .. 11; the empty coalition is the base, the full one the row itself).
        steps = np.arange(FIELDS - 1)
        joined = position[:, :, None, :] <= steps[None, None, :, None]  # (n, p, 12, 13)
        # A coalition row equals the one before it in the order (the background row itself
        # before step 0) where the patient and the background row have the same value of the
        # field that joins: such a row is not scored again but given the score before it. A
        # coded or yes/no field often agrees (about a third of the rows), and a model's score
        # of a row does not depend on what else is scored with it.
        joining = orders[:, :, : FIELDS - 1]  # (n, p, 12)
        patient_value = rows[np.arange(n)[:, None, None], joining]
        changed = patient_value[..., None] != self.background.T[joining]  # (n, p, 12, b); NaN: True
        coalitions = np.where(
            joined[:, :, :, None, :],
            rows[:, None, None, None, :],
            self.background[None, None, None, :, :],
        )  # (n, p, 12, b, 13)
        # One call for every new coalition of these rows, the rows themselves after them.
        fresh = coalitions[changed]
        scores = self._log_odds(np.concatenate([fresh, rows]))
        own = scores[len(fresh) :]
        scored = np.zeros(changed.shape)
        scored[changed] = scores[: len(fresh)]
        # The step each coalition row was last scored at (-1: the background row's own score).
        last = np.maximum.accumulate(np.where(changed, steps[None, None, :, None], -1), axis=2)
        carried = np.take_along_axis(scored, np.maximum(last, 0), axis=2)
        value = np.where(last >= 0, carried, self._background_log_odds).mean(axis=3)
        chain = np.concatenate(
            [np.full((n, p, 1), self.base), value, own[:, None, None].repeat(p, axis=1)], axis=2
        )  # v along each order: none, 1 field, ..., all 13
        gains = np.diff(chain, axis=2)  # (n, p, 13): the gain of the field at each step
        credited = np.take_along_axis(gains, position, axis=2)  # back to field order
        return credited.mean(axis=1), own


def _session(graph: bytes) -> InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # One thread, as the served engine (heartml.model.onnx_form.OnnxEngine says why).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


# --- the stored form -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredExplainer:
    """The contents of ``explainer.npz`` (and, for a linear explainer by columns,
    ``preprocess.onnx``'s bytes). A linear explainer has ``terms`` (folded), the columns'
    ``coef``, ``intercept``, ``reference``, ``field_of_column`` and ``preprocess``, or both
    (explained by the terms; the columns are what a reader from before the fold reads)."""

    kind: Kind
    fill: NDArray[np.float64]
    terms: FieldTerms | None = None
    coef: NDArray[np.float64] | None = None
    intercept: float = 0.0
    reference: NDArray[np.float64] | None = None
    field_of_column: NDArray[np.int64] | None = None
    preprocess: bytes | None = None
    background: NDArray[np.float64] | None = None
    permutations: int = PERMUTATIONS
    recalibration: Recalibration = Recalibration()

    def save(self, directory: Path) -> list[str]:
        """Write the files into ``directory``; their paths, for ``extra_files``."""
        arrays: dict[str, Any] = {
            "kind": np.array(self.kind),
            "fill": self.fill,
            "recalibration": np.array(
                [self.recalibration.intercept, self.recalibration.slope], dtype=np.float64
            ),
        }
        paths = [directory / EXPLAINER_FILE]
        if self.kind == "linear":
            columns = (self.coef, self.reference, self.field_of_column, self.preprocess)
            if self.terms is None and any(part is None for part in columns):
                raise ValueError(
                    "a linear explainer needs its terms, or coef, reference, field_of_column "
                    "and its preprocessing graph"
                )
            if self.terms is not None:
                t = self.terms
                arrays |= {
                    "terms_weight": t.weight,
                    "terms_bias": np.array(t.bias),
                    "terms_source": t.source,
                    "terms_code": t.code,
                    "terms_table": t.table,
                    "terms_mean": t.mean,
                }
            if self.preprocess is not None and all(part is not None for part in columns):
                arrays |= {
                    "coef": self.coef,
                    "intercept": np.array(self.intercept),
                    "reference": self.reference,
                    "field_of_column": self.field_of_column,
                }
                (directory / PREPROCESS_FILE).write_bytes(self.preprocess)
                paths.append(directory / PREPROCESS_FILE)
        else:
            if self.background is None:
                raise ValueError("a Shapley explainer needs its background rows")
            arrays |= {"background": self.background, "permutations": np.array(self.permutations)}
        with (directory / EXPLAINER_FILE).open("wb") as out:
            np.savez(out, **arrays)
        return [str(p) for p in paths]

    @classmethod
    def load(cls, explainer: Path, preprocess: Path | None) -> StoredExplainer:
        with np.load(explainer, allow_pickle=False) as stored:
            kind = str(stored["kind"])
            fill = np.asarray(stored["fill"], dtype=np.float64)
            a, b = (float(v) for v in stored["recalibration"])
            if kind == "linear":
                terms = None
                if "terms_table" in stored.files:
                    terms = FieldTerms(
                        weight=np.asarray(stored["terms_weight"], dtype=np.float64),
                        bias=float(stored["terms_bias"]),
                        source=np.asarray(stored["terms_source"], dtype=np.int64),
                        code=np.asarray(stored["terms_code"], dtype=np.float64),
                        table=np.asarray(stored["terms_table"], dtype=np.float64),
                        mean=np.asarray(stored["terms_mean"], dtype=np.float64),
                    )
                if "coef" not in stored.files or preprocess is None:
                    if terms is None:
                        raise ValueError(f"{explainer} is linear but {PREPROCESS_FILE} is missing")
                    return cls(
                        kind="linear", fill=fill, terms=terms, recalibration=Recalibration(a, b)
                    )
                return cls(
                    kind="linear",
                    fill=fill,
                    terms=terms,
                    coef=np.asarray(stored["coef"], dtype=np.float64),
                    intercept=float(stored["intercept"]),
                    reference=np.asarray(stored["reference"], dtype=np.float64),
                    field_of_column=np.asarray(stored["field_of_column"], dtype=np.int64),
                    preprocess=preprocess.read_bytes(),
                    recalibration=Recalibration(a, b),
                )
            if kind == "shapley":
                return cls(
                    kind="shapley",
                    fill=fill,
                    background=np.asarray(stored["background"], dtype=np.float64),
                    permutations=int(stored["permutations"]),
                    recalibration=Recalibration(a, b),
                )
        raise ValueError(f"{explainer}: unknown explainer kind {kind!r}")

    def recalibrated(self, intercept: float, slope: float) -> StoredExplainer:
        """The explainer of this model recalibrated by ``logit p' = intercept + slope·logit p``.

        Linear: the update is stored and applied to base and contributions. Shapley: nothing
        changes, since it explains whatever the served graph answers, which is then the
        recalibrated graph (:func:`heartml.model.recalibrated.recalibrated_graph`).
        """
        if self.kind != "linear":
            return self
        from dataclasses import replace

        return replace(self, recalibration=self.recalibration.then(Recalibration(intercept, slope)))

    def explainer(self, engine: ProbabilityEngine) -> Explainer:
        """The runtime: ``engine`` is the served model's (the Shapley estimate runs through it)."""
        if self.kind == "linear" and self.terms is not None:
            return LinearExplainer(self.terms, self.fill, self.recalibration)
        if self.kind == "linear":
            assert self.preprocess is not None and self.coef is not None
            assert self.reference is not None and self.field_of_column is not None
            return ColumnLinearExplainer(
                self.preprocess,
                self.coef,
                self.intercept,
                self.reference,
                self.field_of_column,
                self.fill,
                self.recalibration,
            )
        assert self.background is not None
        return ShapleyExplainer(engine, self.background, self.fill, self.permutations)


def find_explainer_files(model_dir: Path) -> tuple[Path, Path | None] | None:
    """``explainer.npz`` and ``preprocess.onnx`` (when present) as the model directory's
    ``MLmodel`` lists them, or None when it lists no explainer."""
    import yaml

    meta: Any = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
    flavor = (meta or {}).get("flavors", {}).get("sklearn", {})
    listed = {
        Path(entry["path"]).name: model_dir / entry["path"]
        for entry in flavor.get("extra_files") or []
    }
    explainer = listed.get(EXPLAINER_FILE)
    if explainer is None or not explainer.is_file():
        return None
    preprocess = listed.get(PREPROCESS_FILE)
    return explainer, preprocess if preprocess is not None and preprocess.is_file() else None


def load_explainer(model_dir: Path, engine: ProbabilityEngine) -> Explainer | None:
    """The explainer stored in an MLflow model directory, or None when it has none (a version
    registered before explanations were stored)."""
    found = find_explainer_files(model_dir)
    if found is None:
        return None
    return StoredExplainer.load(*found).explainer(engine)
