"""The experiment YAML: parsed strictly, every error one line."""

from pathlib import Path

import pytest

from heartml.training.experiment import ConfigError, load_experiment

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_the_shipped_experiment_parses_with_the_documented_defaults() -> None:
    config = load_experiment(REPO / "configs" / "experiment.yaml")
    assert config.version >= 1
    assert config.split.test_size == 0.2
    assert config.split.stratify is True
    assert config.split.seed == 42
    assert config.cv.folds == 5
    assert config.cv.repeats == 5
    assert config.cv.test_fraction == 0.25
    assert config.selection.primary_metric == "cv_roc_auc_mean"
    assert config.selection.tie_break == "holdout_roc_auc"
    assert config.validation.internal is True
    assert config.validation.leave_one_site_out is False
    assert {"logistic_regression", "random_forest", "gradient_boosting", "svm", "knn"} <= set(
        config.candidates
    )


def test_the_pooled_experiment_trains_on_every_site_and_leaves_each_out() -> None:
    from heartml.data.download import ALL_SITES

    shipped = load_experiment(REPO / "configs" / "experiment.yaml")
    pooled = load_experiment(REPO / "configs" / "experiment-pooled.yaml")
    assert pooled.data.sites == ALL_SITES
    assert pooled.validation.leave_one_site_out is True
    # Everything else is the shipped experiment's: the same candidates, split and CV.
    assert pooled.candidates == shipped.candidates
    assert (pooled.split, pooled.cv, pooled.selection) == (
        shipped.split,
        shipped.cv,
        shipped.selection,
    )


def test_config_hash_changes_with_a_value(tmp_path: Path) -> None:
    a = load_experiment(write(tmp_path, "version: 1\ncandidates: {knn: {n_neighbors: 5}}\n"))
    b = load_experiment(write(tmp_path, "version: 1\ncandidates: {knn: {n_neighbors: 7}}\n"))
    assert a.config_hash != b.config_hash
    assert (
        a.config_hash
        == load_experiment(
            write(tmp_path, "version: 1\ncandidates: {knn: {n_neighbors: 5}}\n")
        ).config_hash
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version: 1\ncandidates: [oops\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
        ("version: 1\ncandidates: {deep_net: {}}\n", "unknown candidate"),
        ("version: 1\ncandidates: {knn: {}}\nsplit: {test_size: 1.5}\n", "split.test_size"),
        ("version: 1\ncandidates: {knn: {}}\ncolour: blue\n", "colour"),
        ("candidates: {knn: {}}\n", "version"),
        ("version: 1\ncandidates: {}\n", "candidates"),
        ("version: 1\ncandidates: {knn: {}}\ndata: {sites: [mars]}\n", "data.sites"),
        (
            "version: 1\ncandidates: {knn: {}}\nselection: {primary_metric: speed}\n",
            "primary_metric",
        ),
        # Only ROC-AUCs may be selected on: the roc_auc tag carries the selection score.
        (
            "version: 1\ncandidates: {knn: {}}\nselection: {primary_metric: accuracy}\n",
            "primary_metric",
        ),
        ("version: 1\ncandidates: {knn: {}}\ncv: {repeats: 0}\n", "cv.repeats"),
        (
            "version: 1\ncandidates: {knn: {}}\nvalidation: {leave_one_site_out: true}\n",
            "leave_one_site_out needs at least two data.sites",
        ),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(write(tmp_path, text))
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_experiment(tmp_path / "nope.yaml")
