"""The Redis backend against a Redis that demands a password and TLS with client
certificates (certificates made by the test), and what a cache server says when it is
refused. The password never appears in a log line or an error."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.certificates import Pair, make_ca, make_cert
from tests.processes import RedisProcess, RedisTls, ServiceProcess, redis_cache_server

pytestmark = pytest.mark.slow

PASSWORD = "correct-horse-battery-staple-7f3a"


@dataclass(frozen=True)
class SecureRedis:
    server: RedisProcess
    ca: Pair
    client: Pair  # a client certificate the cache server may present


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    certs = tmp_path_factory.mktemp("redis-certs")
    ca = make_ca(certs)
    server_pair = make_cert(certs, ca, "redis", server=True)
    client = make_cert(certs, ca, "cache-server-client", server=False)
    tls = RedisTls(server_pair.cert, server_pair.key, ca.cert, client.cert, client.key)
    server = RedisProcess(tmp_path_factory.mktemp("redis"), password=PASSWORD, tls=tls).start()
    yield SecureRedis(server, ca, client)
    server.stop()


def cache_server(
    tmp_path: Path, embedder: str, url: str, *args: str, password: str | None = PASSWORD
) -> ServiceProcess:
    prefix = f"sec-{uuid.uuid4().hex[:8]}"
    env = {"CACHE_REDIS_PASSWORD": password} if password else None
    return redis_cache_server(tmp_path, embedder, url, prefix, *args, env=env)


def tls_args(redis: SecureRedis, *, client_certificate: bool = True) -> list[str]:
    args = ["--redis-tls-ca-file", str(redis.ca.cert)]
    if client_certificate:
        args += ["--redis-tls-cert-file", str(redis.client.cert)]
        args += ["--redis-tls-key-file", str(redis.client.key)]
    return args


def refusal(process: ServiceProcess) -> grpc.RpcError:
    stub = pb_grpc.CacheServiceStub(process.channel())
    with pytest.raises(grpc.RpcError) as caught:
        stub.Set(pb.SetRequest(prompt="refused?", response="r"), timeout=20)
    error = caught.value
    assert isinstance(error, grpc.RpcError)
    return error


def test_password_tls_and_client_certificate(
    tmp_path: Path, embedder_process: str, secure_redis: SecureRedis
) -> None:
    with cache_server(
        tmp_path, embedder_process, secure_redis.server.url, *tls_args(secure_redis)
    ) as process:
        stub = pb_grpc.CacheServiceStub(process.channel())
        entry_id = stub.Set(
            pb.SetRequest(prompt="How do I renew my passport?", response="Form DS-82"),
            timeout=20,
        ).entry_id
        hit = stub.Query(
            pb.QueryRequest(query="What is the way to renew a passport?", similarity_threshold=0.6),
            timeout=20,
        )
        assert hit.cache_hit and hit.response == "Form DS-82"
        assert stub.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 1
        log = process.log()
    # What the cache server stored is in that Redis, seen through a client of its own.
    keys = secure_redis.server.client().keys(f"*:e:{entry_id}")
    assert len(keys) == 1
    assert PASSWORD not in log
    assert "redis store" in log.lower() or "Redis at" in log


def test_refusals_are_clear_and_never_show_the_password(
    tmp_path: Path, embedder_process: str, secure_redis: SecureRedis
) -> None:
    url = secure_redis.server.url
    wrong = "not-the-password-41c9"
    with cache_server(
        tmp_path, embedder_process, url, *tls_args(secure_redis), password=wrong
    ) as process:
        error = refusal(process)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        # The caller is told the store is unavailable; the operator's log says why.
        assert "cache store is unavailable" in str(error.details())
        assert "refused the credentials" in process.log()
        assert wrong not in str(error.details()) and wrong not in process.log()

    # No password at all: Redis answers NOAUTH, the same clear refusal.
    with cache_server(
        tmp_path, embedder_process, url, *tls_args(secure_redis), password=None
    ) as process:
        error = refusal(process)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "refused the credentials" in process.log()

    # TLS without a client certificate, where Redis demands one: unreachable, not a hang.
    with cache_server(
        tmp_path, embedder_process, url, *tls_args(secure_redis, client_certificate=False)
    ) as process:
        error = refusal(process)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "unreachable" in process.log()

    # A password in the URL is accepted, and redacted wherever the URL is shown.
    in_url = url.replace("rediss://", f"rediss://:{PASSWORD}@")
    with cache_server(
        tmp_path, embedder_process, in_url, *tls_args(secure_redis), password=None
    ) as process:
        stub = pb_grpc.CacheServiceStub(process.channel())
        stub.Set(pb.SetRequest(prompt="password in the URL", response="ok"), timeout=20)
        assert PASSWORD not in process.log() and ":***@" in process.log()

    # A plaintext client at a TLS-only Redis: unreachable.
    plain = url.replace("rediss://", "redis://")
    with cache_server(tmp_path, embedder_process, plain) as process:
        assert refusal(process).code() == grpc.StatusCode.UNAVAILABLE
