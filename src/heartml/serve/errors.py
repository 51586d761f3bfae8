"""Every error answer of the API: one exception type per status, answered by one handler.

A route, a dependency or the body-limit middleware raises the error; the one handler
``create_app`` registers answers it with :meth:`ApiError.response`, so each status has one
body and one set of headers wherever it arises. The bodies are those of
:class:`heartml.serve.schemas.Problem` (``{"detail": "<one line>"}``) and, for 422,
:class:`heartml.serve.schemas.ValidationErrorBody` (one ``{loc, msg, type}`` per bad field,
without the input echoed back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from heartml.serve.deps import JSONBytes, json_bytes

if TYPE_CHECKING:
    from fastapi.responses import Response
    from pydantic import ValidationError


class ApiError(Exception):
    """An error answered as ``{"detail": ...}`` with :attr:`status` and ``headers``."""

    status: ClassVar[int]

    def __init__(self, detail: Any, **headers: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers

    def response(self) -> Response:
        return JSONBytes(json_bytes({"detail": self.detail}), self.status, **self.headers)


class UnauthorizedError(ApiError):
    """401: the bearer token is missing or wrong."""

    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, **{"WWW-Authenticate": "Bearer"})


class DisabledError(ApiError):
    """404: an endpoint switched off by the settings."""

    status = 404


class BodyTooLargeError(ApiError):
    """413: a body, or a batch, larger than the configured limit."""

    status = 413

    @classmethod
    def over_bytes(cls, max_bytes: int, **headers: str) -> BodyTooLargeError:
        return cls(f"request body larger than {max_bytes} bytes", **headers)


class InvalidInputError(ApiError):
    """422: one ``{loc, msg, type}`` entry per bad field."""

    status = 422

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        super().__init__(entries)

    @classmethod
    def from_errors(
        cls, errors: list[Any], prefix: tuple[str | int, ...] = ("body",)
    ) -> InvalidInputError:
        """From pydantic's (or FastAPI's) error dictionaries, located under ``prefix``."""
        return cls(
            [
                {"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]}
                for error in errors
            ]
        )

    @classmethod
    def from_validation(cls, exc: ValidationError) -> InvalidInputError:
        """A body that pydantic refused."""
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        return cls.from_errors(errors)

    @classmethod
    def bad_site(cls, location: tuple[str, str], message: str) -> InvalidInputError:
        """A malformed site name in the query or a header (``check_site``'s message)."""
        return cls([{"loc": list(location), "msg": message, "type": "site_invalid"}])

    @classmethod
    def from_json_error(cls, exc: Exception) -> InvalidInputError:
        """A body that is not JSON: the parser's message, cut to a line."""
        return cls([{"loc": ["body"], "msg": f"Invalid JSON: {exc}"[:200], "type": "json_invalid"}])


class ExplanationUnavailableError(ApiError):
    """409: ``explain=true`` for a served version registered without its explainer files."""

    status = 409

    @classmethod
    def for_version(cls, ref: str) -> ExplanationUnavailableError:
        return cls(
            f"{ref} has no explainer this server can read (registered without explainer "
            "files, or they failed to load: the server's log says why): explanations are "
            "unavailable for this version (ask without explain=true, or serve a version "
            "trained since)"
        )


class NotReadyError(ApiError):
    """503: no model is loaded yet; the detail says why."""

    status = 503
