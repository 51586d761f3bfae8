"""`heartml score` over a real trained registry, as a real process: every UCI row scored as the
real API answers it (its 422 messages on the refused rows), the counts, the files appearing
whole or not at all, byte-identical reruns, site champions, and one-line errors."""

from __future__ import annotations

import math
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import uvicorn

from conftest import HEARTML, free_port, one_line_error, run_heartml, settings_env, wait_until
from heartml.data.download import ALL_SITES
from heartml.data.schema import FEATURE_NAMES, FEATURES, OPTIONAL_FEATURES
from heartml.data.validate import load_dataset
from heartml.registry import get_client, read_family
from heartml.serve.app import create_app
from heartml.settings import Settings

pytestmark = pytest.mark.slow

STAMP = "2026-01-31T02:00:00Z"


@contextmanager
def running(settings: Settings) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread of this process."""
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "uvicorn started")
    url = f"http://127.0.0.1:{config.port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200, 60, "ready")
        yield url
    finally:
        server.should_exit = True
        thread.join(15)


def uci_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every row of the four UCI files, cleaned as the data stage cleans them, as JSON."""
    frame = load_dataset(settings, ALL_SITES).frame
    rows = []
    for values in frame[list(FEATURE_NAMES)].to_numpy(dtype="float64"):
        record: dict[str, Any] = {}
        for feature, value in zip(FEATURES, values, strict=True):
            if not math.isnan(value):  # a missing value: the key is left out
                record[feature.name] = int(value) if feature.integer else float(value)
        rows.append(record)
    return rows


def as_table(records: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, Any] = {"id": pa.array([f"p{i + 1}" for i in range(len(records))])}
    for feature in FEATURES:  # float64 columns, as an extract with nulls often has them
        columns[feature.name] = pa.array([r.get(feature.name) for r in records], pa.float64())
    return pa.table(columns)


def summary_counts(stdout: str) -> tuple[int, int, int]:
    words = stdout.replace(",", "").split()
    return int(words[2]), int(words[5]), int(words[8])


def score(settings: Settings, *args: str, env: dict[str, str] | None = None) -> Any:
    result = run_heartml(settings, "score", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result


def test_every_uci_row_is_scored_or_refused_as_predict_answers(
    trained_settings: Settings, tmp_path: Path
) -> None:
    records = uci_rows(trained_settings)
    # A few broken rows the files may hold and JSON can say too.
    broken = [
        {**records[0], "cp": 0},
        {**records[0], "thal": 2, "age": 17},
        {**records[0], "age": 63.5},
        {k: v for k, v in records[0].items() if k != "thalach"},
    ]
    records += broken
    source = tmp_path / "cohort.parquet"
    pq.write_table(as_table(records), source)
    out = tmp_path / "scored.parquet"
    result = score(trained_settings, str(source), "--out", str(out), "--keep", "id", "--explain")
    scored = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    refusals: dict[int, list[tuple[str, str]]] = {}
    for line in pacsv.read_csv(tmp_path / "scored.rejects.csv").to_pylist():
        refusals.setdefault(line["row"], []).append((line["field"], line["message"]))

    champion = read_family(trained_settings).champion
    assert champion is not None
    with running(trained_settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        answered = [client.post("/predict?explain=true", json=record) for record in records]
    accepted = 0
    for number, (record, answer) in enumerate(zip(records, answered, strict=True), 1):
        row = scored.get(f"p{number}")
        if answer.status_code == 422:
            assert row is None
            expected = [(e["loc"][-1], e["msg"]) for e in answer.json()["detail"]]
            assert refusals[number] == expected, (number, record)
            continue
        assert answer.status_code == 200
        accepted += 1
        body = answer.json()
        assert row is not None and number not in refusals
        assert abs(row["probability"] - body["probability"]) <= 1e-6
        assert row["prediction"] == body["prediction"]
        assert row["imputed"] == ",".join(body["imputed"])
        assert (row["model_name"], row["model_version"]) == (champion.name, champion.version)
        assert row["site_adapted"] is False
        # --explain gives the API's explanation: base + contributions = log-odds.
        why = body["explanation"]
        assert abs(row["explanation_base"] - why["base"]) <= 1e-9
        assert abs(row["log_odds"] - why["log_odds"]) <= 1e-6
        for field, contribution in why["contributions"].items():
            assert abs(row[f"contribution_{field}"] - contribution) <= 1e-6, field
        total = row["explanation_base"] + sum(row[f"contribution_{f}"] for f in FEATURE_NAMES)
        assert abs(total - row["log_odds"]) <= 1e-9
    assert len(refusals) == len(records) - accepted >= len(broken)
    assert summary_counts(result.stdout) == (len(records), accepted, len(records) - accepted)
    assert set(OPTIONAL_FEATURES) <= {
        f for row in scored.values() for f in row["imputed"].split(",")
    }


def cohort(rows: int, seed: int = 0) -> pa.Table:
    """``rows`` patients drawn from the schema's ranges, a share of optional values absent."""
    from heartml.data.schema import synthetic_rows

    values = synthetic_rows(rows, seed=seed, missing=0.0)
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {"id": pa.array(np.arange(rows, dtype=np.int64))}
    for i, feature in enumerate(FEATURES):
        column = values[:, i]
        mask = rng.random(rows) < 0.1 if feature.optional else None
        columns[feature.name] = pa.array(column, pa.float64(), mask=mask)
    return pa.table(columns)


def test_a_rerun_writes_the_same_bytes_in_parquet_and_csv(
    trained_settings: Settings, tmp_path: Path
) -> None:
    table = cohort(100_000)
    # A few refused rows among them, in a directory of two files.
    ages = table.column("age").to_numpy().copy()
    ages[[5, 70_000]] = [10, 120]
    table = table.set_column(table.schema.get_field_index("age"), "age", pa.array(ages))
    source = tmp_path / "cohort"
    source.mkdir()
    pq.write_table(table.slice(0, 60_000), source / "part-0.parquet")
    pq.write_table(table.slice(60_000), source / "part-1.parquet")
    outputs = []
    for run in ("a", "b"):
        for suffix in ("parquet", "csv"):
            out = tmp_path / run / f"scored.{suffix}"
            out.parent.mkdir(exist_ok=True)
            result = score(
                trained_settings, str(source), "--out", str(out), "--keep", "id",
                "--scored-at", STAMP,
            )  # fmt: skip
            assert summary_counts(result.stdout) == (100_000, 99_998, 2)
            outputs.append(out)
    for first, second in zip(outputs[:2], outputs[2:], strict=True):
        assert first.read_bytes() == second.read_bytes()
        rejects = first.with_name(first.stem + ".rejects.csv")
        assert rejects.read_bytes() == second.with_name(second.stem + ".rejects.csv").read_bytes()
    lines = pacsv.read_csv(outputs[0].with_name("scored.rejects.csv")).to_pylist()
    assert [(r["row"], r["field"]) for r in lines] == [(6, "age"), (70_001, "age")]
    parquet, csv = pq.read_table(outputs[0]), pacsv.read_csv(outputs[1])
    assert parquet.column("id").to_pylist() == csv.column("id").to_pylist()
    assert 6 - 1 not in set(parquet.column("id").to_pylist())
    np.testing.assert_allclose(
        parquet.column("probability").to_numpy(), csv.column("probability").to_numpy(), atol=1e-12
    )
    assert {str(t) for t in parquet.column("scored_at").to_pylist()} == {
        "2026-01-31 02:00:00+00:00"
    }
    # A dictionary for the few-valued columns only: probabilities and ids are all distinct.
    group = pq.ParquetFile(outputs[0]).metadata.row_group(0)
    with_dictionary = {
        group.column(i).path_in_schema
        for i in range(group.num_columns)
        if group.column(i).has_dictionary_page
    }
    assert not {"probability", "id"} & with_dictionary
    assert {"imputed", "model_name", "prediction"} <= with_dictionary


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_run_killed_midway_leaves_no_file(
    trained_settings: Settings, tmp_path: Path, how: signal.Signals
) -> None:
    source = tmp_path / "in" / "big.parquet"
    source.parent.mkdir()
    big = cohort(100_000)
    with pq.ParquetWriter(source, big.schema) as writer:
        for _ in range(40):  # four million rows: several seconds of scoring
            writer.write_table(big)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process = subprocess.Popen(
        [*HEARTML, "score", str(source), "--out", str(out_dir / "scored.parquet")],
        env=settings_env(trained_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def writing() -> bool:
        # The output is open (unnamed, in the output directory) and has grown: mid-run.
        for fd in Path(f"/proc/{process.pid}/fd").iterdir():
            with_name = str(fd.readlink()) if fd.is_symlink() else ""
            if with_name.startswith(str(out_dir)) and fd.stat().st_size > 1_000_000:
                return True
        return False

    wait_until(writing, 120, "the run writing its output")
    process.send_signal(how)
    _, stderr = process.communicate(timeout=60)
    assert list(out_dir.iterdir()) == []
    if how is signal.SIGTERM:
        one_line_error(
            subprocess.CompletedProcess([], process.returncode, "", stderr),
            "stopped: nothing written",
        )
    else:
        assert process.returncode == -signal.SIGKILL


def test_errors_are_one_line(trained_settings: Settings, tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(cohort(10), good)
    out = str(tmp_path / "out.parquet")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not a parquet file at all PAR1")
    lacking = tmp_path / "lacking.csv"
    pacsv.write_csv(cohort(3).drop_columns(["thalach", "cp"]), lacking)
    cases = [
        (("missing.parquet", "--out", out), ["missing.parquet: no such file"]),
        ((str(corrupt), "--out", out), ["corrupt.parquet: not a readable Parquet file"]),
        ((str(lacking), "--out", out), ["no column cp, thalach (required"]),
        ((str(good), "--out", out, "--model", "heart-disease-nope/1"), ["unknown model"]),
        ((str(good), "--out", out, "--model", "champion-va"), ["no version holds", "champion-va"]),
        ((str(good), "--out", out, "--site", "Bad Site"), ["invalid site name"]),
        ((str(good), "--out", out, "--keep", "mrn"), ["no column 'mrn'"]),
        ((str(good), "--out", str(tmp_path / "out.json")), ["give a .parquet or .csv"]),
    ]
    for args, fragments in cases:
        one_line_error(run_heartml(trained_settings, "score", *args, cwd=tmp_path), *fragments)
    assert {p.name for p in tmp_path.iterdir()} == {
        "good.parquet", "corrupt.parquet", "lacking.csv", "trained-copy"
    }  # fmt: skip


def test_a_site_champion_scores_its_site_and_the_champion_the_rest(
    trained_settings: Settings, tmp_path: Path
) -> None:
    family = read_family(trained_settings)
    champion = family.champion
    assert champion is not None
    other = next(v for v in family.versions if v.name != champion.name)
    client = get_client(trained_settings)
    client.set_registered_model_alias(other.name, "champion-va", str(other.version))
    client.set_model_version_tag(other.name, str(other.version), "site", "va")
    source = tmp_path / "c.csv"
    pacsv.write_csv(cohort(50), source)
    for args, expected in [
        (("--site", "va"), (other.name, other.version, True)),
        (("--model", "champion-va"), (other.name, other.version, True)),
        (("--site", "cleveland"), (champion.name, champion.version, False)),
        (
            ("--model", f"{champion.name}/{champion.version}"),
            (champion.name, champion.version, False),
        ),
    ]:
        out = tmp_path / "s.parquet"
        score(trained_settings, str(source), "--out", str(out), *args)
        rows = pq.read_table(out, columns=["model_name", "model_version", "site_adapted"])
        assert set(zip(*(c.to_pylist() for c in rows.columns), strict=True)) == {expected}


def test_monitor_scored_measures_the_cohort_against_the_model_profile(
    trained_settings: Settings, tmp_path: Path
) -> None:
    import re

    import mlflow.artifacts

    from heartml.data.profile import feature_stability, missing_ratios, read_profile
    from heartml.registry import configure_mlflow

    table = as_table(uci_rows(trained_settings))
    source = tmp_path / "uci.parquet"
    pq.write_table(table, source)
    out = tmp_path / "scored.parquet"
    score(trained_settings, str(source), "--out", str(out), "--keep-features")
    report = tmp_path / "cohort.html"
    result = run_heartml(trained_settings, "monitor", "--scored", str(out), "--out", str(report))
    assert result.returncode == 0, result.stderr

    champion = read_family(trained_settings).champion
    assert champion is not None
    configure_mlflow(trained_settings)
    model_dir = mlflow.artifacts.download_artifacts(champion.uri, dst_path=str(tmp_path / "m"))
    profile = read_profile(Path(model_dir))
    assert profile is not None
    scored = pq.read_table(out, columns=list(FEATURE_NAMES)).to_pandas().to_numpy(dtype="float64")
    expected_psi = feature_stability(profile, scored)
    expected_missing = missing_ratios(scored)
    page = report.read_text(encoding="utf-8")
    assert "a scored cohort" in page and champion.ref in page
    shown = re.findall(r"<tr><td>(\w+)</td><td>([\d.]+)( ⚠)?</td><td>([\d.]+)%</td>", page)
    assert [name for name, *_ in shown] == list(FEATURE_NAMES)
    for (_, psi, _, missing), psi_expected, missing_expected in zip(
        shown, expected_psi, expected_missing, strict=True
    ):
        assert float(psi) == pytest.approx(psi_expected, abs=5e-4)
        assert float(missing) == pytest.approx(100 * missing_expected, abs=0.05)
    assert f"{champion.ref}, largest PSI {max(expected_psi):.3f}" in result.stdout

    bare = tmp_path / "bare.parquet"
    score(trained_settings, str(source), "--out", str(bare))
    one_line_error(
        run_heartml(trained_settings, "monitor", "--scored", str(bare), "--out", str(report)),
        "no feature column age",
        "--keep-features",
    )
