"""`heartml promote` / `scripts/promote-model.py` against real stores.

Registry states are built directly with MlflowClient (fast, exact) on a temporary SQLite store
and, for the main flows, on a real `mlflow server` started on a free port. The command runs in
this process (Typer's runner, the console script's exit codes); real processes are kept for
what only they show: scripts/promote-model.py, the console script's usage errors, simultaneous
promotions, and a dead store.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import (
    HEARTML,
    REPO,
    CliResult,
    MlflowServer,
    assert_one_champion,
    free_port,
    invoke_heartml,
    make_settings,
    one_line_error,
    predictions_run,
    settings_env,
)
from heartml.registry import (
    PRODUCTION,
    FamilyState,
    promote_version,
    read_family,
    read_with_client,
)
from heartml.registry.store import read_raw_family
from heartml.settings import Settings

# Real `mlflow server` processes and `heartml promote` subprocesses.
pytestmark = pytest.mark.slow

_prefixes = itertools.count(1)


class Registry:
    """A family of registered models on one store, and the CLI pointed at it."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.root = root
        self.client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
        self.prefix = settings.model_prefix

    def add(
        self,
        algorithm: str,
        roc_auc: float | None,
        *,
        best: bool = False,
        predictions: str | None = "good",
    ) -> int:
        """A version with a score tag and, unless ``predictions`` is None, a run holding
        stored predictions of that quality (conftest.synthetic_predictions)."""
        name = self.prefix + algorithm
        with contextlib.suppress(Exception):  # already registered
            self.client.create_registered_model(name)
        tags = {"model_type": algorithm}
        if roc_auc is not None:
            tags["roc_auc"] = f"{roc_auc:.4f}"
        if best:
            tags["best_model"] = "true"
        run_id = None if predictions is None else predictions_run(self.client, predictions)
        version = self.client.create_model_version(
            name, source=f"s3://heartml-test-fixtures/{algorithm}", run_id=run_id, tags=tags
        )
        return int(version.version)

    def state(self) -> FamilyState:
        return read_family(self.settings)

    def champion(self) -> str | None:
        champion = self.state().champion
        return champion.ref if champion else None

    def assert_one_champion(self) -> str:
        return assert_one_champion(self.settings)

    @property
    def env(self) -> dict[str, str]:
        return {"HEARTML_MODEL_PREFIX": self.prefix, "HEARTML_PROMOTED_BY": "test-suite"}

    def run(self, *args: str) -> CliResult:
        """`heartml promote ARGS`, in this process."""
        return invoke_heartml(self.settings, "promote", *args, env=self.env)

    def run_process(self, *args: str, script: bool = False) -> subprocess.CompletedProcess[str]:
        """`heartml promote ARGS`, or `scripts/promote-model.py ARGS`, as a process."""
        command = (
            [sys.executable, str(REPO / "scripts" / "promote-model.py")]
            if script
            else [*HEARTML, "promote"]
        )
        return subprocess.run(
            [*command, *args],
            env={**settings_env(self.settings), **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def sqlite_family(tmp_path: Path, empty_store: Path) -> Registry:
    shutil.copy2(empty_store, tmp_path / "mlflow.db")
    return Registry(make_settings(tmp_path, tmp_path / "unused"), tmp_path)


def server_family(tmp_path: Path, server: MlflowServer) -> Registry:
    # One server for the session; a prefix of its own keeps each test's family apart.
    prefix = f"hd{next(_prefixes)}x-"
    return Registry(
        make_settings(
            tmp_path, tmp_path / "unused", mlflow_tracking_uri=server.uri, model_prefix=prefix
        ),
        tmp_path,
    )


@pytest.fixture
def sqlite_registry(tmp_path: Path, empty_store: Path) -> Registry:
    return sqlite_family(tmp_path, empty_store)


@pytest.fixture(params=["sqlite", "server"])
def registry(request: pytest.FixtureRequest, tmp_path: Path, empty_store: Path) -> Registry:
    """The flows that talk to the store differently over HTTP run on both stores."""
    if request.param == "sqlite":
        return sqlite_family(tmp_path, empty_store)
    return server_family(tmp_path, request.getfixturevalue("mlflow_server"))


# --- --auto ----------------------------------------------------------------------------------


def test_auto_promotes_the_best_and_archives_the_champion_of_another_model(
    registry: Registry,
) -> None:
    old = registry.add("random_forest", 0.90)
    promote_version(registry.settings, registry.prefix + "random_forest", old)
    best = registry.add("logistic_regression", 0.95, best=True)
    registry.add("knn", 0.93)

    result = registry.run("--auto")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        out.index("Before Promotion")
        < out.index("Auto-Promoting Best Model")
        < out.index("After Promotion")
    )
    assert (
        f"✅ Found best model: {registry.prefix}logistic_regression v{best} (ROC-AUC: 0.9500)"
        in out
    )
    assert (
        f"✅ Successfully promoted {registry.prefix}logistic_regression v{best} to Production!"
        in out
    )

    assert registry.assert_one_champion() == f"{registry.prefix}logistic_regression/{best}"
    old_version = registry.state().find(registry.prefix + "random_forest", old)
    assert old_version.stage == "Archived"
    assert old_version.aliases == ()
    knn = registry.state().find(registry.prefix + "knn")
    assert knn.stage == "None"  # never a champion, left alone


def test_auto_without_a_tagged_version(sqlite_registry: Registry) -> None:
    sqlite_registry.add("knn", 0.91)
    one_line_error(sqlite_registry.run("--auto"), "no version tagged best_model=true")


def test_auto_when_the_best_is_already_champion_is_a_no_op(sqlite_registry: Registry) -> None:
    version = sqlite_registry.add("knn", 0.91, best=True)
    assert sqlite_registry.run("--auto").returncode == 0
    tags_before = sqlite_registry.state().find("heart-disease-knn", version).tags
    again = sqlite_registry.run("--auto")
    assert again.returncode == 0
    assert "already champion" in again.stdout
    assert sqlite_registry.state().find("heart-disease-knn", version).tags == tags_before


# --- NAME [VERSION] --------------------------------------------------------------------------


def test_name_promotes_the_latest_version_and_name_version_that_one(
    sqlite_registry: Registry,
) -> None:
    name = "heart-disease-svm"
    for score in (0.90, 0.91, 0.92):
        sqlite_registry.add("svm", score)
    latest = sqlite_registry.run(name)
    assert latest.returncode == 0, latest.stderr
    assert sqlite_registry.assert_one_champion() == f"{name}/3"
    chosen = sqlite_registry.run(name, "1")
    assert chosen.returncode == 0, chosen.stderr
    assert sqlite_registry.assert_one_champion() == f"{name}/1"
    assert sqlite_registry.state().find(name, 3).stage == "Archived"


def test_unknown_name_and_unknown_version(sqlite_registry: Registry) -> None:
    sqlite_registry.add("svm", 0.9)
    one_line_error(sqlite_registry.run("heart-disease-nope"), "unknown model")
    one_line_error(sqlite_registry.run("heart-disease-svm", "9"), "has no version 9")
    assert sqlite_registry.champion() is None


def test_usage_errors_exit_1_not_2(sqlite_registry: Registry) -> None:
    assert sqlite_registry.run("--bogus").returncode == 1
    assert sqlite_registry.run().returncode == 1
    assert sqlite_registry.run("--auto", "--list").returncode == 1
    # The console script maps them the same way.
    bogus = sqlite_registry.run_process("--bogus")
    assert bogus.returncode == 1
    assert "No such option: --bogus" in bogus.stderr


# --- the gate --------------------------------------------------------------------------------


def test_gate_refuses_a_worse_challenger_and_force_overrides(sqlite_registry: Registry) -> None:
    registry = sqlite_registry
    champion = registry.add("svm", 0.95)
    promote_version(registry.settings, registry.prefix + "svm", champion)
    challenger = registry.add("knn", 0.90, best=True, predictions="weak")

    refused = registry.run("--auto")
    assert refused.returncode == 2
    [message] = [line for line in refused.stdout.splitlines() if "Not promoted" in line]
    assert message.startswith(
        f"⛔ Not promoted — refused by the gate: heart-disease-knn/{challenger} ROC-AUC"
    )
    # Both scores, the difference and its interval, the margin, and the rows compared.
    assert re.search(
        r"ROC-AUC 0\.\d{4} vs champion heart-disease-svm/1 0\.\d{4}: difference -0\.\d{4}, "
        r"95 % CI \[-0\.\d{4}, [-+]0\.\d{4}\], beyond the non-inferiority margin -0\.0500 "
        r"\(paired on the same 120 held-out rows\)",
        message,
    ), message
    assert registry.assert_one_champion() == f"{registry.prefix}svm/{champion}"
    # The refusal is recorded on the challenger: tags, and the JSON record in its run.
    refused_version = registry.state().find(registry.prefix + "knn", challenger)
    assert refused_version.tags["gate_verdict"] == "refused"
    assert refused_version.tags["gate_champion"] == f"{registry.prefix}svm/{champion}"
    record = registry.client.download_artifacts(
        refused_version.run_id, refused_version.tags["gate_evidence"], str(registry.root)
    )
    assert json.loads(Path(record).read_text())["verdict"] == "refused"

    forced = registry.run("--auto", "--force")
    assert forced.returncode == 0, forced.stderr
    assert registry.assert_one_champion() == f"{registry.prefix}knn/{challenger}"
    assert (
        registry.state().find(registry.prefix + "knn").tags["gate_verdict"].startswith("overridden")
    )


def test_gate_minimum_margin_and_versions_without_predictions(sqlite_registry: Registry) -> None:
    sqlite_registry.add("knn", 0.75, best=True)
    refused = sqlite_registry.run("--auto")
    assert refused.returncode == 2
    assert "below the minimum 0.8000" in refused.stdout
    assert sqlite_registry.run("--auto", "--min-roc-auc", "0.7").returncode == 0

    sqlite_registry.client.set_model_version_tag("heart-disease-knn", "1", "best_model", "false")
    sqlite_registry.add("svm", 0.85, best=True, predictions="weak")
    assert sqlite_registry.run("--auto").returncode == 2
    tolerant = sqlite_registry.run("--auto", "--margin", "0.5")
    assert tolerant.returncode == 0, tolerant.stdout
    assert sqlite_registry.assert_one_champion() == "heart-disease-svm/1"

    # A version without stored predictions cannot be judged: promote it by name, or --force.
    sqlite_registry.client.set_model_version_tag("heart-disease-svm", "1", "best_model", "false")
    sqlite_registry.add("lr", 0.9, best=True, predictions=None)
    blind = sqlite_registry.run("--auto")
    assert blind.returncode == 2
    assert "has no stored predictions to judge it by" in blind.stdout


def test_dry_run_changes_nothing(sqlite_registry: Registry) -> None:
    registry = sqlite_registry
    first = registry.add("svm", 0.91)
    promote_version(registry.settings, registry.prefix + "svm", first)
    registry.add("knn", 0.95, best=True)
    before = registry.run("--list", "--json").stdout

    # svm was the first champion: there is nothing to roll back to (exit 1).
    expected = {"--auto": 0, registry.prefix + "knn": 0, "--rollback": 1}
    for first_arg, code in expected.items():
        result = registry.run(first_arg, "--dry-run")
        assert result.returncode == code, (first_arg, result.stdout, result.stderr)
    auto = registry.run("--auto", "--dry-run", "--json")
    assert json.loads(auto.stdout)["outcome"] == "dry_run"
    assert f"would archive {registry.prefix}svm/{first}" in json.loads(auto.stdout)["message"]
    assert registry.run("--list", "--json").stdout == before


# --- history and rollback --------------------------------------------------------------------


def test_rollback_restores_the_previous_champion_and_history_lists_both(
    registry: Registry,
) -> None:
    first = registry.add("svm", 0.91, best=True)
    assert registry.run("--auto").returncode == 0
    second = registry.add("logistic_regression", 0.93, best=True)
    assert registry.run("--auto").returncode == 0
    assert registry.assert_one_champion() == f"{registry.prefix}logistic_regression/{second}"

    history = json.loads(registry.run("--history", "--json").stdout)
    assert [(h["name"], h["version"]) for h in history] == [
        (registry.prefix + "logistic_regression", second),
        (registry.prefix + "svm", first),
    ]
    assert history[0]["previous"] == f"{registry.prefix}svm/{first}"
    assert history[0]["by"] == "test-suite"
    assert history[0]["at"] > history[1]["at"]
    assert history[0]["at"].endswith("Z")
    # Each --auto rests on the gate's verdict: against svm, paired on the same held-out rows.
    assert history[0]["gate"]["verdict"] == "passed"
    assert history[0]["gate"]["champion"] == f"{registry.prefix}svm/{first}"
    assert history[0]["gate"]["delta_roc_auc"] == [0.0, 0.0, 0.0]
    assert history[1]["gate"]["champion"] is None

    rolled = registry.run("--rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert registry.assert_one_champion() == f"{registry.prefix}svm/{first}"
    assert registry.state().find(registry.prefix + "logistic_regression").stage == "Archived"

    # The next pipeline run's `--auto` confirms the rollback instead of undoing it.
    again = registry.run("--auto")
    assert again.returncode == 0, again.stderr
    assert "already champion" in again.stdout
    assert registry.assert_one_champion() == f"{registry.prefix}svm/{first}"

    text = registry.run("--history").stdout
    assert text.count(f"{registry.prefix}svm v{first}") == 2
    assert f"rollback from {registry.prefix}logistic_regression/{second}" in text
    assert "gate:     not gated" in text  # the rollback: an operator's decision
    assert "gate:     passed; ROC-AUC difference +0.0000 [+0.0000, +0.0000]" in text


def test_rollback_without_a_previous_champion(sqlite_registry: Registry) -> None:
    one_line_error(sqlite_registry.run("--rollback"), "no champion")
    sqlite_registry.add("svm", 0.9, best=True)
    assert sqlite_registry.run("--auto").returncode == 0
    one_line_error(sqlite_registry.run("--rollback"), "no previous champion")


# --- concurrency and repair ------------------------------------------------------------------


def test_two_simultaneous_promotions_leave_exactly_one_champion(registry: Registry) -> None:
    registry.add("svm", 0.91)
    registry.add("knn", 0.92)
    env = settings_env(registry.settings)
    env["HEARTML_MODEL_PREFIX"] = registry.prefix
    for _ in range(2):
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "heartml", "promote", registry.prefix + algorithm],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for algorithm in ("svm", "knn")
        ]
        try:
            errors = [p.communicate(timeout=120)[1] for p in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert [p.returncode for p in processes] == [0, 0], errors
        registry.assert_one_champion()


def test_a_half_done_promotion_is_repaired_by_rerunning_it(sqlite_registry: Registry) -> None:
    old = sqlite_registry.add("svm", 0.91)
    promote_version(sqlite_registry.settings, "heart-disease-svm", old)
    new = sqlite_registry.add("knn", 0.93)
    # Interrupted after the alias moved, before any stage changed.
    sqlite_registry.client.set_model_version_tag(
        "heart-disease-knn", str(new), "promoted_at", "2999-01-01T00:00:00.000000Z"
    )
    sqlite_registry.client.set_registered_model_alias("heart-disease-knn", "champion", str(new))
    state = sqlite_registry.state()
    assert state.champion is not None and state.champion.ref == f"heart-disease-knn/{new}"
    assert not state.consistent

    listing = sqlite_registry.run("--list")
    assert "also holds 'champion'" in listing.stdout
    repaired = sqlite_registry.run("heart-disease-knn", str(new))
    assert repaired.returncode == 0, repaired.stderr
    assert sqlite_registry.assert_one_champion() == f"heart-disease-knn/{new}"
    assert sqlite_registry.state().find("heart-disease-svm", old).stage == "Archived"


def test_a_version_moved_to_production_by_hand_is_flagged_and_resolved(
    registry: Registry,
) -> None:
    champion = registry.add("svm", 0.91)
    promote_version(registry.settings, registry.prefix + "svm", champion)
    hand = registry.add("knn", 0.92)
    # The MLflow UI's stage dropdown: Production, no alias.
    registry.client.transition_model_version_stage(registry.prefix + "knn", str(hand), PRODUCTION)

    listing = registry.run("--list")
    assert f"{registry.prefix}knn/{hand} is in Production but is not the champion" in listing.stdout
    assert f"Resolve with: heartml promote {registry.prefix}svm {champion}" in listing.stdout
    assert json.loads(registry.run("--list", "--json").stdout)["consistent"] is False

    resolved = registry.run(registry.prefix + "knn", str(hand))
    assert resolved.returncode == 0, resolved.stderr
    assert registry.assert_one_champion() == f"{registry.prefix}knn/{hand}"


# --- --list ----------------------------------------------------------------------------------

GOLDEN_LIST = """\
📋 Registered Models:
================================================================================

📦 heart-disease-logistic_regression
   🏆 Version 2 - Stage: Production
      Aliases: champion
      Tag: best_model = true
      Tag: roc_auc = 0.9665
   📌 Version 1 - Stage: Archived
      Tag: roc_auc = 0.9400

📦 heart-disease-random_forest
   📌 Version 1 - Stage: None
      Tag: roc_auc = 0.9512
"""


def test_list_prints_the_seed_layout(sqlite_registry: Registry) -> None:
    client = sqlite_registry.client
    for name, versions in (
        (
            "heart-disease-logistic_regression",
            [{"roc_auc": "0.9400"}, {"best_model": "true", "roc_auc": "0.9665"}],
        ),
        ("heart-disease-random_forest", [{"roc_auc": "0.9512"}]),
    ):
        client.create_registered_model(name)
        for tags in versions:
            client.create_model_version(name, source="s3://heartml-test-fixtures/golden", tags=tags)
    client.transition_model_version_stage("heart-disease-logistic_regression", "1", "Archived")
    client.transition_model_version_stage("heart-disease-logistic_regression", "2", PRODUCTION)
    client.set_registered_model_alias("heart-disease-logistic_regression", "champion", "2")

    assert sqlite_registry.run("--list").stdout == GOLDEN_LIST
    script = sqlite_registry.run_process("--list", script=True)
    assert script.returncode == 0, script.stderr
    assert script.stdout == GOLDEN_LIST

    data = json.loads(sqlite_registry.run("--list", "--json").stdout)
    assert data["champion"] == {
        "name": "heart-disease-logistic_regression",
        "version": 2,
        "roc_auc": 0.9665,
    }
    assert data["consistent"] is True
    assert [v["version"] for v in data["models"][0]["versions"]] == [2, 1]


def test_list_on_an_empty_store(sqlite_registry: Registry) -> None:
    result = sqlite_registry.run("--list")
    assert result.returncode == 0
    assert "(no registered models in the family)" in result.stdout


def test_fast_reads_match_the_mlflow_client(registry: Registry) -> None:
    for algorithm, score in (("svm", 0.9), ("svm", 0.91), ("knn", 0.92), ("lr", None)):
        registry.add(algorithm, score, best=algorithm == "knn")
    promote_version(registry.settings, registry.prefix + "knn", None)
    promote_version(registry.settings, registry.prefix + "svm", 2)
    fast = read_raw_family(registry.settings.mlflow_tracking_uri, registry.prefix)
    assert fast is not None
    slow = read_with_client(registry.client, registry.prefix)
    key = lambda v: (v.name, v.version)  # noqa: E731
    assert fast.aliases == slow.aliases
    # Only a read of the SQL store says where a version's files are: where MLflow resolves
    # models:/NAME/VERSION to.
    for v in fast.versions:
        if registry.settings.mlflow_tracking_uri.startswith("sqlite"):
            assert v.storage_location == registry.client.get_model_version_download_uri(
                v.name, str(v.version)
            )
    assert sorted(fast.versions, key=key) == sorted(slow.versions, key=key)


def test_unreachable_store_is_one_line_and_fast(tmp_path: Path) -> None:
    # Every command reads the family first: one of them shows how a dead store is reported.
    settings = make_settings(
        tmp_path,
        tmp_path,
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        registry_retries=1,
    )
    started = time.monotonic()
    result = Registry(settings, tmp_path).run_process("--auto")
    one_line_error(result, f"error: tracking store {settings.mlflow_tracking_uri} is unreachable")
    assert time.monotonic() - started < 30
