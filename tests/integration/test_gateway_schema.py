"""schemathesis against the gateway's own OpenAPI schema, over the three real processes:
generated requests (valid and invalid) never get a server error, invalid ones are rejected,
and every response matches the schema (status code, content type, body)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok

from tests.fake_llm import FakeLLM
from tests.processes import GatewayProcess, cache_server_process

pytestmark = pytest.mark.slow


def test_gateway_conforms_to_its_schema(tmp_path: Path, embedder_process: str) -> None:
    with (
        FakeLLM() as llm,
        cache_server_process(
            tmp_path, embedder_process, "--upstream-base-url", llm.base_url
        ) as cache,
        GatewayProcess(cache.address) as gateway,
    ):
        schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
        operations = []
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), f"the schema has an invalid operation: {result}"
            operations.append(result.ok())
        assert len(operations) >= 8
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=25,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def conforms(case: Any) -> None:
                response = case.call()
                assert response.status_code not in (500, 501, 502), (
                    f"{case.method} {case.path}: {response.status_code} {response.text}"
                )
                # The schema cannot say everything the server checks (whitespace-only text,
                # limits set in its settings): a clear 400 for schema-valid input is allowed.
                case.validate_response(response, excluded_checks=[positive_data_acceptance])

            conforms()
