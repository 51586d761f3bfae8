"""What every command shares: exit codes, the one-line error, settings from options."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import NoReturn

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from heartml.errors import UserError, one_line
from heartml.settings import Settings, describe_invalid, env_name

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 2


def setup_logging() -> None:
    level = os.environ.get("HEARTML_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    # MLflow logs every run URL and registration at INFO; the tables say it better. The
    # variable reaches an MLflow imported later, the level one imported already.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # MLflow draws a progress bar on stderr for every download of a model's artifacts; a
    # command's stderr is its one-line error, and the download takes a fraction of a second.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one line to stderr and exit: the only way a heartml command reports an error."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Known failures become one line and exit 1; anything else too, unless HEARTML_DEBUG."""
    try:
        yield
    except typer.Exit:
        raise
    except UserError as exc:
        fail(str(exc))
    except Exception as exc:
        if os.environ.get("HEARTML_DEBUG"):
            raise
        fail(f"unexpected {type(exc).__name__}: {one_line(exc)} (set HEARTML_DEBUG=1 for details)")


def load_settings(*, options: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """The settings, with the options the user gave (None: not given) over the environment.

    An invalid value fails in one line that names it as the user set it: the environment
    variable, or the option, ``--<field>`` in kebab case unless ``options`` maps the field to
    another (``{"promotion_margin": "--margin"}``).
    """
    values = {k: v for k, v in overrides.items() if v is not None}

    def name_of(field: str) -> str:
        if field not in values:
            return env_name(field)
        return (options or {}).get(field) or f"--{field.replace('_', '-')}"

    try:
        return Settings(**values)  # type: ignore[arg-type]
    except (ValidationError, SettingsError) as exc:
        fail(describe_invalid(exc, name_of))
    except Exception as exc:  # an unreadable .env file, for one
        fail(f"invalid settings: {one_line(exc)}")


def format_score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
