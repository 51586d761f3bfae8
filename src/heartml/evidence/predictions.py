"""The predictions a version is judged by, as one table logged with its run (``predictions.csv``).

Every number on a model card and every promotion decision is computed from this table, so that
anyone can recompute them (a test does). One line per prediction::

    set,row_id,y,repeat,fold,probability
    cv,cleveland:17,1,0,3,0.8123…          out-of-fold, repeat 0, fold 3
    holdout,cleveland:5,0,,,0.1042…        the final model on a held-out row
    site:hungarian,hungarian:1,0,,,0.21…   the final model on a site it was not trained on

Sets: ``cv`` (out-of-fold predictions of the repeated cross-validation over the training
rows), ``cv_masked:<masking>`` (the same folds' models, the masking's fields missing),
``holdout``, ``site:<site>`` (a site not trained on), ``loso`` (leave-one-site-out: the fold is
the left-out site's position in the experiment's sites), ``internal`` (the chosen candidate's
procedure cross-validated over every row, held-out rows included). Row ids are ``site:line``,
the line of the UCI file, so two versions' predictions pair row by row.

numpy and the standard library only: the promotion gate reads it wherever ``heartml promote``
runs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

PREDICTIONS_ARTIFACT = "predictions.csv"
COLUMNS = ("set", "row_id", "y", "repeat", "fold", "probability")

CV = "cv"
HOLDOUT = "holdout"
LOSO = "loso"
INTERNAL = "internal"
MASKED_PREFIX = "cv_masked:"
SITE_PREFIX = "site:"
# An adapted version's base model on the same site rows: for a recalibration, the order of
# risks of the registered model itself (what its discrimination is judged on).
SITE_BASE_PREFIX = "site_base:"


class PredictionsError(ValueError):
    """A predictions table that cannot be read; the message is one line."""


@dataclass(frozen=True, slots=True)
class PredictionSet:
    """The rows of one set, in the order they were written."""

    row_ids: np.ndarray  # str
    y: np.ndarray  # int 0/1
    probability: np.ndarray  # float64
    repeat: np.ndarray  # int, -1 where not resampled
    fold: np.ndarray  # int, -1 where not resampled

    def __len__(self) -> int:
        return len(self.y)

    @property
    def repeats(self) -> int:
        return int(self.repeat.max()) + 1 if len(self) else 0

    def by_row(self) -> PredictionSet:
        """One prediction per row: the mean over repeats (a row is out of fold once per
        repeat), rows in order of first appearance."""
        if self.repeats <= 1 and len(np.unique(self.row_ids)) == len(self):
            return self
        ids, first, inverse = np.unique(self.row_ids, return_index=True, return_inverse=True)
        order = np.argsort(first)
        sums = np.bincount(inverse, weights=self.probability, minlength=len(ids))
        counts = np.bincount(inverse, minlength=len(ids))
        minus_one = np.full(len(ids), -1)
        return PredictionSet(
            row_ids=ids[order],
            y=self.y[first][order],
            probability=(sums / counts)[order],
            repeat=minus_one,
            fold=minus_one,
        )

    def fold_scores(self) -> np.ndarray:
        """The ROC-AUC of every (repeat, fold), repeat-major; needs both outcomes per fold."""
        from heartml.evidence.stats import roc_auc

        scores = []
        for repeat in range(self.repeats):
            in_repeat = self.repeat == repeat
            for fold in np.unique(self.fold[in_repeat]):
                chosen = in_repeat & (self.fold == fold)
                scores.append(roc_auc(self.y[chosen], self.probability[chosen]))
        return np.asarray(scores, dtype=np.float64)

    def restricted_to(self, row_ids: Iterable[str]) -> PredictionSet:
        """The rows whose id is in ``row_ids``, in that order (each row once: use by_row)."""
        position = {row_id: i for i, row_id in enumerate(self.row_ids)}
        index = np.asarray([position[r] for r in row_ids], dtype=np.int64)
        return PredictionSet(
            self.row_ids[index],
            self.y[index],
            self.probability[index],
            self.repeat[index],
            self.fold[index],
        )


def prediction_set(
    row_ids: Iterable[str],
    y: Iterable[int],
    probability: Iterable[float],
    repeat: Iterable[int] | None = None,
    fold: Iterable[int] | None = None,
) -> PredictionSet:
    ids = np.asarray(list(row_ids), dtype=object)
    none = np.full(len(ids), -1, dtype=np.int64)
    return PredictionSet(
        row_ids=ids,
        y=np.asarray(list(y), dtype=np.int64),
        probability=np.asarray(list(probability), dtype=np.float64),
        repeat=none if repeat is None else np.asarray(list(repeat), dtype=np.int64),
        fold=none if fold is None else np.asarray(list(fold), dtype=np.int64),
    )


def resampled_set(
    row_ids: np.ndarray, y: np.ndarray, plan: np.ndarray, probability: np.ndarray
) -> PredictionSet:
    """A cross-validated set from its fold plan and predictions, both (repeats, rows)."""
    repeats = plan.shape[0]
    return PredictionSet(
        row_ids=np.tile(np.asarray(row_ids, dtype=object), repeats),
        y=np.tile(np.asarray(y, dtype=np.int64), repeats),
        probability=np.asarray(probability, dtype=np.float64).ravel(),
        repeat=np.repeat(np.arange(repeats), plan.shape[1]),
        fold=plan.ravel().astype(np.int64),
    )


def write_predictions(sets: Mapping[str, PredictionSet]) -> str:
    """The CSV text of the table. Probabilities are written with ``repr``: read back, they are
    the very floats that were computed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for name, rows in sets.items():
        for row_id, y, repeat, fold, p in zip(
            rows.row_ids, rows.y, rows.repeat, rows.fold, rows.probability, strict=True
        ):
            writer.writerow(
                (
                    name,
                    row_id,
                    int(y),
                    "" if repeat < 0 else int(repeat),
                    "" if fold < 0 else int(fold),
                    repr(float(p)),
                )
            )
    return out.getvalue()


def read_predictions(text: str) -> dict[str, PredictionSet]:
    """The sets of a table written by :func:`write_predictions`."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != COLUMNS:
        raise PredictionsError(
            f"not a predictions table (expected the columns {','.join(COLUMNS)})"
        )
    columns: dict[str, tuple[list[str], list[int], list[int], list[int], list[float]]] = {}
    for line, record in enumerate(reader, start=2):
        try:
            name, row_id, y, repeat, fold, probability = record
            target = columns.setdefault(name, ([], [], [], [], []))
            target[0].append(row_id)
            target[1].append(int(y))
            target[2].append(int(repeat) if repeat else -1)
            target[3].append(int(fold) if fold else -1)
            target[4].append(float(probability))
        except ValueError as exc:
            raise PredictionsError(f"predictions table line {line}: {exc}") from exc
    return {
        name: prediction_set(ids, ys, ps, repeats, folds)
        for name, (ids, ys, repeats, folds, ps) in columns.items()
    }


def external_sites(sets: Mapping[str, PredictionSet]) -> list[str]:
    """The sites a table has ``site:<site>`` predictions for, in the order written."""
    return [name.removeprefix(SITE_PREFIX) for name in sets if name.startswith(SITE_PREFIX)]


def maskings(sets: Mapping[str, PredictionSet]) -> list[str]:
    return [name.removeprefix(MASKED_PREFIX) for name in sets if name.startswith(MASKED_PREFIX)]
