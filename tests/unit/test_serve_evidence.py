"""Live evidence inside the app, over small synthetic models: no registry, no network.

The shadow's challenger, the prediction log, X-Request-ID and the drift gauges, through
FastAPI's test client; the challenger choice and the background queue as plain functions.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from conftest import family_state, version_info
from heartml.data.profile import build_profile
from heartml.data.schema import EXAMPLE_PATIENT, FEATURE_NAMES, synthetic_rows
from heartml.model.convert import engine_for_pipeline
from heartml.model.engine import Engine
from heartml.serve.app import create_app
from heartml.serve.frames import ABS_DIFF_BUCKETS
from heartml.serve.holder import LoadedModel, ModelRef
from heartml.serve.livemetrics import add_observations
from heartml.serve.predlog import Answered, records_of, request_id
from heartml.serve.shadow import choose_challenger
from heartml.serve.shadow_process import bucket_counts
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
        deadline = time.monotonic() + 60  # SCHED_IDLE: a busy machine may hold it back
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


def test_bucket_counts_expose_what_observe_does_value_by_value() -> None:
    """The shadow process's differences, counted per bucket there and added here, make the
    histogram ``observe`` builds, bucket bounds included (a value on a bound counts in it)."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    values = np.concatenate(
        [np.random.default_rng(7).uniform(0, 1.2, 500), np.array(ABS_DIFF_BUCKETS), [0.0]]
    )
    exposed = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("diff", "d", buckets=ABS_DIFF_BUCKETS, registry=registry)
        if bulk:
            for part in (values[:300], values[300:], values[:0]):
                add_observations(histogram, bucket_counts(part).tolist(), float(part.sum()))
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


def test_answers_read_back_from_the_pipe_are_those_written() -> None:
    """Messages cut anywhere by the pipe come back whole, values exact; parts of a large
    request keep their rows' positions."""
    from heartml.serve.frames import (
        LAST,
        SHADOW,
        MessageReader,
        Pending,
        answers_message,
        merge,
        model_message,
        read_answers,
        read_model,
    )

    rows = synthetic_rows(7, seed=4, missing=0.3)
    batch = [
        Pending(b"a", 1.25, 10, 0, 0, SHADOW | LAST, rows[:2], [0, 1], [0.1, 0.9]),
        Pending(
            b"bb-2", 2.5, -1, 1, 30, LAST, rows[2:], [1, 1, 0, 0, 1], [0.6, 0.7, 0.2, 0.3, 0.8]
        ),
    ]
    stream = model_message(1, "heart-disease-knn", 2, np.arange(13.0)) + answers_message(batch)
    stream += answers_message(batch[:1])
    reader = MessageReader()
    messages = []
    for start in range(0, len(stream), 37):  # arbitrary pieces
        messages += [(kind, bytes(m)) for kind, m in reader.feed(stream[start : start + 37])]
    assert reader.partial == 0 and [k for k, _ in messages] == [1, 2, 2]
    model_id, info = read_model(memoryview(messages[0][1]))
    assert (model_id, info.name, info.version) == (1, "heart-disease-knn", 2)
    assert info.impute_values is not None and info.impute_values.tolist() == list(range(13))
    got = merge([read_answers(memoryview(m)) for _, m in messages[1:]])
    assert got.request_ids == ["a", "bb-2", "a"]
    np.testing.assert_array_equal(got.rows, np.concatenate([rows, rows[:2]]))
    assert got.probabilities.tolist() == [0.1, 0.9, 0.6, 0.7, 0.2, 0.3, 0.8, 0.1, 0.9]
    assert got.classes.tolist() == [0, 1, 1, 1, 0, 0, 1, 0, 1]
    assert got.seq.tolist() == [10, -1, 10] and got.time.tolist() == [1.25, 2.5, 1.25]
    assert got.first_row.tolist() == [0, 30, 0] and got.counts.tolist() == [2, 5, 2]
    assert got.model.tolist() == [0, 1, 0] and got.flags.tolist() == [3, 2, 3]


def shadow_process_of(client: TestClient) -> int:
    pid = client.get("/model").json()["shadow"]["process"]["pid"]
    assert isinstance(pid, int)
    return pid


def test_the_shadow_process_runs_below_the_server(engines: dict[int, Engine]) -> None:
    """Its scoring thread is SCHED_IDLE: the kernel runs it only when the server's CPU would
    idle. Its main thread, which does the drain at shutdown, keeps the normal policy."""
    with app_with(engines) as client:
        client.app.state.holder.check()  # type: ignore[attr-defined]
        pid = shadow_process_of(client)

        def policies() -> list[int]:
            tasks = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
            return sorted(os.sched_getscheduler(t) for t in tasks if t != pid)

        # The process may still be starting (importing) when the server names it.
        deadline = time.monotonic() + 30
        while os.SCHED_IDLE not in policies():
            assert time.monotonic() < deadline, policies()
            time.sleep(0.05)
        assert pid != os.getpid() and os.sched_getscheduler(pid) == os.SCHED_OTHER


def test_a_shadow_process_behind_costs_drops_never_waiting(engines: dict[int, Engine]) -> None:
    """A stopped shadow process: its pipe fills, every answer after that is dropped and
    counted, none waits; what was given before is scored once it runs again."""
    row = np.array([synthetic_rows(1, seed=2, missing=0.0)[0]])
    with app_with(engines, background_queue_size=100) as client:  # the smallest pipe: 64 KiB
        app = client.app
        app.state.holder.check()  # type: ignore[attr-defined]
        evidence = app.state.evidence  # type: ignore[attr-defined]
        served = app.state.holder.current  # type: ignore[attr-defined]
        pid = shadow_process_of(client)
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            for i in range(2000):  # ~340 KiB of answers
                evidence.record(f"r{i}", served, row, [0], [0.25])
            spent = time.perf_counter() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        feed = evidence.feed
        given, dropped = feed.sent["shadow"], feed.dropped["shadow"]
        assert given + dropped == 2000 and dropped > 1000 and given > 300
        assert spent < 0.5, spent  # ~10 us an answer here, full pipe or not
        metrics = client.get("/metrics").text
        assert metric(metrics, 'heartml_background_dropped_total{queue="shadow"}') == dropped
        assert client.get("/model").json()["shadow"]["dropped"] == dropped
        deadline = time.monotonic() + 60
        while feed.pending("shadow"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert metric(client.get("/metrics").text, "heartml_shadow_predictions_total") == given


def test_a_repeated_challenger_keeps_the_process_counts(engines: dict[int, Engine]) -> None:
    """The server re-states its challenger on every registry check, with the counts it has
    read so far: those may be behind the process's, which go on from their own."""
    from heartml.serve.frames import SHADOW, AnswerBatch, Challenger, ModelInfo, PairStats
    from heartml.serve.shadow_process import ShadowWorker

    rows = synthetic_rows(40, seed=5, missing=0.0)
    ours = np.asarray(engines[1].predict_proba(rows)[:, 1], dtype=np.float64)
    batch = AnswerBatch(
        time=np.zeros(40),
        seq=np.arange(40, dtype=np.int64),
        rows=rows,
        probabilities=ours,
        model=np.ones(40, dtype=np.uint32),
        first_row=np.arange(40, dtype=np.uint32),
        counts=np.ones(40, dtype=np.uint16),
        flags=np.full(40, SHADOW, dtype=np.uint8),
        classes=(ours > 0.5).astype(np.uint8),
        request_ids=[f"r{i}" for i in range(40)],
    )
    worker = ShadowWorker(None)
    worker.declare(1, ModelInfo("heart-disease-test", 1, None))
    behind = PairStats("heart-disease-test/1", "heart-disease-test/2", "2026-12-04T00:00:00Z")
    worker.use(Challenger("heart-disease-test/2", engines[2], behind))
    worker.handle(batch)
    worker.use(Challenger("heart-disease-test/2", engines[2], behind))  # a periodic check
    worker.handle(batch)
    assert worker.pair is not None and worker.pair.rows == 80
    # A new pair (a new champion, say) starts from what it is given.
    fresh = PairStats("heart-disease-test/3", "heart-disease-test/2", "2026-12-04T01:00:00Z")
    worker.use(Challenger("heart-disease-test/2", engines[2], fresh))
    assert worker.pair == fresh


def test_a_stop_signal_while_the_shadow_process_starts_loses_nothing(
    engines: dict[int, Engine], tmp_path: Path
) -> None:
    """A stop sent to every process of the server (``kill -TERM -PGID``, systemd's stop) can
    reach the shadow process while it still imports: it is started with SIGTERM and SIGINT
    blocked, then ignores them; the answers given to it are still logged at shutdown."""
    log_dir = tmp_path / "log"
    with app_with(engines, prediction_log_dir=log_dir, shadow="off") as client:
        feed = client.app.state.evidence.feed  # type: ignore[attr-defined]
        assert feed.running
        pid = feed.pid
        # At once: the process has not got past its imports yet.
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        client.app.state.holder.check()  # type: ignore[attr-defined]
        for record in patients(3):
            assert client.post("/predict", json=record).status_code == 200
        time.sleep(0.5)
        assert Path(f"/proc/{pid}").exists()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "Z", "the shadow process died of the signal"
    files = sorted(log_dir.glob("predictions-*.jsonl"))
    lines = [ln for f in files for ln in f.read_text().splitlines()]
    assert len(lines) == 3
