"""Every error the gateway gives is an RFC 7807 Problem with the right status, whatever its
cause: validation, a body that is not JSON or not UTF-8, an unknown route or method, a body
too large or of the wrong type, a missing key, a rate limit. Over the real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import API_KEY
from tests.processes import GatewayProcess, cache_server_process

pytestmark = pytest.mark.slow

JSON = {"content-type": "application/json"}
BODY_ROUTES = [
    ("POST", "/query"),
    ("POST", "/v1/caches/c1/entries"),
    ("POST", "/v1/caches/c1/entries/search"),
    ("DELETE", "/v1/caches/c1/entries"),
]


def assert_problem(reply: httpx.Response, status: int, problem_type: str | None = None) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) >= {"type", "title", "status", "detail", "instance"}, body
    assert body["status"] == status and body["detail"] and body["type"].startswith("/errors/")
    assert body["instance"] == reply.request.url.path
    if problem_type is not None:
        assert body["type"] == problem_type


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/query", {}, 422),
        ("POST", "/query", {"query": ""}, 422),
        ("POST", "/query", {"query": "x", "similarity_threshold": 1.5}, 422),
        ("POST", "/query", {"query": "x", "use_cache": "maybe"}, 422),
        ("POST", "/query", {"query": "x" * 9000}, 400),
        ("POST", "/query?cache_id=bad%20id", {"query": "x"}, 422),
        ("POST", "/v1/caches/c1/entries", {"prompt": "p"}, 400),
        ("POST", "/v1/caches/c1/entries", {"prompt": "p", "response": "r", "ttlMillis": -5}, 400),
        (
            "POST",
            "/v1/caches/c1/entries/search",
            {"prompt": "p", "searchStrategies": ["fuzzy"]},
            400,
        ),
        ("POST", "/v1/caches/c1/entries/search", {"prompt": "p", "maxResults": 0}, 400),
        (
            "POST",
            "/v1/caches/c1/entries",
            {"prompt": "p", "response": "r", "attributes": {"bad key": "v"}},
            400,
        ),
        ("DELETE", "/v1/caches/c1/entries/not-an-id", None, 404),
        ("DELETE", "/v1/caches/c1/entries/0b8e4f2c-6a3d-4e1b-9f7a-2c5d8e1f3a6b", None, 404),
        ("DELETE", "/v1/caches/c1/entries/" + "x" * 300, None, 400),
        ("DELETE", "/v1/caches/c1/entries/" + "0" * 32, None, 404),
        ("GET", "/no/such/route", None, 404),
    ],
)
def test_error_paths_are_clear_and_never_500(
    gateway: str, method: str, path: str, body: object, status: int
) -> None:
    reply = httpx.request(method, f"{gateway}{path}", json=body)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["detail"]


def test_oversized_and_malformed_bodies(gateway: str) -> None:
    big = httpx.post(
        f"{gateway}/query",
        content=b"{" + b" " * 2_000_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413
    assert big.json()["type"] == "/errors/payload-too-large"
    broken = httpx.post(
        f"{gateway}/query", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422


def test_chunked_bodies_are_held_to_the_same_limit(gateway: str) -> None:
    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(total // 65536):
            yield b"a" * 65536
        yield b'"}'

    big = httpx.post(
        f"{gateway}/query", content=chunks(2_000_000), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413
    small = httpx.post(
        f"{gateway}/query",
        content=iter([b'{"query": ', b'"chunked hello"}']),
        headers={"content-type": "application/json"},
    )
    assert small.status_code == 200, small.text
    assert small.json()["query"] == "chunked hello"


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize(
    "content",
    [b'{"query": "\xff\xfe not utf-8"}', b"\xc3\x28", b'{"prompt": ', b"[1, 2", b"nul\x00l"],
    ids=["bad-utf8-in-json", "bad-utf8", "truncated", "unclosed-array", "not-json"],
)
def test_bodies_that_cannot_be_parsed_are_problems(
    gateway: str, method: str, path: str, content: bytes
) -> None:
    reply = httpx.request(method, f"{gateway}{path}", content=content, headers=JSON)
    not_text = content.startswith((b'{"query": "\xff', b"\xc3"))
    # Not text at all: refused before any validation, on every route (400). Text but not
    # JSON: the original API's 422 (FastAPI's), the LangCache API's 400.
    status = 400 if not_text or path != "/query" else 422
    assert_problem(reply, status)


def test_unknown_routes_and_methods_are_problems(gateway: str) -> None:
    assert_problem(httpx.get(f"{gateway}/no/such/route"), 404, "/errors/resource-not-found")
    assert_problem(httpx.post(f"{gateway}/v1/caches/c1/nothing", json={}), 404)
    wrong = httpx.put(f"{gateway}/query", json={"query": "x"})
    assert_problem(wrong, 405, "/errors/method-not-allowed")
    assert wrong.headers["allow"] == "POST"
    assert_problem(httpx.get(f"{gateway}/v1/caches/c1/flush"), 405)


def test_a_body_that_is_not_json_is_415(gateway: str) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml", ""):
        headers = {"content-type": content_type} if content_type else {}
        reply = httpx.post(f"{gateway}/query", content=b'{"query": "x"}', headers=headers)
        assert_problem(reply, 415, "/errors/unsupported-media-type")
        assert "application/json" in reply.json()["detail"]
    # JSON by any of its names is read as JSON.
    for headers in (
        {"content-type": "application/json; charset=utf-8"},
        {"content-type": "application/problem+json"},
    ):
        reply = httpx.post(f"{gateway}/query", content=b'{"query": "media types"}', headers=headers)
        assert reply.status_code == 200, reply.text
    # A route without a body needs no content type at all.
    assert httpx.post(f"{gateway}/v1/caches/c415/flush").status_code == 204


def test_refusals_before_routing_are_problems(tmp_path: Path, embedder_process: str) -> None:
    env = {"SEMCACHE_API_KEY": API_KEY}
    with (
        cache_server_process(
            tmp_path,
            embedder_process,
            "--rate-limit-per-s",
            "0.1",
            "--rate-limit-burst",
            "2",
            env=env,
        ) as cache,
        GatewayProcess(cache.address, env=env) as gw,
    ):
        assert_problem(httpx.get(f"{gw.url}/cache/stats"), 401, "/errors/authentication-failed")
        # Unknown routes and wrong methods still ask for the key first: nothing is revealed.
        assert_problem(httpx.get(f"{gw.url}/no/such/route"), 401)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        big = httpx.post(f"{gw.url}/query", content=b" " * 2_000_000, headers={**auth, **JSON})
        assert_problem(big, 413, "/errors/payload-too-large")
        replies = [httpx.get(f"{gw.url}/cache/stats", headers=auth) for _ in range(3)]
        assert_problem(replies[-1], 429, "/errors/too-many-requests")


def test_the_schema_declares_the_problem_of_every_error(gateway: str) -> None:
    schema = httpx.get(f"{gateway}/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            declared = operation["responses"]
            statuses: tuple[str, ...] = (
                ("400", "401", "403", "404", "413", "424", "429", "500")  # the SDK's set
                if path.startswith("/v1/")
                else ("400", "401", "403", "404", "409", "413", "415", "422", "429", "503", "504")
            )
            expected = "/Problem"
            if path == "/v1/chat/completions":  # OpenAI's shape, for the OpenAI SDK
                statuses = ("400", "401", "403", "413", "415", "429", "500", "502", "503", "504")
                expected = "/OpenAIErrorResponse"
            for status in statuses:
                assert status in declared, f"{method.upper()} {path} does not declare {status}"
                content = declared[status]["content"]["application/json"]["schema"]
                want = expected
                if (path, status) == ("/health", "503"):
                    want = "/HealthResponse"  # the contract: a health report that says down
                assert content["$ref"].endswith(want), (method, path, status)
