"""The error body every route may answer with, declared in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class FieldProblem(BaseModel):
    field: str
    rule: str
    message: str


class Problem(BaseModel):
    """RFC 7807 problem details (served as application/json)."""

    type: str = Field(description='e.g. "/errors/invalid-data"')
    title: str
    status: int
    detail: str
    instance: str
    fields: list[FieldProblem] | None = Field(None, description="Per-field validation errors")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Problem} for status in statuses}


# The original API: FastAPI's 422 for bad input, statuses by gRPC code (gateway.errors).
ORIGINAL = problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503, 504)
# The LangCache-compatible API: exactly the error statuses its SDK models.
LANGCACHE = problem_responses(400, 401, 403, 404, 413, 424, 429, 500)
