"""Delivery files, checked without Docker or a cluster: Dockerfile, Jenkinsfile, workflow,
docker-compose, ConfigMap keys, alert rules, dashboard and the checkov skip list."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from heartml.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "k8s" / "base" / "monitoring"

# The API's /metrics contract; alerts and dashboards may use nothing else (plus Prometheus' up).
CONTRACT_METRICS = {
    "heartml_http_requests_total",
    "heartml_http_request_duration_seconds",
    "heartml_predictions_total",
    "heartml_model_info",
    "heartml_model_version",
    "heartml_model_loaded",
    "heartml_model_reloads_total",
    "heartml_registry_checks_total",
    "heartml_site_model_info",
    # live evidence (heartml.serve.livemetrics)
    "heartml_feature_psi",
    "heartml_feature_missing_ratio",
    "heartml_drift_window_rows",
    "heartml_shadow_predictions_total",
    "heartml_shadow_disagreements_total",
    "heartml_shadow_abs_diff",
    "heartml_shadow_info",
    "heartml_shadow_restarts_total",
    "heartml_background_dropped_total",
    "heartml_prediction_log_records_total",
}
CONFIGMAP_KEYS = {
    "MLFLOW_TRACKING_URI",
    "HEARTML_MODEL_PREFIX",
    "HEARTML_CHAMPION_ALIAS",
    "HEARTML_HOST",
    "HEARTML_PORT",
    "HEARTML_WORKERS",
    "HEARTML_MODEL_DIR",
    "HEARTML_RELOAD_INTERVAL_S",
    "HEARTML_SITE",
    "HEARTML_MAX_BATCH_SIZE",
    "HEARTML_MAX_BODY_BYTES",
    "HEARTML_CORS_ORIGINS",
    "HEARTML_LOG_LEVEL",
    "HEARTML_MIN_ROC_AUC",
    "HEARTML_SHADOW",
    "HEARTML_DRIFT_WINDOW",
    "HEARTML_PROMOTION_MARGIN",
    "HEARTML_CALIBRATION_SLOPE_MIN",
    "HEARTML_CALIBRATION_SLOPE_MAX",
    "HEARTML_CALIBRATION_INTERCEPT_MAX",
    "HEARTML_GATE_MIN_ROWS",
    "HEARTML_SHUTDOWN_DELAY_S",
}
JENKINS_STAGES = [
    "Checkout",
    "Setup",
    "Lint",
    "Test",
    "Coverage",
    "Download data",
    "Validate data",
    "Train",
    "Promote best model",
    "Adapt to sites",
    "Export model",
    "Build image",
    "Test image",
    "Push",
    "Deploy",
    "Verify",
]


def make_targets() -> set[str]:
    """Every target defined in the Makefile and mk/*.mk."""
    targets: set[str] = set()
    for path in [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))]:
        for match in re.finditer(r"^([a-zA-Z0-9_-]+):", path.read_text(), re.MULTILINE):
            targets.add(match.group(1))
    return targets


def metric_names(expr: str) -> set[str]:
    """heartml_* series in a PromQL expression, without the histogram suffixes."""
    names = set(re.findall(r"\bheartml_[a-z_]+", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    rows = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def dockerfile_stages(path: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Each stage by name (the last one also as ""): its FROM and its instructions."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    rows: list[tuple[str, str]] = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            words = rest.split()
            rows = []
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages[name] = (words[0], rows)
        else:
            rows.append((keyword, rest))
    stages[""] = stages[next(reversed(stages))]
    return stages


def inherited(
    stages: dict[str, tuple[str, list[tuple[str, str]]]], name: str
) -> list[tuple[str, str]]:
    """A stage's instructions after those of the stages it is built FROM."""
    base, rows = stages[name]
    return (inherited(stages, base) if base in stages else []) + rows


def test_dockerfile_is_multistage_slim_nonroot_with_healthcheck() -> None:
    stages = dockerfile_stages(REPO / "Dockerfile")
    bases = {base for base, _ in stages.values()}
    assert {"builder", "registry", "model"} <= stages.keys()
    assert bases - stages.keys() == {"python:3.11-slim"}, "every stage starts from the slim base"

    for name in ("registry", ""):
        runtime = inherited(stages, name)
        users = [rest for keyword, rest in runtime if keyword == "USER"]
        assert users, f"stage {name or 'final'} sets USER"
        user = users[-1].split(":")[0]
        assert user not in {"root", "0"}, f"runs as {user}"
        healthchecks = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
        assert healthchecks and "/health" in healthchecks[0]
        assert ("EXPOSE", "8000") in runtime
        cmd = [rest for keyword, rest in runtime if keyword in {"CMD", "ENTRYPOINT"}]
        assert cmd and json.loads(cmd[-1])[:2] == ["heartml", "serve"]
        assert any(k == "COPY" and rest.startswith("--from=builder") for k, rest in runtime)

    # The default (last) stage bakes the model in from `heartml export`, labelled with name,
    # version and roc_auc, and serves it; the registry stage has no model and follows the registry.
    final = inherited(stages, "")
    assert any(k == "COPY" and rest.startswith("exported-model/") for k, rest in final)
    labels = " ".join(rest for keyword, rest in final if keyword == "LABEL")
    for label in ("model.name", "model.version", "model.roc-auc", "git-commit", "image.revision"):
        assert label in labels, label
    assert ("ENV", "HEARTML_MODEL_DIR=/app/model") in final
    registry = inherited(stages, "registry")
    assert not any("exported-model" in rest or "MODEL_DIR" in rest for _, rest in registry)


def test_dockerfile_installs_dependencies_before_the_source() -> None:
    rows = dockerfile_instructions(REPO / "Dockerfile")
    copies = [rest for keyword, rest in rows if keyword == "COPY"]
    deps = next(i for i, rest in enumerate(copies) if "constraints.txt" in rest)
    source = next(i for i, rest in enumerate(copies) if rest.startswith("src"))
    assert deps < source, "the dependency layer must not depend on the source"


def test_dockerfile_env_matches_settings() -> None:
    env = " ".join(
        rest for keyword, rest in dockerfile_instructions(REPO / "Dockerfile") if keyword == "ENV"
    )
    for key in re.findall(r"\b(HEARTML_[A-Z_]+)=", env):
        field = key.removeprefix("HEARTML_").lower()
        assert field in Settings.model_fields or field == "git_commit", key


def test_dockerignore_keeps_data_stores_and_venv_out() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: exclude everything, then re-include what the image needs"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == {"pyproject.toml", "constraints.txt", "src", "exported-model"}
    for pattern in ("**/mlflow.db*", "**/mlruns", "**/mlartifacts", "**/.env"):
        assert pattern in lines


# --- Jenkinsfile -------------------------------------------------------------------------------


def jenkins_stages() -> list[tuple[str, str]]:
    text = (REPO / "Jenkinsfile").read_text()
    pipeline = text[: text.index("\n    post {")]
    matches = list(re.finditer(r"stage\('([^']+)'\)", pipeline))
    return [
        (m.group(1), pipeline[m.end() : matches[i + 1].start() if i + 1 < len(matches) else None])
        for i, m in enumerate(matches)
    ]


def test_jenkinsfile_has_every_stage_in_order() -> None:
    assert [name for name, _ in jenkins_stages()] == JENKINS_STAGES


def test_every_jenkins_stage_calls_one_existing_make_target() -> None:
    targets = make_targets()
    for name, body in jenkins_stages():
        calls = re.findall(r"sh '(make [^']*)'", body)
        assert len(calls) == 1, f"stage {name!r} calls {calls}"
        target = calls[0].split()[1]
        assert target in targets, f"stage {name!r}: no make target {target!r}"


def test_every_make_target_named_in_the_jenkinsfile_exists() -> None:
    """Steps, post actions and comments alike: a `make X` must be something make can do."""
    text = (REPO / "Jenkinsfile").read_text()
    named = set(re.findall(r"(?:sh '|`)make ([a-z][a-z0-9-]*)", text))
    assert {"image", "image-test", "deploy-report"} <= named
    assert named - make_targets() == set()


def test_jenkins_image_stages_call_the_targets_the_container_tests_run() -> None:
    """Build image and Test image are `make image` and `make image-test`, which
    tests/integration/test_container_api.py runs against a real Docker engine."""
    stages = dict(jenkins_stages())
    assert re.findall(r"sh '(make [^']*)'", stages["Build image"]) == ["make image"]
    assert re.findall(r"sh '(make [^']*)'", stages["Test image"]) == ["make image-test"]
    tested = (REPO / "tests" / "integration" / "test_container_api.py").read_text()
    assert 'run_make("image", ' in tested and 'run_make("image-test", ' in tested


def test_jenkins_promotion_gate_and_deploy_conditions() -> None:
    stages = dict(jenkins_stages())
    promote = stages["Promote best model"]
    assert "make promote-gate" in promote and "readFile('.run/promotion')" in promote
    for name in ("Export model", "Build image", "Test image", "Push", "Deploy", "Verify"):
        assert "env.PROMOTION == 'promoted'" in stages[name], name
    for name in ("Push", "Deploy", "Verify"):
        assert "!params.SKIP_DEPLOY" in stages[name], name
    text = (REPO / "Jenkinsfile").read_text()
    assert "choice(name: 'OVERLAY', choices: ['dev', 'prod']" in text
    for credential in (
        "heartml-registry",
        "heartml-kubeconfig",
        "heartml-postgres-password",
        "heartml-mlflow-pipeline",
        "heartml-mlflow-serving",
    ):
        assert f"credentialsId: '{credential}'" in text
    # Training, the promotion and the export run as the registry's pipeline account.
    for name in ("Train", "Promote best model", "Export model"):
        assert "credentialsId: 'heartml-mlflow-pipeline'" in stages[name], name
    assert "make deploy-report" in text


def test_promote_gate_maps_exit_codes() -> None:
    recipe = (REPO / "mk" / "delivery.mk").read_text()
    gate = recipe[recipe.index("promote-gate:") : recipe.index("export-model:")]
    assert "0) echo promoted" in gate
    assert "2) echo refused" in gate
    assert "*) echo error" in gate and "exit 1" in gate
    assert gate.count("promote --list") == 2 and "promote --auto" in gate


# --- GitHub Actions ----------------------------------------------------------------------------


def test_github_workflow_parses_and_uses_make() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    assert workflow["name"] == "ci"
    targets = make_targets()
    used = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                if line.strip().startswith("make "):
                    target = line.split()[1]
                    assert target in targets, target
                    used.append(target)
    for target in ("lint", "test", "data", "train", "promote-gate", "export-model", "image"):
        assert target in used, target
    assert "image-test" in used


# --- docker-compose ----------------------------------------------------------------------------


def test_compose_has_the_full_stack() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services: dict[str, Any] = compose["services"]
    assert {"postgres", "mlflow", "api", "prometheus", "grafana"} <= services.keys()
    assert "127.0.0.1:5001:5001" in services["mlflow"]["ports"]
    assert "5001" in " ".join(services["mlflow"]["command"])
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://postgres:5432/mlflow"
    assert "--app-name" in services["mlflow"]["command"]
    # The auth app's secrets come from the environment or .env, with no default value.
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert mlflow_env[name].startswith(f"${{{name}:?"), name
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    api = services["api"]
    assert "127.0.0.1:8000:8000" in api["ports"]
    assert api["read_only"] is True and "/tmp" in api["tmpfs"]
    assert api["build"]["context"] == "."
    assert api["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5001"
    for name, service in services.items():
        assert "image" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    prometheus = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["api:8000"]


# --- Kubernetes sources ------------------------------------------------------------------------


def test_configmap_keys_are_the_settings_environment_variables() -> None:
    configmap = yaml.safe_load((REPO / "deploy/k8s/base/api/configmap.yaml").read_text())
    keys = set(configmap["data"])
    assert keys == CONFIGMAP_KEYS
    for key in keys - {"MLFLOW_TRACKING_URI"}:
        assert key.removeprefix("HEARTML_").lower() in Settings.model_fields, key
    assert json.loads(configmap["data"]["HEARTML_CORS_ORIGINS"]) == []
    assert configmap["data"]["HEARTML_PORT"] == "8000"


def test_secrets_example_has_placeholders_only() -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy/k8s/secrets.example.yaml").read_text()))
    names = {doc["metadata"]["name"] for doc in docs}
    assert names == {
        "heartml-api-secrets",
        "heartml-postgres",
        "heartml-grafana",
        "heartml-mlflow-auth",
        "heartml-mlflow-serving",
    }
    for doc in docs:
        for key, value in doc["stringData"].items():
            named = key in ("POSTGRES_USER", "MLFLOW_TRACKING_USERNAME")
            assert named or value.startswith("REPLACE-ME"), key


def test_alert_rules_cover_the_failures_and_use_contract_metrics() -> None:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    for required in (
        "HeartmlHighErrorRate",
        "HeartmlHighLatencyP95",
        "HeartmlApiPodDown",
        "HeartmlModelReloadFailures",
        "HeartmlChampionVersionChanged",
    ):
        assert required in rules, required
    for name, rule in rules.items():
        assert metric_names(rule["expr"]) <= CONTRACT_METRICS, name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
    assert 'status=~"5.."' in rules["HeartmlHighErrorRate"]["expr"]
    assert "histogram_quantile(0.95" in rules["HeartmlHighLatencyP95"]["expr"]
    assert 'result="failure"' in rules["HeartmlModelReloadFailures"]["expr"]
    assert "heartml_model_version" in rules["HeartmlChampionVersionChanged"]["expr"]


def test_prometheus_config_loads_the_rules() -> None:
    for path in (MONITORING / "prometheus.yml", REPO / "deploy/compose/prometheus.yml"):
        config = yaml.safe_load(path.read_text())
        assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert jobs["heartml-api"]["metrics_path"] == "/metrics"


def test_dashboard_shows_traffic_latency_predictions_and_model() -> None:
    dashboard = json.loads((MONITORING / "dashboards" / "heartml-api.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    joined = "\n".join(exprs)
    for expr in exprs:
        assert metric_names(expr) <= CONTRACT_METRICS, expr
    assert "rate(heartml_http_requests_total" in joined
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in joined
    assert "sum by (prediction) (rate(heartml_predictions_total" in joined
    assert "heartml_model_info" in joined and "heartml_model_version" in joined
    for evidence in ("heartml_feature_psi", "heartml_shadow_disagreements_total"):
        assert evidence in joined
    assert "heartml_background_dropped_total" in joined
    assert all(panel["datasource"]["uid"] == "prometheus" for panel in dashboard["panels"])
    for path in (
        MONITORING / "grafana-datasources.yaml",
        REPO / "deploy/compose/grafana-datasources.yaml",
    ):
        datasource = yaml.safe_load(path.read_text())["datasources"][0]
        assert datasource["uid"] == "prometheus"


def test_checkov_skips_each_have_a_reason() -> None:
    skips = yaml.safe_load((REPO / "deploy" / "checkov-skips.yaml").read_text())["skips"]
    assert skips, "an empty list is fine, but then drop --skip-check"
    ids = [skip["id"] for skip in skips]
    assert len(ids) == len(set(ids))
    for skip in skips:
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", skip["id"]), skip
        assert len(skip["reason"].split()) >= 10, f"{skip['id']} needs a real reason"


# --- make targets ------------------------------------------------------------------------------


def test_delivery_targets_exist_and_are_documented() -> None:
    text = "\n".join(path.read_text() for path in sorted((REPO / "mk").glob("*.mk")))
    for target in (
        "tools",
        "lint-docker",
        "lint-groovy",
        "docker-up",
        "docker-down",
        "base-image",
        "image-registry",
        "image-mlflow",
        "image-report",
        "mlflow-server-container",
        "k8s-validate",
        "promote-gate",
        "export-model",
        "image",
        "image-test",
        "push",
        "deploy",
        "rollback-deploy",
        "verify",
        "smoke",
        "pipeline-local",
        "serve-model",
    ):
        assert re.search(rf"^{re.escape(target)}:.*## \S", text, re.MULTILINE), target


def test_pipeline_local_uses_the_same_make_targets_in_order() -> None:
    script = (REPO / "scripts" / "pipeline-local.sh").read_text()
    calls = re.findall(r'run_stage \w+ "\$MAKE" --no-print-directory ([a-z-]+)', script)
    assert calls == ["data", "validate", "train", "promote-gate", "export-model", "smoke"]
    assert "serve-model" in script and "trap on_exit EXIT" in script
    assert set(calls) | {"serve-model"} <= make_targets()


def test_make_dry_run_of_image_and_deploy(tmp_path: Path) -> None:
    """The Docker and cluster targets expand to the expected commands (nothing is run)."""
    export = tmp_path / "exported-model"
    export.mkdir()
    (export / "model.json").write_text(
        json.dumps({"name": "heart-disease-svm", "version": 3, "roc_auc": 0.96, "run_id": "abc"})
    )

    def dry_run(*args: str) -> str:
        done = subprocess.run(
            ["make", "-n", "-C", str(REPO), *args, f"EXPORT_DIR={export}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    image = dry_run("image", "GIT_SHA=0123abcd")
    assert "--build-arg MODEL_VERSION=3" in image
    assert "--build-arg MODEL_ROC_AUC=0.96" in image
    assert "heartml-api:0123abcd-heart-disease-svm-v3" in image
    assert "heartml-api:0123abcd " in image
    deploy = dry_run("deploy", "OVERLAY=prod")
    assert "deploy/scripts/k8s-deploy.sh deploy" in deploy
    assert "heart-disease-svm-v3" in deploy


@pytest.mark.parametrize("script", ["scripts/smoke-test.py"])
def test_smoke_script_help(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, check=True
    )
    assert "--expect" in result.stdout
