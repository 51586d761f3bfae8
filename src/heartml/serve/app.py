"""The FastAPI application: ``create_app(settings)`` wires settings, model holder and routers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic.json_schema import models_json_schema

import heartml
from heartml.data.patient import PatientFeatures
from heartml.data.sites import check_site
from heartml.serve.deps import json_response
from heartml.serve.errors import ApiError, InvalidInputError
from heartml.serve.evidence import LiveEvidence
from heartml.serve.holder import ModelHolder, ModelSource, source_for
from heartml.serve.metrics import ServeMetrics
from heartml.serve.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from heartml.serve.routes import admin, health, model, predict, schema
from heartml.serve.routes import metrics as metrics_routes
from heartml.serve.schemas import BatchRequest
from heartml.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """Heart-disease risk from the 13 UCI features, served by the registry's champion.

The model follows promotions: the champion (alias, else the Production stage) is checked every
`HEARTML_RELOAD_INTERVAL_S` seconds and swapped in without dropping requests.

A request may name its site (query parameter `site`, or header `X-Heartml-Site`; the
deployment's default is `HEARTML_SITE`): the site's champion (alias `champion-<site>`, followed
like the global one) answers when it has one, else the global champion. Every answer names
the model that gave it and whether it was adapted for the site (`site_adapted`).
"""


def create_app(
    settings: Settings,
    *,
    source: ModelSource | None = None,
    follow: bool = True,
    load_before_serving: bool = False,
) -> FastAPI:
    """The API over ``settings``; ``source`` defaults to the registry or ``model_dir``.

    ``follow=False`` skips the background loader (tests drive ``app.state.holder.check()``).
    ``load_before_serving``: accept no connection before the first load attempt is over.
    """
    if settings.site is not None:
        check_site(settings.site)  # `heartml serve` says it in one line before this
    metrics = ServeMetrics()
    evidence = LiveEvidence(settings, metrics.registry)
    holder = ModelHolder(
        source or source_for(settings),
        metrics,
        settings.reload_interval_s,
        on_check=evidence.follow,
        on_sites=evidence.follow_sites,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        evidence.start()
        if follow:
            holder.start()
            if load_before_serving:
                await asyncio.to_thread(holder.first_check_done.wait)
        try:
            yield
        finally:
            holder.stop()
            evidence.close()  # after the last request: what was answered gets written

    app = FastAPI(
        title="heartml",
        version=getattr(heartml, "__version__", "0.1.0"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.evidence = evidence

    for router in (
        predict.router,  # first: the router tries routes in order, and these are the hot ones
        health.router,
        model.router,
        schema.router,
        metrics_routes.router,
        admin.router,
    ):
        app.include_router(router)

    # Every error status is answered here, from its ApiError type (heartml.serve.errors).
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        # FastAPI's locations already start with "body", "query" or "header".
        return InvalidInputError.from_errors(list(exc.errors()), ()).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_response({"detail": f"internal error: {type(exc).__name__}"}, 500)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            # A browser client may read the request id it has to quote about an answer.
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts 413s too

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            # The prediction bodies are parsed by the routes, so FastAPI does not see their
            # models: add them to the components the routes' requestBody refers to.
            _, extra = models_json_schema(
                [(PatientFeatures, "validation"), (BatchRequest, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            spec.setdefault("components", {}).setdefault("schemas", {}).update(extra["$defs"])
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings from the environment (``heartml serve`` sets it).

    The workers share one listening socket and the kernel hands each connection to any of
    them: one still loading its model would answer 503 while another has told the readiness
    probe it is ready, so a worker takes connections only once its first load is over.
    """
    return create_app(Settings(), load_before_serving=True)
