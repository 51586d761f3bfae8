"""How close the Shapley estimate is, for each candidate of the family (no target: the figures the
README's *Explanations* quotes, and the reason for its number of orders).

Two comparisons, on Cleveland's held-out rows (the experiment's split):

* **against shap on the same background**: ``shap.explainers.Exact`` over the 13 fields with the
  model's stored background (the exact values the estimate stands for), on 20 rows (3 for the
  k-NN, whose graph is slow on shap's 2^13 coalitions × 16 rows), for the stored number of
  orders and for 40 orders (the estimate converging on shap's values);
* **against a larger background**: the exact values over 64 training rows, the nearer a
  population's interventional Shapley values, on 8 rows; the estimate for orders × background
  rows of 4 × 16, 2 × 16 and 2 × 24, each over 5 background draws. This says which of the two
  budgets, orders or background rows, the error comes from.

Root-mean-square and largest error, in log-odds.

    python bench/explain_accuracy.py [--rows 20]     (after make pipeline; shap: the dev extra)

The store is MLFLOW_TRACKING_URI (default sqlite:///mlflow.db).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

SAME_BACKGROUND_ORDERS = 40
LARGE_BACKGROUND = 64
BUDGETS = ((4, 16), (2, 16), (2, 24))
DRAWS = 5


def exact(log_odds: Any, background: np.ndarray, rows: np.ndarray) -> np.ndarray:
    import shap

    masker = shap.maskers.Independent(background, max_samples=len(background))
    return np.asarray(shap.explainers.Exact(log_odds, masker)(rows, silent=True).values)


def errors(estimate: np.ndarray, truth: np.ndarray) -> str:
    difference = estimate - truth
    return f"{np.sqrt(np.mean(difference**2)):.3f} / {np.max(np.abs(difference)):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20, help="held-out rows against shap")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import mlflow.artifacts

    from heartml.data.validate import load_dataset
    from heartml.evidence.stats import logit
    from heartml.model.engine import load_engine
    from heartml.model.explain import ShapleyExplainer, StoredExplainer, find_explainer_files
    from heartml.model.explainer_files import background_rows
    from heartml.registry import configure_mlflow, read_family
    from heartml.settings import Settings
    from heartml.training.experiment import load_experiment
    from heartml.training.fit import labelled_rows, split_data

    settings = Settings()
    configure_mlflow(settings)
    split = split_data(
        labelled_rows(load_dataset(settings).frame), load_experiment(settings.experiment_config)
    )
    held_out = split.test.features.to_numpy(dtype=np.float64)
    training = split.train.features.to_numpy(dtype=np.float64)
    latest: dict[str, Any] = {}
    for version in read_family(settings).versions:
        kind = str(version.tags.get("model_type", version.name))
        if version.adapted_for is None and (
            kind not in latest or version.version > latest[kind].version
        ):
            latest[kind] = version
    for kind, version in sorted(latest.items()):
        directory = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.uri))
        files = find_explainer_files(directory)
        if files is None:
            continue
        stored = StoredExplainer.load(*files)
        if stored.kind != "shapley" or stored.background is None:
            continue
        engine = load_engine(directory)

        def log_odds(rows: np.ndarray, engine: Any = engine) -> np.ndarray:
            rows = np.ascontiguousarray(rows, dtype=np.float64)
            return logit(np.asarray(engine.predict_proba(rows))[:, 1])

        count = 3 if kind == "knn" else args.rows
        rows = held_out[:count]
        truth = exact(log_odds, stored.background, rows)
        shown = []
        for orders in (stored.permutations, SAME_BACKGROUND_ORDERS):
            estimate = ShapleyExplainer(engine, stored.background, stored.fill, orders)
            shown.append(f"{orders} orders {errors(estimate.explain(rows).contributions, truth)}")
        print(
            f"{kind} ({count} rows), against shap on the same {len(stored.background)} rows: "
            + ", ".join(shown)
            + " (rms / largest)"
        )
        rows = held_out[:8]
        large = exact(log_odds, background_rows(training, 7, LARGE_BACKGROUND), rows)
        shown = []
        for orders, size in BUDGETS:
            rms = []
            for draw in range(DRAWS):
                background = background_rows(training, 100 + draw, size)
                estimate = ShapleyExplainer(engine, background, stored.fill, orders)
                difference = estimate.explain(rows).contributions - large
                rms.append(float(np.sqrt(np.mean(difference**2))))
            shown.append(f"{orders} × {size}: {np.mean(rms):.3f}")
        scale = float(np.sqrt(np.mean(large**2)))
        print(
            f"{'':8s}against {LARGE_BACKGROUND} background rows (8 rows; values' rms {scale:.2f}), "
            f"rms over {DRAWS} draws: " + ", ".join(shown)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
