"""Accounts and grants of the authenticated registry, made to match a versioned file.

``configs/registry-access.yaml`` names the pipeline, the serving account, the promoters and
the people who read. :func:`bootstrap_registry`, run with the admin's credentials, makes the
server match it, and running it again changes nothing:

- each account exists; the pipeline's and the serving account's passwords are the ones in the
  secrets directory (generated there, mode 600, when missing: rotating one is replacing its
  file and running the bootstrap again); a person's first password is generated there once, to
  hand over, and is theirs to change afterwards;
- the pipeline may create experiments and models (a role granting ``USE`` on the workspace):
  nobody else may, so no other account can add a model to the family;
- on the experiment the pipeline holds ``EDIT``; on every ``heart-disease-*`` model the
  pipeline and each promoter hold ``MANAGE``, and every other account's write grant is taken
  back (:func:`plan_grants`).

Models the next training creates need no bootstrap: MLflow gives their creator (the pipeline)
``MANAGE``, and the pipeline grants ``MANAGE`` to each promoter of this file as it registers
them (:func:`share_with_promoters`).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from heartml.registry.access import EDIT, MANAGE, at_least
from heartml.registry.values import RegistryError

if TYPE_CHECKING:
    from heartml.settings import Settings

PIPELINE_ROLE = "heartml-pipeline"
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
RESERVED = frozenset({"admin"})


class AccessConfig(BaseModel):
    """``configs/registry-access.yaml``: who uses the registry, and as what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    pipeline: str = "heartml-pipeline"
    serving: str = "heartml-serving"
    promoters: tuple[str, ...] = ()
    people: tuple[str, ...] = ()

    @field_validator("pipeline", "serving")
    @classmethod
    def _one_name(cls, name: str) -> str:
        return _check_name(name)

    @field_validator("promoters", "people")
    @classmethod
    def _names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_name(n) for n in names)

    @model_validator(mode="after")
    def _distinct(self) -> AccessConfig:
        names = [self.pipeline, self.serving, *self.promoters, *self.people]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"each account has one part; named more than once: {twice}")
        return self

    @property
    def writers(self) -> tuple[str, ...]:
        """The accounts that hold MANAGE on every model of the family."""
        return (self.pipeline, *self.promoters)

    @property
    def service_accounts(self) -> tuple[str, ...]:
        """Accounts whose password the secrets directory decides (rotated by the bootstrap)."""
        return (self.pipeline, self.serving)

    @property
    def accounts(self) -> tuple[str, ...]:
        return (*self.service_accounts, *self.promoters, *self.people)


def _check_name(name: str) -> str:
    if not ACCOUNT_NAME.match(name):
        raise ValueError(f"{name!r} is not an account name (letters, digits, _ . @ -)")
    if name in RESERVED:
        raise ValueError(f"{name!r} is MLflow's admin: name another account")
    return name


def load_access_config(path: Path) -> AccessConfig:
    """The file, validated; RegistryError (one line) when missing or wrong."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return AccessConfig.model_validate(data)
    except OSError as exc:
        raise RegistryError(f"cannot read the access file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path} is not YAML: {' '.join(str(exc).split())}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise RegistryError(f"{path}: {where}: {first['msg']}") from exc


# --------------------------------------------------------------------------------------------
# Grants: a pure plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrantPlan:
    """Grants to take back (an account that should not write), then grants to make."""

    revoke: tuple[tuple[str, str], ...] = ()  # (account, model)
    grant: tuple[tuple[str, str, str], ...] = ()  # (account, model, level)


def plan_grants(
    config: AccessConfig, models: Iterable[str], held: Mapping[str, Mapping[str, str]]
) -> GrantPlan:
    """Make every writer hold MANAGE on every model, and nobody else hold more than READ.

    ``held`` is each account's own grants on the family's models (admins left out). A writer
    holding less than MANAGE loses that grant first, because MLflow keeps one grant per
    account and model.
    """
    revoke: list[tuple[str, str]] = []
    grant: list[tuple[str, str, str]] = []
    writers = set(config.writers)
    for model in sorted(set(models)):
        for account in sorted(writers):
            level = held.get(account, {}).get(model)
            if level is not None and at_least(level, MANAGE):
                continue
            if level is not None:
                revoke.append((account, model))
            grant.append((account, model, MANAGE))
        for account, grants in sorted(held.items()):
            level = grants.get(model)
            if account not in writers and level is not None and at_least(level, "USE"):
                revoke.append((account, model))
    return GrantPlan(tuple(revoke), tuple(grant))


# --------------------------------------------------------------------------------------------
# Passwords in the secrets directory
# --------------------------------------------------------------------------------------------


def password_file(directory: Path, account: str) -> Path:
    return directory / f"{account}.password"


def new_password() -> str:
    return secrets.token_urlsafe(24)  # 32 characters; MLflow asks for at least 12


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` readable by its owner only (the directory too)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    tmp.replace(path)


def read_or_create_password(path: Path) -> tuple[str, bool]:
    """The password in ``path``; a new one written there when the file is missing."""
    if path.is_file():
        password = path.read_text().strip()
        if len(password) < 12:
            raise RegistryError(f"{path}: a password needs at least 12 characters")
        return password, False
    password = new_password()
    write_secret(path, password)
    return password, True


# --------------------------------------------------------------------------------------------
# Applying it
# --------------------------------------------------------------------------------------------


@dataclass
class BootstrapReport:
    """What the bootstrap did (or found already done), one line each."""

    done: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def bootstrap_registry(
    settings: Settings, config: AccessConfig, secrets_dir: Path
) -> BootstrapReport:
    """Make the server's accounts and grants match ``config`` (see the module's docstring)."""
    from heartml.registry import accounts
    from heartml.registry.mlflow_io import read_family

    report = BootstrapReport()
    admin = accounts.current_account(settings)
    if not admin.authenticated:
        raise RegistryError(
            f"{settings.mlflow_tracking_uri} has no authentication (or is not a server): "
            "nothing to bootstrap"
        )
    if not accounts.is_admin(settings, admin.name):
        raise RegistryError(
            f"account '{admin}' is not an admin: run the bootstrap with the admin's "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    existing = {u["username"]: bool(u.get("is_admin")) for u in accounts.list_users(settings)}
    for account in config.accounts:
        report.done.append(_ensure_account(settings, config, account, existing, secrets_dir))

    if accounts.workspaces_enabled(settings):
        report.done += accounts.ensure_workspace_role(settings, PIPELINE_ROLE, config.pipeline)
    else:
        report.warnings.append(
            "workspaces are off on this server (MLFLOW_ENABLE_WORKSPACES): every account may "
            "create registered models, and so add one to the family"
        )

    experiment = accounts.experiment_id(settings, settings.experiment_name)
    if experiment is not None:
        held = accounts.held_on(settings, config.pipeline, "experiment", experiment)
        if not at_least(held, EDIT):
            accounts.replace_grant(settings, config.pipeline, "experiment", experiment, EDIT)
            report.done.append(
                f"'{config.pipeline}' may log runs in experiment '{settings.experiment_name}'"
            )

    models = [m.name for m in read_family(settings).models]
    users = [name for name, is_admin in existing.items() if not is_admin]
    users += [a for a in config.accounts if a not in existing]
    family = set(models)
    held_grants = {
        user: {
            g["resource_pattern"]: g["permission"]
            for g in accounts.grants_of(settings, user)
            if g.get("resource_type") == "registered_model"
            and g.get("resource_pattern") in family
            and str(g.get("role_name", "")).startswith("__user_")
        }
        for user in users
    }
    plan = plan_grants(config, models, held_grants)
    for user, model in plan.revoke:
        accounts.revoke(settings, user, "registered_model", model)
        if user not in config.writers:
            report.done.append(f"took back the write grant of '{user}' on {model}")
    for user, model, level in plan.grant:
        accounts.grant(settings, user, "registered_model", model, level)
        report.done.append(f"granted {level} on {model} to '{user}'")
    if not plan.revoke and not plan.grant:
        report.done.append(
            f"grants on the {len(models)} model(s) of the family already match the file"
        )
    return report


def _ensure_account(
    settings: Settings,
    config: AccessConfig,
    account: str,
    existing: Mapping[str, bool],
    secrets_dir: Path,
) -> str:
    from heartml.registry import accounts

    path = password_file(secrets_dir, account)
    service = account in config.service_accounts
    if account not in existing:
        password, _ = read_or_create_password(path)
        accounts.create_user(settings, account, password)
        if service:
            return f"created account '{account}' (password in {path})"
        return f"created account '{account}' (first password in {path}: hand it over)"
    if existing[account]:
        raise RegistryError(f"account '{account}' is an admin: name another account")
    if not service:
        return f"account '{account}' exists"
    password, created = read_or_create_password(path)
    if created or not accounts.password_works(settings, account, password):
        accounts.set_password(settings, account, password)
        return f"set the password of '{account}' to the one in {path}"
    return f"account '{account}' exists, its password is the one in {path}"


def share_with_promoters(settings: Settings, models: Iterable[str]) -> list[str]:
    """Grant MANAGE on ``models`` (just registered) to every promoter of the access file.

    The account registering them created them, so MLflow made it their manager, and a manager
    may grant. Returns warnings (a grant that failed never fails training: the next bootstrap
    makes it); nothing happens where nobody is authenticated or no access file exists.
    """
    from heartml.registry import accounts

    path = settings.registry_access_config
    if not accounts.is_server(settings) or not path.is_file():
        return []
    if not accounts.current_account(settings).authenticated:
        return []
    config = load_access_config(path)
    warnings: list[str] = []
    for model in sorted(set(models)):
        for promoter in config.promoters:
            try:
                accounts.grant(settings, promoter, "registered_model", model, MANAGE)
            except RegistryError as exc:
                warnings.append(f"could not let '{promoter}' promote {model}: {exc}")
    return warnings
