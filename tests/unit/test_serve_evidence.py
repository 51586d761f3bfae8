"""Live evidence inside the app, over small synthetic models: no registry, no network.

The shadow's challenger, the prediction log, X-Request-ID and the drift gauges, through
FastAPI's test client; the challenger choice and the background queue as plain functions.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from conftest import family_state, version_info
from heartml.data.profile import build_profile
from heartml.data.schema import EXAMPLE_PATIENT, FEATURE_NAMES, synthetic_rows
from heartml.model.convert import engine_for_pipeline
from heartml.model.engine import Engine
from heartml.serve.app import create_app
from heartml.serve.background import NICENESS, BackgroundQueue
from heartml.serve.holder import LoadedModel, ModelRef
from heartml.serve.livemetrics import ABS_DIFF_BUCKETS, observe_many
from heartml.serve.predlog import Answered, records_of, request_id
from heartml.serve.shadow import CpuSlicer, choose_challenger
from heartml.settings import Settings, parse_shadow_setting
from heartml.training.candidates import build_candidate

PROFILE_ROWS = synthetic_rows(400, seed=11, missing=0.0)


class OneModel:
    """The champion heart-disease-test/1, with the reference profile of PROFILE_ROWS."""

    kind: Literal["registry", "directory"] = "registry"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> str:
        return "one test model"

    def resolve(self) -> ModelRef:
        return ref(1)

    def resolve_sites(self) -> dict[str, ModelRef]:
        return {}

    def load(self, _: ModelRef) -> LoadedModel:
        return LoadedModel(self.engine, build_profile(PROFILE_ROWS))


def ref(version: int) -> ModelRef:
    return ModelRef(
        name="heart-disease-test",
        version=version,
        run_id=f"run{version}",
        roc_auc=0.9,
        model_type="logistic_regression",
        promoted_at=None,
        source="registry",
        uri=f"models:/heart-disease-test/{version}",
    )


@pytest.fixture(scope="module")
def engines() -> dict[int, Engine]:
    out = {}
    for version, feature in ((1, 9), (2, 0)):  # the champion reads oldpeak, the other age
        x = synthetic_rows(150, seed=version)
        target = (np.nan_to_num(x[:, feature]) > np.nanmedian(x[:, feature])).astype(np.int64)
        pipeline = build_candidate("logistic_regression", {"max_iter": 500}, 42).fit(
            pd.DataFrame(x, columns=list(FEATURE_NAMES)), target
        )
        out[version] = engine_for_pipeline(pipeline, synthetic_rows(30))
    return out


def app_with(engines: dict[int, Engine], **settings: Any) -> TestClient:
    app = create_app(Settings(**settings), source=OneModel(engines[1]), follow=False)
    shadow = app.state.evidence.shadow
    shadow.state_reader = lambda: family_state(
        version_info("test", 1, champion=True), version_info("test", 2, best=True)
    )
    shadow.loader = lambda r: LoadedModel(engines[r.version])
    return TestClient(app)


def patients(count: int, seed: int = 3) -> list[dict[str, Any]]:
    rows = synthetic_rows(count, seed=seed, missing=0.0)
    return [
        {
            n: (int(v) if float(v).is_integer() else float(v))
            for n, v in zip(FEATURE_NAMES, r, strict=True)
        }
        for r in rows
    ]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_shadow_setting_values() -> None:
    assert parse_shadow_setting(" AUTO ") == "auto"
    assert parse_shadow_setting("off") == "off"
    assert parse_shadow_setting("heart-disease-svm/3") == ("heart-disease-svm", 3)
    for bad in ("svm", "svm/0", "svm/x", "/3", ""):
        with pytest.raises(ValueError, match="HEARTML_SHADOW"):
            parse_shadow_setting(bad)
    with pytest.raises(ValueError, match="HEARTML_SHADOW"):
        Settings(shadow="maybe")


def test_the_challenger_is_the_best_tagged_version_unless_it_is_the_champion() -> None:
    champion = version_info("svm", 1, champion=True)
    best = version_info("knn", 2, best=True)
    state = family_state(champion, best, version_info("knn", 1))
    chosen, why = choose_challenger(state, "auto", ("heart-disease-svm", 1))
    assert chosen is best and "best_model=true" in why
    chosen, why = choose_challenger(state, "auto", ("heart-disease-knn", 2))
    assert chosen is None and "is the champion" in why
    chosen, _ = choose_challenger(state, "heart-disease-knn/1", ("heart-disease-svm", 1))
    assert chosen is not None and chosen.ref == "heart-disease-knn/1"
    chosen, why = choose_challenger(state, "heart-disease-knn/9", None)
    assert chosen is None and "no version 9" in why
    assert choose_challenger(state, "off", None)[0] is None
    assert choose_challenger(family_state(champion), "auto", None)[0] is None


def test_request_ids_keep_a_sane_client_value_only() -> None:
    assert request_id(b"abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in (None, b"", b"has space", b"new\nline", b"x" * 200, "é".encode(), b"-lead"):
        generated = request_id(bad)
        assert len(generated) == 32 and generated.encode() != bad


class HeldQueue:
    """A queue whose worker handles nothing until ``release`` is set; what it was given."""

    def __init__(self, maxsize: int) -> None:
        self.release = threading.Event()
        self.handled: list[int] = []
        self.drops: list[int] = []
        self.queue: BackgroundQueue[int] = BackgroundQueue(
            "test", self._handle, maxsize, self.drops.append
        )

    def _handle(self, batch: list[int]) -> None:
        self.release.wait(5)
        self.handled.extend(batch)


def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    held = HeldQueue(2)
    q = held.queue
    q.start()
    started = time.perf_counter()
    accepted = [q.offer(i) for i in range(50)]
    assert time.perf_counter() - started < 0.05
    assert accepted.count(False) == len(held.drops) == q.dropped >= 45
    held.release.set()
    assert q.close(5)
    assert sorted(held.handled) == [i for i, ok in enumerate(accepted) if ok]


def test_a_batch_offer_keeps_what_fits_in_order_and_counts_the_rest() -> None:
    held = HeldQueue(5)
    q = held.queue
    assert q.offer_many([0, 1, 2]) == 3 and q.pending == 3
    assert q.offer_many([3, 4, 5, 6]) == 2  # room for two
    assert held.drops == [2] and q.dropped == 2 and q.offer_many([7]) == 0
    q.start()
    held.release.set()
    assert q.close(5)
    assert held.handled == [0, 1, 2, 3, 4]


def test_the_worker_thread_yields_the_cpu_to_the_server() -> None:
    """The worker runs NICENESS nicer than the thread that started it (Linux, per thread)."""
    niceness: list[int] = []
    q: BackgroundQueue[int] = BackgroundQueue(
        "test",
        lambda _: niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
        5,
        lambda _: None,
    )
    q.start()
    q.offer(1)
    assert q.close(5)
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert niceness == [min(19, ours + NICENESS)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ours  # ours unchanged


def test_a_slow_challenger_scores_in_slices_of_cpu(engines: dict[int, Engine]) -> None:
    """Slices of about SLICE_S each, learnt from the last call; the same probabilities."""

    class Slow:
        name: Literal["onnx"] = "onnx"

        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.calls: list[int] = []

        def predict_proba(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
            self.calls.append(len(rows))
            until = time.thread_time() + len(rows) * 50e-6  # 50 us of CPU a row: a slow model
            while time.thread_time() < until:
                pass
            return np.asarray(self.engine.predict_proba(rows), dtype=np.float64)

    rows = synthetic_rows(300, seed=9, missing=0.1)
    slow, slicer = Slow(engines[2]), CpuSlicer()
    sliced = slicer.predict_proba(slow, rows)
    # Float32 probabilities: a row scored in a smaller call may differ in its last bits.
    np.testing.assert_allclose(sliced, engines[2].predict_proba(rows), rtol=0, atol=1e-6)
    assert sum(slow.calls) == 300 and slow.calls[0] == 32
    assert all(CpuSlicer.MIN_ROWS <= n <= CpuSlicer.SLICE_S / 50e-6 for n in slow.calls[1:-1])
    fast = CpuSlicer()
    fast.predict_proba(engines[2], rows)
    assert fast.rows_per_slice > slicer.rows_per_slice  # a fast model: bigger slices
    assert slicer.predict_proba(slow, rows[:0]).shape == (0, 2)


def test_log_records_of_a_batch_are_each_requests_own(tmp_path: Path) -> None:
    """Records built for a whole batch at once: each row's values as received (null when not
    given, whole numbers as integers) and as its own model imputed them."""
    rows = synthetic_rows(6, seed=5, missing=0.3)
    rows[0, FEATURE_NAMES.index("oldpeak")] = 2.5
    first, second = build_profile(PROFILE_ROWS), build_profile(PROFILE_ROWS[:50])
    batch = [
        Answered("a", 1_764_547_200.25, "m", 1, rows[:2], [0, 1], [0.1, 0.9], first.impute_values),
        Answered(
            "b",
            1_764_547_201.5,
            "m",
            2,
            rows[2:5],
            [1, 1, 0],
            [0.6, 0.7, 0.2],
            second.impute_values,
            "m/3",
            [0.5, 0.8, 0.3],
        ),
        Answered("c", 1_764_547_202.0, "m", 1, rows[5:], [0], [0.4], None),
    ]
    records = records_of(batch, [10, 20, 30])
    assert [(r["request_id"], r["row"], r["seq"]) for r in records] == [
        ("a", 0, 10),
        ("a", 1, 11),
        ("b", 0, 20),
        ("b", 1, 21),
        ("b", 2, 22),
        ("c", 0, 30),
    ]
    assert records[0]["time"] == "2025-12-01T00:00:00.250Z"
    assert records[0]["features"]["oldpeak"] == 2.5
    owners = [a for a in batch for _ in range(len(a.rows))]
    for record, row, owner in zip(records, rows, owners, strict=True):
        imputes = owner.impute_values
        for i, name in enumerate(FEATURE_NAMES):
            given, seen = record["features"][name], record["imputed_features"][name]
            if np.isnan(row[i]):
                assert given is None
                assert seen == (None if imputes is None else imputes[i])
            else:
                assert given == seen == row[i]
                assert isinstance(given, int) == float(row[i]).is_integer()
        assert ("shadow_model" in record) == (owner.shadow_model is not None)
    assert [r["shadow_probability"] for r in records[2:5]] == [0.5, 0.8, 0.3]
    assert any(r["features"][n] is None for r in records for n in FEATURE_NAMES)


def test_shadow_scores_every_answer_and_answers_are_the_champions(
    engines: dict[int, Engine], tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    rows = patients(60)
    with app_with(engines, prediction_log_dir=log_dir, drift_window=50) as client:
        client.app.state.holder.check()  # type: ignore[attr-defined]
        answers = [
            client.post("/predict", json=p, headers={"X-Request-ID": f"r{i}"})
            for i, p in enumerate(rows)
        ]
        batch = client.post(
            "/predict/batch", json={"instances": rows[:5]}, headers={"X-Request-ID": "b"}
        )
        assert batch.headers["x-request-id"] == "b"
        assert all(a.headers["x-request-id"] == f"r{i}" for i, a in enumerate(answers))
        assert client.get("/health").headers["x-request-id"]  # every answer has one
        assert {a.json()["model_version"] for a in answers} == {1}
        deadline = time.monotonic() + 10
        while client.get("/model").json()["shadow"]["agreement"]["rows"] < 65:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shadow = client.get("/model").json()["shadow"]
        metrics = client.get("/metrics").text
    # What the two models give offline on the same rows.
    x = np.array([[p[n] for n in FEATURE_NAMES] for p in rows + rows[:5]], dtype=np.float64)
    ours, theirs = engines[1].predict_proba(x), engines[2].predict_proba(x)
    disagreements = int(((ours[:, 1] > ours[:, 0]) != (theirs[:, 1] > theirs[:, 0])).sum())
    assert shadow["challenger"]["version"] == 2 and shadow["setting"] == "auto"
    assert shadow["agreement"]["disagreements"] == disagreements > 0
    assert metric(metrics, "heartml_shadow_predictions_total") == 65
    assert metric(metrics, "heartml_shadow_disagreements_total") == disagreements
    assert metric(metrics, "heartml_shadow_abs_diff_count") == 65
    assert metric(metrics, 'heartml_shadow_info{name="heart-disease-test",version="2"}') == 1
    assert 'heartml_feature_psi{feature="age"}' in metrics  # the window (50) is full

    # The log: one record per row, 0600, features as received and the shadow's probability.
    files = sorted(log_dir.glob("predictions-*.jsonl"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(records) == 65
    assert [r["seq"] for r in records] == list(range(65))
    by_id = {(r["request_id"], r["row"]): r for r in records}
    first = by_id[("r0", 0)]
    assert first["features"] == rows[0] == first["imputed_features"]
    assert first["probability"] == answers[0].json()["probability"]
    assert first["shadow_model"] == "heart-disease-test/2"
    assert first["shadow_probability"] == pytest.approx(float(theirs[0, 1]))
    assert by_id[("b", 4)]["features"] == rows[4]
    assert (log_dir / "reference-heart-disease-test-v1.json").is_file()


def test_no_shadow_and_no_log_unless_asked(engines: dict[int, Engine], tmp_path: Path) -> None:
    with app_with(engines, shadow="off") as client:
        client.app.state.holder.check()  # type: ignore[attr-defined]
        assert client.post("/predict", json=EXAMPLE_PATIENT).status_code == 200
        info = client.get("/model").json()
        metrics = client.get("/metrics").text
    assert info["shadow"]["challenger"] is None and "off" in info["shadow"]["reason"]
    assert metric(metrics, "heartml_shadow_predictions_total") == 0
    assert metric(metrics, 'heartml_background_dropped_total{queue="shadow"}') == 0
    assert metric(metrics, 'heartml_feature_missing_ratio{feature="ca"}') == 0
    assert "heartml_feature_psi{" not in metrics  # one row is not enough for a PSI
    assert info["drift"]["rows"] == 1 and info["drift"]["window"] == 500
    assert not list(tmp_path.iterdir())


def test_observe_many_exposes_what_observe_does_value_by_value() -> None:
    """The bulk observation of the shadow's differences is the histogram ``observe`` builds,
    bucket bounds included (a value on a bound counts in that bucket)."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    values = np.concatenate(
        [np.random.default_rng(7).uniform(0, 1.2, 500), np.array(ABS_DIFF_BUCKETS), [0.0]]
    )
    exposed = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("diff", "d", buckets=ABS_DIFF_BUCKETS, registry=registry)
        if bulk:
            observe_many(histogram, values[:300])
            observe_many(histogram, values[300:])
            observe_many(histogram, values[:0])
        else:
            for value in values.tolist():
                histogram.observe(value)
        exposed.append(
            [
                line
                for line in generate_latest(registry).decode().splitlines()
                if "_created" not in line
            ]
        )
    sums = [
        float(next(x for x in lines if x.startswith("diff_sum")).split()[1]) for lines in exposed
    ]
    assert sums[0] == pytest.approx(sums[1], rel=1e-12)  # the same values, added in another order
    counts = [[x for x in lines if not x.startswith("diff_sum")] for lines in exposed]
    assert counts[0] == counts[1]
