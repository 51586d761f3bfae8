"""Operator actions, behind a bearer token (disabled when no token is configured)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from heartml.serve.deps import HolderDep, SettingsDep, json_response
from heartml.serve.errors import DisabledError, UnauthorizedError
from heartml.serve.routes.model import model_info
from heartml.serve.schemas import Problem, ReloadResult

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/reload",
    response_model=ReloadResult,
    summary="Look for the champion now; load and swap it in if it changed",
    responses={
        401: {"model": Problem, "description": "Missing or wrong bearer token"},
        404: {"model": Problem, "description": "Disabled: HEARTML_ADMIN_TOKEN is not set"},
        502: {"model": ReloadResult, "description": "The registry or the load failed"},
    },
)
async def reload_model(
    settings: SettingsDep,
    holder: HolderDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not expected:
        raise DisabledError("admin endpoints are disabled: HEARTML_ADMIN_TOKEN is not set")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise UnauthorizedError("a valid bearer token is required")
    # The load runs in a worker thread: predictions keep being served meanwhile.
    outcome = await run_in_threadpool(holder.check)
    body = {"result": outcome.result, "message": outcome.message, "model": model_info(holder)}
    return json_response(body, 502 if outcome.result == "failed" else 200)
