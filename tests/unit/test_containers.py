"""scripts/containers.py without Docker: a pod spec as `docker run` options, and what an image
must not hold. (The real prod overlay goes through it in test_delivery_k8s.py, and the real
image in the container tests.)"""

from __future__ import annotations

from typing import Any

import containers
import pytest
from containers import ContainerError, ImageFile


def rendered(**container_overrides: Any) -> list[dict[str, Any]]:
    container: dict[str, Any] = {
        "name": "api",
        "envFrom": [{"configMapRef": {"name": "config"}}],
        "env": [
            {"name": "LITERAL", "value": "1"},
            {"name": "FROM_KEY", "valueFrom": {"configMapKeyRef": {"name": "config", "key": "B"}}},
            {
                "name": "TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "t", "optional": True}},
            },
        ],
        "resources": {"limits": {"memory": "1Gi", "cpu": "500m"}},
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "runAsUser": 10001,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        **container_overrides,
    }
    return [
        {"kind": "ConfigMap", "metadata": {"name": "config"}, "data": {"A": "a", "B": "b"}},
        {
            "kind": "Deployment",
            "metadata": {"name": "heartml-api"},
            "spec": {
                "template": {
                    "spec": {
                        "terminationGracePeriodSeconds": 45,
                        "securityContext": {"runAsGroup": 10001, "runAsUser": 1},
                        "containers": [container],
                        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
                    }
                }
            },
        },
    ]


def test_a_pod_spec_becomes_docker_run_options() -> None:
    pod = containers.pod_run(rendered())
    assert pod.env == {"A": "a", "B": "b", "LITERAL": "1", "FROM_KEY": "b"}  # no optional secret
    assert pod.user == "10001:10001"  # the container's user, the pod's group
    args = pod.docker_run("img", "name", {"A": "override", "B": None, "NEW": "x"})
    line = " ".join(args)
    assert args[:4] == ["run", "-d", "--name", "name"] and args[-1] == "img"
    for option in (
        "--network host",
        "--stop-timeout 45",
        "--user 10001:10001",
        "--read-only",
        "--tmpfs /tmp:rw,nosuid,nodev,size=268435456",
        "--cap-drop ALL",
        "--security-opt no-new-privileges:true",
        "--memory 1073741824b",
        "--cpus 0.5",
    ):
        assert option in line, option
    # Values travel in the docker client's environment, never on its command line.
    assert "-e A" in line and "-e NEW" in line and "-e B" not in line and "override" not in line
    assert pod.docker_env({"A": "override", "B": None}) == {
        "A": "override",
        "LITERAL": "1",
        "FROM_KEY": "b",
    }


def test_secrets_are_passed_or_refused() -> None:
    pod = containers.pod_run(rendered(), secrets={"TOKEN": "t0ken"})
    assert pod.env["TOKEN"] == "t0ken"
    required = {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "p"}}}
    with pytest.raises(ContainerError, match="needs secret variable PW"):
        containers.pod_run(rendered(env=[required]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"securityContext": {"privileged": True}}, "privileged"),
        ({"volumeMounts": [{"name": "missing", "mountPath": "/x"}]}, "no volume missing"),
        ({"securityContext": {"seccompProfile": {"type": "Localhost"}}}, "seccomp"),
    ],
)
def test_what_cannot_run_here_is_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ContainerError, match=message):
        containers.pod_run(rendered(**overrides))


def test_quantities() -> None:
    assert containers.quantity_bytes("1Gi") == 1 << 30
    assert containers.quantity_bytes("256Mi") == 256 << 20
    assert containers.quantity_bytes("500M") == 500_000_000
    assert containers.quantity_bytes("1048576") == 1 << 20
    assert containers.cpu_cores("2") == 2.0 and containers.cpu_cores("250m") == 0.25
    with pytest.raises(ContainerError):
        containers.quantity_bytes("lots")


SITE = containers.SITE_PACKAGES


def files(*paths: str) -> list[ImageFile]:
    return [ImageFile(path, 100, path.endswith("/")) for path in paths]


def test_a_clean_image_passes() -> None:
    clean = [
        ImageFile("opt/venv/pyvenv.cfg", 10, False),
        ImageFile(f"{SITE}/onnxruntime/__init__.py", 10, False),
        ImageFile(f"{SITE}/mlflow_skinny-3.17.2.dist-info", 0, True),
        ImageFile(f"{SITE}/onnxruntime-1.32.0.dist-info", 0, True),
        ImageFile("app/model/model.skops", 10, False),
        ImageFile("app/model/model.json", 10, False),
    ]
    assert containers.content_problems(clean) == []
    assert containers.distributions(clean) == {"mlflow-skinny", "onnxruntime"}


@pytest.mark.parametrize(
    ("path", "is_dir", "problem"),
    [
        ("app/data/raw/processed.cleveland.data", False, "data file"),
        ("app/heart-disease.names", False, "data file"),
        ("app/mlflow.db", False, "MLflow store"),
        ("app/mlruns/0/meta.yaml", False, "MLflow store"),
        ("app/.git/HEAD", False, "git repository"),
        ("app/tests/test_x.py", False, "tests"),
        (f"{SITE}/pandas/tests/frame.py", False, "tests"),
        ("app/.venv/pyvenv.cfg", False, "virtualenv app/.venv"),
        (f"{SITE}/matplotlib-3.11.2.dist-info", True, "distribution matplotlib"),
        (f"{SITE}/mlflow-3.17.2.dist-info", True, "distribution mlflow"),
        (f"{SITE}/SQLAlchemy-2.1.9.dist-info", True, "distribution sqlalchemy"),
        (f"{SITE}/scikit_learn-1.9.1.dist-info", True, "distribution scikit-learn"),
        (f"{SITE}/scipy-1.17.1.dist-info", True, "distribution scipy"),
    ],
)
def test_what_the_image_must_not_hold_is_found(path: str, is_dir: bool, problem: str) -> None:
    problems = containers.content_problems([ImageFile(path, 1, is_dir)])
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_site_packages_sizes_group_by_package() -> None:
    sizes = containers.site_packages_sizes(
        [
            ImageFile(f"{SITE}/scipy/a.so", 300, False),
            ImageFile(f"{SITE}/scipy.libs/b.so", 200, False),
            ImageFile(f"{SITE}/six.py", 5, False),
            ImageFile(f"{SITE}/six-1.17.0.dist-info/RECORD", 7, False),
            ImageFile(f"{SITE}/scipy", 0, True),
            ImageFile("usr/lib/python3.11/os.py", 50, False),
        ]
    )
    assert sizes == {"scipy": 500, "(metadata)": 7, "six": 5}
    assert list(sizes) == ["scipy", "(metadata)", "six"]
