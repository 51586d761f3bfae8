"""The access file and the grants the bootstrap makes (heartml.registry.bootstrap), pure.

The bootstrap against a real server: tests/integration/test_registry_auth.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from heartml.registry import RegistryError
from heartml.registry.access import EDIT, MANAGE, READ
from heartml.registry.bootstrap import (
    AccessConfig,
    load_access_config,
    plan_grants,
    read_or_create_password,
)


def test_the_access_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "access.yaml"
    good.write_text("version: 1\npromoters: [alice]\npeople: [bob]\n")
    config = load_access_config(good)
    assert config.writers == ("heartml-pipeline", "alice")
    assert config.accounts == ("heartml-pipeline", "heartml-serving", "alice", "bob")
    for text, fragment in (
        ("promoters: [alice]\npeople: [alice]\n", "more than once"),
        ("pipeline: admin\n", "admin"),
        ("people: ['bad name']\n", "not an account name"),
        ("owners: [x]\n", "owners"),
        ("promoters: [\n", "not YAML"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(RegistryError, match=fragment):
            load_access_config(bad)
    with pytest.raises(RegistryError, match="cannot read"):
        load_access_config(tmp_path / "missing.yaml")


def test_the_repository_access_file_loads() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert load_access_config(repo / "configs" / "registry-access.yaml").pipeline


def test_writers_get_manage_and_everyone_else_loses_write_grants() -> None:
    config = AccessConfig(promoters=("alice",), people=("bob",))
    models = ["heart-disease-svm", "heart-disease-knn"]
    held = {
        "heartml-pipeline": {"heart-disease-svm": MANAGE},  # it created svm
        "alice": {"heart-disease-svm": EDIT},  # too little: replaced
        "bob": {"heart-disease-knn": MANAGE},  # a former promoter
        "heartml-serving": {"heart-disease-svm": READ},  # reading is everyone's
    }
    plan = plan_grants(config, models, held)
    assert sorted(plan.revoke) == [("alice", "heart-disease-svm"), ("bob", "heart-disease-knn")]
    assert sorted(plan.grant) == [
        ("alice", "heart-disease-knn", MANAGE),
        ("alice", "heart-disease-svm", MANAGE),
        ("heartml-pipeline", "heart-disease-knn", MANAGE),
    ]
    settled = {
        "heartml-pipeline": dict.fromkeys(models, MANAGE),
        "alice": dict.fromkeys(models, MANAGE),
    }
    again = plan_grants(config, models, settled)
    assert again.revoke == () and again.grant == ()


def test_passwords_are_generated_once_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "heartml-serving.password"
    first, created = read_or_create_password(path)
    assert created and len(first) >= 12
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert read_or_create_password(path) == (first, False)
    path.write_text("short\n")
    with pytest.raises(RegistryError, match="at least 12"):
        read_or_create_password(path)
