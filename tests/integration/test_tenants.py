"""Tenants on one stack, real processes: each key reaches its own caches and nothing else, over
every API (REST, the LangCache SDK, the OpenAI SDK, gRPC); limits are per key; a revoked key
stops working within the reload interval; the operator's upstream is no open proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from langcache import LangCache

from semcache_client import CacheClient, TlsConfig
from semcache_client import errors as client_errors
from service_runtime.keys import entry_for, mint_key
from tests.certificates import Pair, make_ca, make_cert
from tests.fake_llm import FakeLLM
from tests.integration.test_langcache_sdk_errors import expect
from tests.processes import REPO, GatewayProcess, ServiceProcess, cache_server_process, free_port

pytestmark = pytest.mark.slow

MODEL = "gpt-test"
RELOAD_S = 0.5


@dataclass
class Stack:
    url: str
    cache: ServiceProcess
    keys_file: Path
    keys: dict[str, str]  # key id -> the key
    entries: list[dict[str, Any]]
    llm: FakeLLM

    def auth(self, key_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key_id]}"}

    def write_keys(self) -> None:
        tmp = self.keys_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": self.entries}))
        tmp.replace(self.keys_file)  # atomic, as a Kubernetes Secret update is


def _entries(keys: dict[str, str]) -> list[dict[str, Any]]:
    def entry(key_id: str, caches: list[str], actions: list[str], **extra: Any) -> dict[str, Any]:
        return {**entry_for(keys[key_id], key_id, caches, actions), **extra}

    return [
        entry("alpha", ["alpha", "alpha-*"], ["read", "write", "admin"]),
        entry("beta", ["beta"], ["read", "write", "admin"]),
        entry("reader", ["alpha"], ["read"]),
        entry("noisy", ["noisy"], ["read", "write"], rate_per_s=1, burst=3),
        entry("quiet", ["quiet"], ["read", "write"]),
        entry("proxy", ["chat"], ["read"], passthrough=True),
        entry("frugal", ["frugal"], ["read", "write"], upstream_requests_per_day=2),
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, embedder_process: str) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("tenants")
    keys = {
        name: mint_key()
        for name in ("alpha", "beta", "reader", "noisy", "quiet", "proxy", "frugal")
    }
    env = {"SEMCACHE_KEYS_FILE": str(folder / "keys.json"), "SEMCACHE_KEYS_RELOAD_S": "0.5"}
    with FakeLLM() as llm:
        stack = Stack("", None, folder / "keys.json", keys, _entries(keys), llm)  # type: ignore[arg-type]
        stack.write_keys()
        with (
            cache_server_process(
                folder / "data",
                embedder_process,
                "--upstream-base-url",
                llm.base_url,
                "--upstream-model",
                MODEL,
                env=env,
            ) as cache,
            GatewayProcess(cache.address, env=env) as gateway,
        ):
            stack.url, stack.cache = gateway.url, cache
            yield stack


def _set(stack: Stack, key_id: str, cache_id: str, prompt: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/caches/{cache_id}/entries",
        json={"prompt": prompt, "response": f"{key_id}'s answer"},
        headers=stack.auth(key_id),
    )


def _search(stack: Stack, key_id: str, cache_id: str, prompt: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/caches/{cache_id}/entries/search",
        json={"prompt": prompt},
        headers=stack.auth(key_id),
    )


def test_a_key_reaches_its_own_caches_and_no_other_over_rest(stack: Stack) -> None:
    assert _set(stack, "alpha", "alpha", "What is alpha's secret?").status_code == 201
    assert _set(stack, "alpha", "alpha-2", "A cache by prefix").status_code == 201
    assert _search(stack, "alpha", "alpha", "What is alpha's secret?").json()["data"]
    # beta holds none of alpha's caches: not read, not written, not flushed, no stats.
    refusals = [
        _search(stack, "beta", "alpha", "What is alpha's secret?"),
        _set(stack, "beta", "alpha", "planted by beta"),
        httpx.post(f"{stack.url}/v1/caches/alpha/flush", headers=stack.auth("beta")),
        httpx.request(
            "DELETE",
            f"{stack.url}/v1/caches/alpha/entries",
            json={"attributes": {}},
            headers=stack.auth("beta"),
        ),
        httpx.get(f"{stack.url}/cache/stats?cache_id=alpha", headers=stack.auth("beta")),
        httpx.get(f"{stack.url}/v1/caches/alpha/policy", headers=stack.auth("beta")),
        httpx.post(
            f"{stack.url}/query?cache_id=alpha",
            json={"query": "What is alpha's secret?"},
            headers=stack.auth("beta"),
        ),
        httpx.get(f"{stack.url}/cache/stats", headers=stack.auth("beta")),  # the default cache
    ]
    for reply in refusals:
        assert reply.status_code == 403, (reply.request.url, reply.text)
        assert "beta" in reply.json()["detail"] and "alpha's answer" not in reply.text
    # A read-only key reads alpha, and writes nothing there.
    assert _search(stack, "reader", "alpha", "What is alpha's secret?").json()["data"]
    assert _set(stack, "reader", "alpha", "planted by reader").status_code == 403
    assert httpx.post(f"{stack.url}/v1/caches/alpha/flush", headers=stack.auth("reader")).is_error
    # Nothing beta tried changed alpha's cache.
    stats = httpx.get(f"{stack.url}/cache/stats?cache_id=alpha", headers=stack.auth("alpha"))
    assert stats.status_code == 200 and stats.json()["cache_size"] == 1
    # beta's own cache works, and no key, or a made-up one, is 401 before anything else.
    assert _set(stack, "beta", "beta", "beta's question").status_code == 201
    assert httpx.post(f"{stack.url}/v1/caches/beta/flush", headers=stack.auth("beta")).is_success
    for headers in ({}, {"Authorization": "Bearer sc_made-up-key-0123456789"}):
        reply = httpx.post(f"{stack.url}/v1/caches/beta/entries/search", json={}, headers=headers)
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{stack.url}/health").status_code == 200  # probes need no key


def test_the_langcache_sdk_raises_its_own_forbidden_error(stack: Stack) -> None:
    with LangCache(server_url=stack.url, cache_id="alpha", api_key=stack.keys["beta"]) as lc:
        expect(403, lambda: lc.search(prompt="What is alpha's secret?"))
        expect(403, lambda: lc.set(prompt="planted", response="by beta"))
        expect(403, lambda: lc.delete_query(attributes={}))
    with LangCache(server_url=stack.url, cache_id="alpha", api_key="sc_not-a-key-0123456") as lc:
        expect(401, lambda: lc.search(prompt="What is alpha's secret?"))


def test_conversational_search_keeps_its_rewrites_within_the_key_s_caches(stack: Stack) -> None:
    """The rewrites live in a cache the server keeps for others (`__reformulations__`), one
    scope per application cache: a key reaches the rewrites of the caches it holds only."""
    context = ["What is the capital of France?"]
    with LangCache(server_url=stack.url, cache_id="alpha", api_key=stack.keys["alpha"]) as lc:
        found = lc.conversational_search(prompt="And its population?", context=context)
        assert found.actual_prompt  # rewritten by the upstream, the rewrite kept
    with LangCache(server_url=stack.url, cache_id="alpha", api_key=stack.keys["beta"]) as lc:
        expect(403, lambda: lc.conversational_search(prompt="And its population?", context=context))
    with CacheClient(stack.cache.address, api_key=stack.keys["beta"]) as beta:
        for call in (
            lambda: beta.search("x", cache_id="__reformulations__", attributes={"cache": "alpha"}),
            lambda: beta.search("x", cache_id="__reformulations__"),  # no scope: not beta's
            lambda: beta.flush(cache_id="__reformulations__"),
        ):
            with pytest.raises(client_errors.PermissionDenied):
                call()
        assert (
            beta.search("x", cache_id="__reformulations__", attributes={"cache": "beta"}).hits == []
        )


def _chat(stack: Stack, key_id: str, cache_id: str, **extra: Any) -> Any:
    with openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key=stack.keys[key_id], max_retries=0
    ) as sdk:
        return sdk.chat.completions.create(
            model=extra.pop("model", MODEL),
            messages=[{"role": "user", "content": "What does the chat cache hold?"}],
            extra_headers={"X-Semcache-Cache-Id": cache_id},
            **extra,
        )


def test_the_openai_route_keeps_tenants_apart_and_is_no_open_proxy(stack: Stack) -> None:
    assert _chat(stack, "proxy", "chat").choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _chat(stack, "beta", "chat")
    assert "beta" in refused.value.message
    # Uncacheable (several choices): only a key allowed to pass requests through.
    calls = stack.llm.calls
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _chat(stack, "alpha", "alpha", n=2)
    assert "may not pass" in refused.value.message
    assert stack.llm.calls == calls  # the upstream was never asked
    assert _chat(stack, "proxy", "chat", n=2).choices
    # Only the operator's models, for any key.
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _chat(stack, "proxy", "chat", model="gpt-5-pro-expensive")
    assert "not offered" in refused.value.message
    assert stack.llm.calls == calls + 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="nope", max_retries=0).models.list()


def test_grpc_callers_get_the_same_grants(stack: Stack) -> None:
    with CacheClient(stack.cache.address, api_key=stack.keys["alpha"]) as alpha:
        alpha.set("What is alpha's gRPC secret?", "alpha's answer", cache_id="alpha-grpc")
        assert alpha.search("What is alpha's gRPC secret?", cache_id="alpha-grpc").hits
        info = alpha.get_server_info()
        assert info.embedder_addresses == []  # internal addresses are for operators only
    with CacheClient(stack.cache.address, api_key=stack.keys["beta"]) as beta:
        for call in (
            lambda: beta.search("What is alpha's gRPC secret?", cache_id="alpha-grpc"),
            lambda: beta.set("planted", "by beta", cache_id="alpha-grpc"),
            lambda: beta.flush(cache_id="alpha-grpc"),
            lambda: beta.get_stats(cache_id="alpha-grpc"),
            lambda: beta.reindex(every_cache=True),  # only for an admin of every cache
        ):
            with pytest.raises(client_errors.PermissionDenied) as refused:
                call()
            assert refused.value.reason is client_errors.ErrorReason.NOT_PERMITTED
    with CacheClient(stack.cache.address) as anonymous:
        with pytest.raises(client_errors.Unauthenticated):
            anonymous.search("What is alpha's gRPC secret?", cache_id="alpha-grpc")
        assert anonymous.get_server_info().embedding_dimension > 0  # health needs no key


def test_recent_decisions_and_the_list_of_caches_are_for_admins_of_those_caches(
    stack: Stack,
) -> None:
    assert _set(stack, "alpha", "alpha", "What did alpha ask last?").status_code == 201
    assert _search(stack, "alpha", "alpha", "What did alpha ask last?").json()["data"]
    assert _set(stack, "beta", "beta", "beta's listed question").status_code == 201
    own = httpx.get(f"{stack.url}/v1/caches/alpha/decisions", headers=stack.auth("alpha"))
    assert own.status_code == 200, own.text
    newest = own.json()["decisions"][0]
    assert (newest["prompt"], newest["outcome"]) == ("What did alpha ask last?", "hit")
    # A read-only key of alpha, and the admin of another cache: refused, and shown nothing.
    for key_id in ("reader", "beta"):
        refused = httpx.get(f"{stack.url}/v1/caches/alpha/decisions", headers=stack.auth(key_id))
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"] == "/errors/insufficient-permissions"
        assert "alpha ask" not in refused.text

    # Each admin lists its own caches only; a key that administers none is refused.
    def listed(key_id: str) -> set[str]:
        reply = httpx.get(f"{stack.url}/v1/caches", headers=stack.auth(key_id))
        assert reply.status_code == 200, reply.text
        return {c["cacheId"] for c in reply.json()["caches"]}

    alpha = listed("alpha")
    assert "alpha" in alpha and all(c == "alpha" or c.startswith("alpha-") for c in alpha)
    assert listed("beta") == {"beta"}
    assert httpx.get(f"{stack.url}/v1/caches", headers=stack.auth("reader")).status_code == 403
    with CacheClient(stack.cache.address, api_key=stack.keys["alpha"]) as grpc_alpha:
        assert {c.cache_id for c in grpc_alpha.list_caches()} == alpha
        with pytest.raises(client_errors.PermissionDenied):
            grpc_alpha.list_decisions(cache_id="beta")


def _burst(stack: Stack, key_id: str, n: int) -> list[httpx.Response]:
    return [_search(stack, key_id, key_id, "Is anyone limiting me?") for _ in range(n)]


def test_a_noisy_key_is_limited_and_a_quiet_one_is_not(stack: Stack) -> None:
    noisy: list[int] = []
    quiet: list[int] = []
    started = time.monotonic()
    for _ in range(12):  # interleaved: the quiet key asks between the noisy one's requests
        noisy += [r.status_code for r in _burst(stack, "noisy", 2)]
        quiet += [r.status_code for r in _burst(stack, "quiet", 1)]
    elapsed = time.monotonic() - started
    refused = _burst(stack, "noisy", 3)[-1]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["type"] == "/errors/too-many-requests"
    served = noisy.count(200)
    print(f"\nnoisy: {served} served, {noisy.count(429)} limited; quiet: {quiet.count(200)} served")
    assert set(noisy) == {200, 429}
    assert served <= 3 + elapsed * 1 + 1  # its burst, then its rate
    assert quiet == [200] * 12


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code > 0
    except httpx.HTTPError:
        return False


def _until(check: Callable[[], bool], timeout_s: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "not within the time allowed"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_revoked_key_stops_working_within_the_reload_interval(stack: Stack) -> None:
    """Each process re-reads the file on its own: the key is refused by the gateway (REST) and
    by the cache server (gRPC) each within the reload interval. The key is put back after."""
    assert _search(stack, "reader", "alpha", "What is alpha's secret?").status_code == 200
    every = list(stack.entries)

    def grpc_refuses() -> bool:
        with CacheClient(stack.cache.address, api_key=stack.keys["reader"]) as reader:
            try:
                reader.search("What is alpha's secret?", cache_id="alpha")
            except client_errors.Unauthenticated:
                return True
            return False

    try:
        stack.entries = [e for e in every if e["id"] != "reader"]
        stack.write_keys()
        started = time.monotonic()
        rest = _until(lambda: _search(stack, "reader", "alpha", "x").status_code == 401, 2.5)
        _until(grpc_refuses, RELOAD_S * 2 + 1)
        both = time.monotonic() - started
        print(
            f"\nrevoked key refused over REST {rest:.2f} s and over gRPC {both:.2f} s after the "
            f"keys file changed (reload {RELOAD_S} s)"
        )
        assert both <= RELOAD_S * 2 + 1
        # A broken edit keeps the keys read before, rather than locking everyone out.
        stack.keys_file.write_text("{not json")
        time.sleep(RELOAD_S * 2)
        assert _search(stack, "alpha", "alpha", "What is alpha's secret?").status_code == 200
    finally:
        stack.entries = every
        stack.write_keys()
        _until(lambda: _search(stack, "reader", "alpha", "x").status_code == 200, 5)
        _until(lambda: not grpc_refuses(), 5)


def test_changes_are_audited_by_key(stack: Stack) -> None:
    assert _set(stack, "alpha", "alpha-audit", "audited question").status_code == 201
    assert httpx.post(f"{stack.url}/v1/caches/alpha-audit/flush", headers=stack.auth("alpha"))
    _until(lambda: "action=Flush cache=alpha-audit" in stack.cache.log(), 5)
    log = stack.cache.log()
    assert "audit key=alpha client=key:alpha action=Set cache=alpha-audit outcome=OK" in log
    assert stack.keys["alpha"] not in log  # the key id, never the key


def test_a_key_spends_at_most_its_daily_upstream_budget(stack: Stack) -> None:
    def ask(question: str) -> httpx.Response:
        return httpx.post(
            f"{stack.url}/query?cache_id=frugal",
            json={"query": question},
            headers=stack.auth("frugal"),
        )

    assert ask("How do volcanoes form?").status_code == 200
    assert ask("Why is the sky blue?").status_code == 200
    spent = ask("What is the speed of light?")
    assert spent.status_code == 429 and "budget" in spent.json()["detail"]
    assert int(spent.headers["retry-after"]) <= 86400
    hit = ask("How do volcanoes form?")  # a cached answer costs nothing: still served
    assert hit.status_code == 200 and hit.json()["cache_hit"]


def test_a_client_without_keys_is_limited_by_its_address(
    tmp_path: Path, embedder_process: str
) -> None:
    with (
        cache_server_process(
            tmp_path, embedder_process, "--rate-limit-per-s", "0.2", "--rate-limit-burst", "2"
        ) as cache,
        GatewayProcess(cache.address) as gateway,
    ):
        codes = [
            httpx.post(
                f"{gateway.url}/v1/caches/open/entries/search",
                json={"prompt": "anyone?"},
                headers={"Authorization": f"Bearer made-up-{i}"},  # rotating tokens don't help
            ).status_code
            for i in range(4)
        ]
        assert codes == [200, 200, 429, 429]


@pytest.mark.parametrize(
    ("env", "listens_on"),
    [
        ({}, "127.0.0.1"),
        ({"SEMCACHE_API_KEY": "k" * 24}, "0.0.0.0"),
        ({"GATEWAY_HOST": "0.0.0.0"}, "0.0.0.0"),
    ],
)
def test_without_a_key_the_gateway_listens_on_loopback_and_says_so(
    env: dict[str, str], listens_on: str
) -> None:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "SEMCACHE_"))}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "--port",
            str(port),
            "--cache-server-address",
            "127.0.0.1:1",
        ],
        cwd=REPO,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _until(lambda: _answers(f"http://127.0.0.1:{port}/health"), 30)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"Uvicorn running on http://{listens_on}:{port}" in output, output
    warned = "no API key configured" in output and "127.0.0.1 only" in output
    assert warned == (listens_on == "127.0.0.1"), output


def test_a_client_certificate_stands_for_a_key_over_mutual_tls(
    tmp_path: Path, embedder_process: str
) -> None:
    folder = tmp_path / "certs"
    ca = make_ca(folder)
    server_pair = make_cert(folder, ca, "cache-server", server=True)
    known = make_cert(folder, ca, "app-alpha", server=False)
    unknown = make_cert(folder, ca, "app-nobody", server=False)
    keys = folder / "keys.json"
    entry = {"id": "alpha-app", "certificates": ["app-alpha"], "caches": ["alpha"]}
    keys.write_text(json.dumps({"keys": [{**entry, "actions": ["read", "write"]}]}))
    tls = ["--tls-cert-file", str(server_pair.cert), "--tls-key-file", str(server_pair.key)]
    tls += ["--tls-client-ca-file", str(ca.cert)]
    server = cache_server_process(
        tmp_path / "data", embedder_process, *tls, env={"SEMCACHE_KEYS_FILE": str(keys)}
    ).start(wait_serving=False)
    try:
        server.wait_serving(
            60,
            grpc.ssl_channel_credentials(
                ca.cert.read_bytes(), known.key.read_bytes(), known.cert.read_bytes()
            ),
        )

        def client(pair: Pair) -> CacheClient:
            config = TlsConfig.from_files(ca_file=ca.cert, cert_file=pair.cert, key_file=pair.key)
            return CacheClient(server.address, tls=config)

        with client(known) as app:
            assert app.set("Who am I?", "alpha's app, by its certificate", cache_id="alpha")
            with pytest.raises(client_errors.PermissionDenied):
                app.set("Elsewhere?", "no", cache_id="beta")
        with client(unknown) as nobody, pytest.raises(client_errors.Unauthenticated):
            nobody.search("Who am I?", cache_id="alpha")
    finally:
        server.stop()
