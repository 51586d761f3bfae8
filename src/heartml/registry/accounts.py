"""The registry's accounts, through the REST API of MLflow's basic-auth app.

Who the caller is (``users/current``), what an account holds on a model (``users/permissions/get``,
resolved the way the server's own checks resolve it), and the admin's tools: users, passwords,
grants and roles. Requests go through MLflow's own HTTP helper, so they carry the credentials
every MLflow call carries (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, or
``MLFLOW_TRACKING_TOKEN``). The rules (levels, what a change needs) are in
:mod:`heartml.registry.access`; nothing here decides.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heartml.registry.access import (
    AccessDeniedError,
    Account,
    missing_access,
)
from heartml.registry.mlflow_io import configure_mlflow, configured_username, describe_failure
from heartml.registry.values import RegistryError

if TYPE_CHECKING:
    from heartml.settings import Settings

USERS = "/api/2.0/mlflow/users"
PERMISSIONS = "/api/3.0/mlflow/users/permissions"
ROLES = "/api/3.0/mlflow/roles"
USER_ROLES = "/api/3.0/mlflow/users/roles/list"
WORKSPACES = "/api/3.0/mlflow/workspaces"
DEFAULT_WORKSPACE = "default"


def is_server(settings: Settings) -> bool:
    return settings.mlflow_tracking_uri.startswith(("http://", "https://"))


def claimed_name() -> str:
    """Who promotes where nobody is authenticated: HEARTML_PROMOTED_BY, else user@host."""
    if explicit := os.environ.get("HEARTML_PROMOTED_BY"):
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def current_password() -> str | None:
    """The password the requests carry (MLFLOW_TRACKING_PASSWORD)."""
    return os.environ.get("MLFLOW_TRACKING_PASSWORD") or None


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]

    @property
    def error_code(self) -> str:
        return str(self.body.get("error_code", ""))


def call_auth_api(
    settings: Settings,
    method: str,
    endpoint: str,
    *,
    params: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Reply:
    """One request to the auth app, as the configured account (or as ``username``)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    configure_mlflow(settings)
    creds = get_default_host_creds(settings.mlflow_tracking_uri)  # type: ignore[no-untyped-call]
    if username is not None:
        creds = MlflowHostCreds(  # type: ignore[no-untyped-call]
            settings.mlflow_tracking_uri,
            username=username,
            password=password,
            ignore_tls_verification=creds.ignore_tls_verification,
            server_cert_path=creds.server_cert_path,
        )
    try:
        response = http_request(  # type: ignore[no-untyped-call]
            creds,
            endpoint,
            method,
            max_retries=settings.registry_retries,
            params=dict(params) if params is not None else None,
            json=dict(body) if body is not None else None,
        )
    except Exception as exc:
        raise describe_failure(exc, settings) from exc
    try:
        payload = response.json() if response.content else {}
    except ValueError:
        payload = {"message": response.text}
    return Reply(response.status_code, payload if isinstance(payload, dict) else {})


def current_account(settings: Settings) -> Account:
    """The account the server authenticated; a claimed name where the store has no accounts.

    An authenticated account is the only name a promotion records on a server with
    authentication: ``HEARTML_PROMOTED_BY`` cannot stand in for it.
    """
    if not is_server(settings):
        return Account(claimed_name(), authenticated=False)
    reply = call_auth_api(settings, "GET", f"{USERS}/current")
    if reply.status == 200:
        return Account(str(reply.body["user"]["username"]), authenticated=True)
    if reply.status == 404:  # a server without the auth app
        return Account(claimed_name(), authenticated=False)
    raise refusal(settings, reply, "read the registry")


def refusal(settings: Settings, reply: Reply, action: str) -> RegistryError:
    from heartml.registry.access import refused_message

    if reply.status in (401, 403):
        return AccessDeniedError(
            refused_message(
                settings.mlflow_tracking_uri, configured_username(), reply.status, action
            )
        )
    detail = reply.body.get("message") or reply.error_code or f"HTTP {reply.status}"
    return RegistryError(f"registry error: could not {action}: {' '.join(str(detail).split())}")


def held_on_models(settings: Settings, account: Account, models: Iterable[str]) -> dict[str, str]:
    """The level ``account`` holds on each model, as the server resolves it (grants, default).

    An account may ask this of itself; an admin of anyone.
    """
    return {
        model: held_on(settings, account.name, "registered_model", model)
        for model in sorted(set(models))
    }


def require_access(
    settings: Settings, account: Account, needs: Mapping[str, str], action: str
) -> None:
    """Refuse, before anything is written, a change the account may not make in full.

    Nothing is checked where nobody is authenticated (the embedded store, a server without
    the auth app): there every account may do everything.
    """
    if not account.authenticated or not needs:
        return
    missing = missing_access(needs, held_on_models(settings, account, needs))
    if missing:
        raise AccessDeniedError(
            f"account '{account}' may not {action} on {settings.mlflow_tracking_uri}: "
            f"it needs {'; '.join(missing)} (nothing was changed)"
        )


def require_experiment_access(settings: Settings, experiment: str) -> None:
    """Refuse training into an experiment the account may not log runs in (EDIT)."""
    from heartml.registry.access import EDIT, at_least

    account = current_account(settings)
    if not account.authenticated:
        return
    held = held_on(settings, account.name, "experiment", experiment)
    if not at_least(held, EDIT):
        raise AccessDeniedError(
            f"account '{account}' may not log runs in experiment '{settings.experiment_name}' "
            f"on {settings.mlflow_tracking_uri}: it needs EDIT there (it holds {held}); "
            "training runs as the pipeline account"
        )


# --------------------------------------------------------------------------------------------
# The admin's tools (and the pipeline's grants on the models it creates)
# --------------------------------------------------------------------------------------------


def expect(settings: Settings, reply: Reply, action: str, *ok: int) -> Reply:
    if reply.status in (200, *ok):
        return reply
    raise refusal(settings, reply, action)


def user_exists(settings: Settings, username: str) -> bool:
    reply = call_auth_api(settings, "GET", f"{USERS}/get", params={"username": username})
    if reply.status == 200:
        return True
    if reply.status == 404 or reply.error_code == "RESOURCE_DOES_NOT_EXIST":
        return False
    raise refusal(settings, reply, f"look up account '{username}'")


def list_users(settings: Settings) -> list[dict[str, Any]]:
    reply = expect(settings, call_auth_api(settings, "GET", f"{USERS}/list"), "list accounts")
    users: list[dict[str, Any]] = reply.body.get("users", [])
    return users


def create_user(settings: Settings, username: str, password: str) -> None:
    body = {"username": username, "password": password}
    expect(
        settings,
        call_auth_api(settings, "POST", f"{USERS}/create", body=body),
        f"create account '{username}'",
    )


def password_works(settings: Settings, username: str, password: str) -> bool:
    """Does the server accept this password for this account (a login, nothing changed)?"""
    reply = call_auth_api(settings, "GET", f"{USERS}/current", username=username, password=password)
    return reply.status == 200


def set_password(
    settings: Settings, username: str, password: str, current: str | None = None
) -> None:
    """An admin sets anyone's password; an account changing its own gives the current one."""
    body = {"username": username, "password": password}
    if current is not None:
        body["current_password"] = current
    expect(
        settings,
        call_auth_api(settings, "PATCH", f"{USERS}/update-password", body=body),
        f"set the password of '{username}'",
    )


def grants_of(settings: Settings, username: str) -> list[dict[str, Any]]:
    """Every grant the account holds, through its own or a named role."""
    reply = expect(
        settings,
        call_auth_api(settings, "GET", f"{PERMISSIONS}/list", params={"username": username}),
        f"list the grants of '{username}'",
    )
    grants: list[dict[str, Any]] = reply.body.get("permissions", [])
    return grants


def grant(
    settings: Settings, username: str, resource_type: str, resource_id: str, level: str
) -> bool:
    """Grant a level; False when the account holds a grant on the resource already."""
    body = {
        "username": username,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "permission": level,
    }
    reply = call_auth_api(settings, "POST", f"{PERMISSIONS}/grant", body=body)
    if reply.error_code == "RESOURCE_ALREADY_EXISTS":
        return False
    expect(settings, reply, f"grant {level} on {resource_id} to '{username}'")
    return True


def revoke(settings: Settings, username: str, resource_type: str, resource_id: str) -> None:
    body = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    expect(
        settings,
        call_auth_api(settings, "POST", f"{PERMISSIONS}/revoke", body=body),
        f"revoke the grant on {resource_id} of '{username}'",
    )


def workspaces_enabled(settings: Settings) -> bool:
    """Does the server gate creating experiments and models on a workspace grant?"""
    return call_auth_api(settings, "GET", WORKSPACES).status == 200


def ensure_workspace_role(settings: Settings, role: str, username: str) -> list[str]:
    """A role in the default workspace that may create experiments and models (``USE`` on the
    workspace), assigned to ``username``; returns what was done."""
    done: list[str] = []
    roles = expect(
        settings,
        call_auth_api(settings, "GET", f"{ROLES}/list", params={"workspace": DEFAULT_WORKSPACE}),
        "list roles",
    ).body.get("roles", [])
    found = next((r for r in roles if r.get("name") == role), None)
    if found is None:
        found = expect(
            settings,
            call_auth_api(
                settings,
                "POST",
                f"{ROLES}/create",
                body={"workspace": DEFAULT_WORKSPACE, "name": role},
            ),
            f"create role '{role}'",
        ).body["role"]
        done.append(f"created role '{role}'")
    role_id = int(found["id"])
    permissions = expect(
        settings,
        call_auth_api(
            settings, "GET", f"{ROLES}/permissions/list", params={"role_id": str(role_id)}
        ),
        f"list the permissions of role '{role}'",
    ).body.get("role_permissions", [])
    if not any(
        p.get("resource_type") == "workspace" and p.get("permission") in ("USE", "MANAGE")
        for p in permissions
    ):
        body = {
            "role_id": role_id,
            "resource_type": "workspace",
            "resource_pattern": "*",
            "permission": "USE",
        }
        expect(
            settings,
            call_auth_api(settings, "POST", f"{ROLES}/permissions/add", body=body),
            f"let role '{role}' create experiments and models",
        )
        done.append(f"role '{role}' may create experiments and models")
    holders = expect(
        settings,
        call_auth_api(settings, "GET", USER_ROLES, params={"username": username}),
        f"list the roles of '{username}'",
    ).body.get("roles", [])
    if not any(int(r.get("id", -1)) == role_id for r in holders):
        expect(
            settings,
            call_auth_api(
                settings, "POST", f"{ROLES}/assign", body={"username": username, "role_id": role_id}
            ),
            f"assign role '{role}' to '{username}'",
        )
        done.append(f"assigned role '{role}' to '{username}'")
    return done


def is_admin(settings: Settings, username: str) -> bool:
    reply = expect(
        settings,
        call_auth_api(settings, "GET", f"{USERS}/get", params={"username": username}),
        f"look up account '{username}'",
    )
    return bool(reply.body.get("user", {}).get("is_admin"))


def experiment_id(settings: Settings, name: str) -> str | None:
    """The id of the experiment called ``name``; None when there is none."""
    reply = call_auth_api(
        settings,
        "GET",
        "/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": name},
    )
    if reply.status == 404 or reply.error_code == "RESOURCE_DOES_NOT_EXIST":
        return None
    return str(
        expect(settings, reply, f"read experiment '{name}'").body["experiment"]["experiment_id"]
    )


def held_on(settings: Settings, username: str, resource_type: str, resource_id: str) -> str:
    """The level ``username`` holds on one resource, as the server resolves it."""
    reply = expect(
        settings,
        call_auth_api(
            settings,
            "GET",
            f"{PERMISSIONS}/get",
            params={
                "username": username,
                "resource_type": resource_type,
                "resource_id": resource_id,
            },
        ),
        f"look up the permissions of '{username}' on {resource_id}",
    )
    return str(reply.body.get("permission", "NO_PERMISSIONS"))


def replace_grant(
    settings: Settings, username: str, resource_type: str, resource_id: str, level: str
) -> None:
    """Grant ``level``, replacing the account's own grant on the resource if it has one."""
    if not grant(settings, username, resource_type, resource_id, level):
        revoke(settings, username, resource_type, resource_id)
        grant(settings, username, resource_type, resource_id, level)
