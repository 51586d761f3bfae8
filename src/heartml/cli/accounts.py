"""`heartml registry bootstrap|password|whoami`: the accounts of an authenticated registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from heartml.cli.common import fail, load_settings, user_errors

registry_app = typer.Typer(
    help="Accounts and grants of a registry with authentication (MLflow's basic-auth app).",
    no_args_is_help=True,
)

SecretsDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--secrets-dir",
        help="Where the accounts' passwords are kept, mode 600 (env HEARTML_REGISTRY_SECRETS_DIR).",
    ),
]


@registry_app.command("bootstrap")
def bootstrap(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Who uses the registry (env HEARTML_REGISTRY_ACCESS_CONFIG)."
        ),
    ] = None,
    secrets_dir: SecretsDirOpt = None,
) -> None:
    """Make the server's accounts and grants match the access file (run as the admin).

    Idempotent: the pipeline, serving, promoter and people accounts exist; only the pipeline
    may create experiments and models; the pipeline and the promoters hold MANAGE on every
    model of the family, nobody else writes. Missing passwords are generated into the secrets
    directory.
    """
    from heartml.registry import bootstrap_registry, load_access_config

    settings = load_settings(registry_access_config=config, registry_secrets_dir=secrets_dir)
    with user_errors():
        access = load_access_config(settings.registry_access_config)
        report = bootstrap_registry(settings, access, settings.registry_secrets_dir)
    typer.echo(f"🔐 registry {settings.mlflow_tracking_uri} ({settings.registry_access_config})")
    for line in report.done:
        typer.echo(f"   ✅ {line}")
    for line in report.warnings:
        typer.echo(f"⚠️  warning: {line}", err=True)


@registry_app.command("password")
def password(
    account: Annotated[str, typer.Argument(help="The account whose password is replaced.")],
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="Where the new password goes (mode 600); default SECRETS_DIR/ACCOUNT.password.",
        ),
    ] = None,
    secrets_dir: SecretsDirOpt = None,
) -> None:
    """Give ACCOUNT a new random password, written to a file only, never printed.

    Run as the admin (any account), or as ACCOUNT itself. The old password stops working at
    once: update whoever uses it (the Jenkins credential, the API's Secret, the person).
    """
    from heartml.registry import accounts, bootstrap

    settings = load_settings(registry_secrets_dir=secrets_dir)
    target = file or bootstrap.password_file(settings.registry_secrets_dir, account)
    with user_errors():
        me = accounts.current_account(settings)
        if not me.authenticated:
            fail(f"{settings.mlflow_tracking_uri} has no authentication: no passwords to change")
        staged = target.with_name(target.name + ".next")
        new = bootstrap.new_password()
        bootstrap.write_secret(staged, new)
        try:
            current = accounts.current_password() if me.name == account else None
            accounts.set_password(settings, account, new, current=current)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        staged.replace(target)
    typer.echo(
        f"🔑 new password of '{account}' in {target} (mode 600); the old one no longer works"
    )


@registry_app.command("whoami")
def whoami() -> None:
    """The account the registry authenticates, and what it holds on each model of the family."""
    from heartml.registry import accounts, read_family

    settings = load_settings()
    with user_errors():
        me = accounts.current_account(settings)
        if not me.authenticated:
            typer.echo(
                f"{me} (not authenticated: {settings.mlflow_tracking_uri} has no accounts; "
                "promotions record this name)"
            )
            return
        models = [m.name for m in read_family(settings).models]
        held = accounts.held_on_models(settings, me, models)
    typer.echo(f"{me} (authenticated by {settings.mlflow_tracking_uri})")
    for model, level in held.items():
        typer.echo(f"   {model}: {level}")
