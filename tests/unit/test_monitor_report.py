"""`heartml monitor` over a log written by the server's own writer: plots, numbers, errors."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from heartml.cli import app
from heartml.data.profile import build_profile
from heartml.data.schema import synthetic_rows
from heartml.evidence.stats import roc_auc_interval
from heartml.monitoring.log import read_labels, read_log
from heartml.monitoring.report import render_report
from heartml.monitoring.summary import summarise
from heartml.serve.predlog import (
    Answered,
    PredictionLog,
    SeqNumbers,
    log_prefix,
    write_reference,
)

ROWS = 600


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 answered rows (the last 300 shifted in age), shadowed, and their outcomes."""
    root = tmp_path_factory.mktemp("monitor")
    rng = np.random.default_rng(0)
    training = synthetic_rows(400, seed=1, missing=0.0)
    rows = synthetic_rows(ROWS, seed=2, missing=0.02)
    rows[300:, 0] = np.clip(rows[300:, 0] + 20, 18, 100)
    champion = rng.uniform(0.05, 0.95, ROWS)
    shadow = np.clip(champion + rng.normal(0, 0.1, ROWS), 0.01, 0.99)
    outcome = (rng.uniform(size=ROWS) < champion).astype(int)
    log = PredictionLog(root / "log", 4096, log_prefix())
    log.start()
    write_reference(root / "log", "heart-disease-svm", 3, build_profile(training))
    for i in range(ROWS):
        log.write(
            [
                Answered(
                    request_id=f"id{i}",
                    time=time.time() + i,
                    model_name="heart-disease-svm",
                    model_version=3,
                    rows=rows[i : i + 1],
                    classes=[int(champion[i] > 0.5)],
                    probabilities=[float(champion[i])],
                    impute_values=build_profile(training).impute_values,
                    shadow_model="heart-disease-knn/2",
                    shadow_probabilities=[float(shadow[i])],
                )
            ]
        )
    log.close()
    lines = ["request_id,outcome"] + [f"id{i},{outcome[i]}" for i in range(ROWS)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    np.save(root / "expected.npy", np.stack([champion, shadow, outcome]))
    return root


def test_the_report_has_every_plot_and_the_live_numbers(log_dir: Path) -> None:
    out = log_dir / "report.html"
    result = CliRunner().invoke(
        app,
        ["monitor", "--log", str(log_dir / "log"), "--labels", str(log_dir / "labels.csv"),
         "--out", str(out), "--window", "100"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert len(re.findall(r"<img src='data:image/png;base64,", page)) == 4
    assert "heart-disease-knn/2" in page and "heart-disease-svm/3" in page
    champion, shadow, outcome = np.load(log_dir / "expected.npy")
    for probability in (champion, shadow):
        assert str(roc_auc_interval(outcome, probability)) in page

    data = read_log(log_dir / "log")
    assert data.files > 1 and data.lost == 0  # rotated at 4 KiB, nothing missing
    summary = summarise(data, read_labels(log_dir / "labels.csv"), window=100)
    assert len(summary.psi) == 6
    assert summary.psi["age"].iloc[:3].max() < 0.2 < summary.psi["age"].iloc[3:].min()
    assert [s.rows for s in summary.scores] == [ROWS, ROWS]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--log", "/nonexistent"], "is not a directory"),
        (["--log", "{empty}"], "holds no prediction log"),
        (["--log", "{log}", "--labels", "/nonexistent.csv"], "cannot read labels"),
        (["--log", "{log}", "--labels", "{bad_labels}"], "no column outcome"),
        (["--log", "{broken}"], "predictions-x-1-0001.jsonl:2: not a prediction record"),
    ],
)
def test_bad_input_is_one_line(
    log_dir: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("id,label\nid1,1\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    good = next((log_dir / "log").glob("predictions-*.jsonl")).read_text().splitlines()[0]
    (broken / "predictions-x-1-0001.jsonl").write_text(good + "\n{not json\n")
    values = {
        "empty": tmp_path / "empty",
        "log": log_dir / "log",
        "bad_labels": tmp_path / "bad.csv",
        "broken": broken,
    }
    filled = [a.format(**values) for a in args]
    result = CliRunner().invoke(app, ["monitor", *filled, "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert "Traceback" not in result.output


def test_a_record_dropped_on_the_way_to_the_disk_is_counted_lost(tmp_path: Path) -> None:
    """Numbers are given when the request is answered: the record that never reached the
    disk (here: never offered, as a full queue would drop it) is a missing number, even when
    the records around it are written out of order."""
    rows = np.asarray(synthetic_rows(4, seed=3), dtype=np.float64)
    log = PredictionLog(tmp_path / "log", 1 << 20, log_prefix())
    log.start()
    numbers = SeqNumbers()
    answered = [
        Answered(
            request_id=f"id{i}",
            time=time.time(),
            model_name="heart-disease-svm",
            model_version=3,
            rows=rows[i : i + 1],
            classes=[0],
            probabilities=[0.2],
            impute_values=None,
            first_seq=numbers.take(1),
        )
        for i in range(4)
    ]
    for i in (0, 3, 2):  # 1 is dropped; 3 overtakes 2
        log.write([answered[i]])
    log.close()
    data = read_log(tmp_path / "log")
    assert len(data.records) == 3
    assert data.lost == 1


def test_values_read_from_the_log_are_escaped_in_the_page(tmp_path: Path) -> None:
    """The page is autoescaped: a model name in the log is shown as text, never as markup."""
    name = "<script>alert(1)</script>"
    rows = np.asarray(synthetic_rows(20, seed=4), dtype=np.float64)
    log = PredictionLog(tmp_path / "log", 1 << 20, log_prefix())
    log.start()
    for i in range(20):
        log.write(
            [
                Answered(
                    request_id=f"id{i}",
                    time=time.time() + i,
                    model_name=name,
                    model_version=1,
                    rows=rows[i : i + 1],
                    classes=[0],
                    probabilities=[0.1 + 0.04 * i],
                    impute_values=None,
                )
            ]
        )
    log.close()
    page = render_report(summarise(read_log(tmp_path / "log")))
    assert "<script" not in page
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;/1: 20</td>" in page
