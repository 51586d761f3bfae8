"""Property-based run over the app's own OpenAPI schema (schemathesis): never a 5xx.

Schemathesis generates valid and invalid requests for every documented operation from
``/openapi.json`` and sends them to the app serving the real champion of a trained registry.
(Schemathesis' own pytest integration is not used: its lazy fixture loader predates pytest 9.)
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from heartml.serve.app import create_app
from heartml.settings import Settings

pytestmark = pytest.mark.slow

EXAMPLES = 40


def test_no_generated_request_is_a_server_error(trained_settings: Settings) -> None:
    served = Settings(
        **{**trained_settings.model_dump(), "admin_token": None, "max_batch_size": 50}
    )
    app = create_app(served, follow=False)
    assert app.state.holder.check().result == "reloaded"
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    paths = {op.path for op in operations}
    assert {"/predict", "/predict/batch", "/model", "/ready", "/health", "/schema"} <= paths
    seen: dict[str, set[int]] = {}

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def run(case: schemathesis.Case[Any]) -> None:
                response = case.call()
                seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
                assert response.status_code < 500, (
                    case.method,
                    case.path,
                    case.body,
                    response.text[:300],
                )

            try:
                run()
            except Unsatisfiable:
                # No parameters and no body: there is nothing to make invalid.
                assert mode is GenerationMode.NEGATIVE, operation.path

    # The generator did reach the model: valid patients were scored, invalid ones refused.
    assert 200 in seen["POST /predict"]
    assert 422 in seen["POST /predict"]
