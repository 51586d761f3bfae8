"""`make pipeline-local` end to end: download → validate → train → promote → export → serve →
smoke → stop, through the same make targets Jenkins calls, on a store in a temporary folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Two cheap candidates: these tests check the stages, not the models.
FAST_EXPERIMENT = REPO / "tests" / "configs" / "experiment-fast.yaml"
STAGES = ("download", "validate", "train", "promote", "export", "serve", "smoke", "stop")


def pipeline_env(root: Path, mirror: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HEARTML_", "MLFLOW_", "MAKEFLAGS", "MAKELEVEL"))
    }
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "HEARTML_ARTIFACT_DIR": str(root / "mlartifacts"),
            "HEARTML_DATA_DIR": str(root / "data"),
            "HEARTML_DATA_SOURCE": str(mirror),
            "EXPORT_DIR": str(root / "exported-model"),
            "RUN_DIR": str(root / "run"),
            "HEARTML_EXPERIMENT_CONFIG": str(FAST_EXPERIMENT),
            **extra,
        }
    )
    return env


def run_pipeline(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "pipeline-local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def summary_rows(output: str) -> dict[str, str]:
    summary = output[output.index("pipeline-local: stage summary") :]
    rows = {}
    for stage in STAGES:
        match = re.search(rf"^ {stage}\s+(.+?)\s+(\S+)$", summary, re.MULTILINE)
        assert match, f"no summary row for {stage}:\n{summary}"
        rows[stage] = match.group(1)
    return rows


def server_pid(rows: dict[str, str]) -> int | None:
    match = re.search(r"pid (\d+)", rows["serve"])
    return int(match.group(1)) if match else None


def assert_stopped(pid: int | None) -> None:
    """The server's whole process group is gone: make, `heartml serve` and its workers."""
    assert pid is not None
    deadline = time.monotonic() + 10  # killed children may wait a moment to be reaped
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError(f"process group {pid} (the served model) still runs after the pipeline")


@pytest.mark.slow
def test_pipeline_local_end_to_end(tmp_path: Path, mirror: Path) -> None:
    result = run_pipeline(pipeline_env(tmp_path, mirror))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    rows = summary_rows(result.stdout)
    for stage in STAGES:
        assert rows[stage].startswith("ok"), (stage, rows[stage])
    assert "✅ pipeline-local passed" in result.stdout
    assert re.search(r"^ total\s+\d+\.\d$", result.stdout, re.MULTILINE)

    # The exported champion is what was promoted, and what the smoke test saw being served.
    model = json.loads((tmp_path / "exported-model" / "model.json").read_text())
    assert {"name", "version", "run_id", "roc_auc", "model_type", "promoted_at"} <= model.keys()
    assert model["name"].startswith("heart-disease-")
    assert (tmp_path / "run" / "promotion").read_text().strip() == "promoted"
    assert f"GET /model → {model['name']} v{model['version']}" in result.stdout
    assert "POST /predict → prediction" in result.stdout
    assert_stopped(server_pid(rows))


@pytest.mark.slow
def test_pipeline_local_stops_the_server_when_a_stage_fails(
    tmp_path: Path, mirror: Path, empty_store: Path
) -> None:
    """A make that fails the smoke stage: the pipeline fails, and the server is still stopped."""
    shutil.copy2(empty_store, tmp_path / "mlflow.db")  # a new store's migrations: tested above
    fake_make = tmp_path / "make-failing-smoke"
    fake_make.write_text(
        '#!/usr/bin/env bash\nfor a in "$@"; do [[ $a == smoke ]] && exit 7; done\nexec make "$@"\n'
    )
    fake_make.chmod(fake_make.stat().st_mode | stat.S_IXUSR)
    result = run_pipeline(pipeline_env(tmp_path, mirror, MAKE=str(fake_make)))
    assert result.returncode != 0
    rows = summary_rows(result.stdout)
    assert rows["smoke"] == "FAILED (exit 7)"
    assert rows["stop"] == "stopped (cleanup)"
    assert "❌ pipeline-local failed" in result.stdout
    assert_stopped(server_pid(rows))


@pytest.mark.slow
def test_pipeline_local_refused_by_the_gate_is_not_a_failure(
    tmp_path: Path, mirror: Path, empty_store: Path
) -> None:
    """Exit 2 from `promote --auto` keeps the pipeline green and skips export, serve and smoke."""
    shutil.copy2(empty_store, tmp_path / "mlflow.db")
    result = run_pipeline(pipeline_env(tmp_path, mirror, HEARTML_MIN_ROC_AUC="0.9999"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    rows = summary_rows(result.stdout)
    assert rows["promote"] == "refused by the gate"
    for stage in ("export", "serve", "smoke", "stop"):
        assert rows[stage] == "skipped (not promoted)", stage
    assert (tmp_path / "run" / "promotion").read_text().strip() == "refused"
    assert not (tmp_path / "exported-model").exists()
