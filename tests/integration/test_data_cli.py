"""`heartml data download|validate` through the CLI: mirrors, caching, and every failure.

The commands run in this process (Typer's runner, the console script's exit codes).
"""

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from conftest import CliResult, free_port, invoke_heartml, make_settings, one_line_error
from heartml.data.download import SITE_FILES
from heartml.settings import Settings


def run_heartml(settings: Settings, *args: str) -> CliResult:
    return invoke_heartml(settings, *args)


def cache_listing(settings_dir: Path) -> list[str]:
    return sorted(p.name for p in settings_dir.iterdir()) if settings_dir.exists() else []


def test_download_then_reuse_the_verified_cache(tmp_path: Path, mirror: Path) -> None:
    settings = make_settings(tmp_path, mirror)
    first = run_heartml(settings, "data", "download")
    assert first.returncode == 0, first.stderr
    assert "downloaded" in first.stdout
    cached = settings.data_dir / "processed.cleveland.data"
    assert cached.read_bytes() == (mirror / "processed.cleveland.data").read_bytes()
    second = run_heartml(settings, "data", "download")
    assert second.returncode == 0
    assert "cached" in second.stdout and "downloaded" not in second.stdout
    assert cache_listing(settings.data_dir) == ["processed.cleveland.data"]


def test_source_flag_overrides_the_environment(tmp_path: Path, mirror: Path) -> None:
    settings = make_settings(tmp_path, tmp_path / "not-a-mirror")
    refused = run_heartml(settings, "data", "download")
    assert refused.returncode == 1
    flagged = run_heartml(settings, "data", "download", "--source", str(mirror))
    assert flagged.returncode == 0, flagged.stderr
    assert (settings.data_dir / "processed.cleveland.data").stat().st_mode & 0o044 == 0o044


def test_all_sites_and_validate(tmp_path: Path, mirror: Path) -> None:
    settings = make_settings(tmp_path, mirror)
    assert run_heartml(settings, "data", "download", "--all-sites").returncode == 0
    assert cache_listing(settings.data_dir) == sorted(f.filename for f in SITE_FILES.values())
    result = run_heartml(settings, "data", "validate", "--all-sites")
    assert result.returncode == 0, result.stderr
    assert "920 rows" in result.stdout
    assert "va row 34, trestbps: 0 means not measured" in result.stdout


@pytest.fixture
def http_mirror(mirror: Path) -> Iterator[str]:
    """The mirror served over real HTTP on loopback, like the UCI site."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass  # the command's stderr is what the tests read, in this same process

    port = free_port()
    handler = partial(QuietHandler, directory=str(mirror))
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/heart-disease"
    finally:
        server.shutdown()
        server.server_close()


def test_download_over_http(tmp_path: Path, http_mirror: str, mirror: Path) -> None:
    # The served directory is the mirror itself; a URL path the server does not have fails.
    settings = make_settings(tmp_path, http_mirror.rsplit("/", 1)[0])
    result = run_heartml(settings, "data", "download")
    assert result.returncode == 0, result.stderr
    bad = make_settings(tmp_path / "b", http_mirror)
    missing = run_heartml(bad, "data", "download")
    one_line_error(missing, "processed.cleveland.data", "HTTP 404")
    assert cache_listing(bad.data_dir) == []


def test_corrupt_mirror_file_is_refused_and_nothing_is_left(tmp_path: Path, mirror: Path) -> None:
    corrupt = tmp_path / "corrupt-mirror"
    shutil.copytree(mirror, corrupt)
    target = corrupt / "processed.cleveland.data"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes().replace(b"63.0", b"64.0", 1))
    settings = make_settings(tmp_path / "s", corrupt)
    result = run_heartml(settings, "data", "download")
    one_line_error(result, "processed.cleveland.data", "checksum mismatch")
    assert cache_listing(settings.data_dir) == []


def test_missing_file_in_mirror(tmp_path: Path) -> None:
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    settings = make_settings(tmp_path / "s", empty)
    result = run_heartml(settings, "data", "download")
    one_line_error(result, "processed.cleveland.data", "not found")


def test_unknown_source(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tmp_path / "no-such-dir")
    result = run_heartml(settings, "data", "download")
    one_line_error(result, "processed.cleveland.data", "no-such-dir")


def test_unreachable_source(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"http://127.0.0.1:{free_port()}")
    result = run_heartml(settings, "data", "download")
    one_line_error(result, "processed.cleveland.data", "cannot reach")
    assert cache_listing(settings.data_dir) == []


def test_corrupted_cache_is_detected_refetched_and_never_trained_on(
    tmp_path: Path, mirror: Path, empty_store: Path
) -> None:
    shutil.copy2(empty_store, tmp_path / "mlflow.db")  # a store, already migrated
    settings = make_settings(tmp_path, mirror)
    assert run_heartml(settings, "data", "download").returncode == 0
    cached = settings.data_dir / "processed.cleveland.data"
    cached.write_bytes(cached.read_bytes()[:-20])

    refused = run_heartml(settings, "train")
    one_line_error(refused, "processed.cleveland.data", "checksum")
    # Training never ran on unverified data: nothing was registered.
    listed = run_heartml(settings, "promote", "--list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["models"] == []

    validated = run_heartml(settings, "data", "validate")
    one_line_error(validated, "checksum")

    again = run_heartml(settings, "data", "download")
    assert again.returncode == 0, again.stderr
    assert "downloaded" in again.stdout
    assert cached.read_bytes() == (mirror / "processed.cleveland.data").read_bytes()


def test_malformed_experiment_yaml(tmp_path: Path, mirror: Path, data_cache: Path) -> None:
    settings = make_settings(tmp_path, mirror, data_dir=data_cache)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncandidates: {knn: [\n")
    result = run_heartml(settings, "train", "--config", str(bad))
    one_line_error(result, "bad.yaml", "not valid YAML")


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        # The SVM is wrapped in calibration: the message still names the estimator.
        ("svm: {C: -1}", "The 'C' parameter of SVC"),
        ("random_forest: {n_estimators: 0}", "'n_estimators' parameter of RandomForestClassifier"),
        ("knn: {neighbours: 5}", "unexpected keyword argument 'neighbours'"),
    ],
)
def test_a_bad_hyper_parameter_fails_training_in_one_line_and_registers_nothing(
    tmp_path: Path, mirror: Path, data_cache: Path, empty_store: Path, candidate: str, expected: str
) -> None:
    shutil.copy2(empty_store, tmp_path / "mlflow.db")  # a store, already migrated
    settings = make_settings(tmp_path, mirror, data_dir=data_cache)
    bad = tmp_path / "bad-params.yaml"
    bad.write_text(f"version: 1\ncandidates:\n  logistic_regression: {{}}\n  {candidate}\n")
    result = run_heartml(settings, "train", "--config", str(bad))
    one_line_error(result, "candidate", expected)
    listed = run_heartml(settings, "promote", "--list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["models"] == []
