"""TLS and mutual TLS on both gRPC hops, with certificates the test makes."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.certificates import Pair, make_ca, make_cert
from tests.processes import GatewayProcess, ServiceProcess, cache_server_process

pytestmark = pytest.mark.slow


def wait_serving_tls(process: ServiceProcess, ca: Pair, client: Pair) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=client.key.read_bytes(),
        certificate_chain=client.cert.read_bytes(),
    )
    process.wait_serving(60, credentials)


def test_mutual_tls_on_both_hops(tmp_path: Path, minilm_dir: Path) -> None:
    certs = tmp_path / "certs"
    ca = make_ca(certs)
    embedder_cert = make_cert(certs, ca, "embedder", server=True)
    cache_cert = make_cert(certs, ca, "cache-server", server=True)
    cache_client = make_cert(certs, ca, "cache-server-client", server=False)
    gateway_client = make_cert(certs, ca, "gateway-client", server=False)

    embedder = ServiceProcess(
        "embedder",
        "--model-dir",
        str(minilm_dir),
        "--tls-cert-file",
        str(embedder_cert.cert),
        "--tls-key-file",
        str(embedder_cert.key),
        "--tls-client-ca-file",
        str(ca.cert),
    ).start(wait_serving=False)
    cache = None
    try:
        wait_serving_tls(embedder, ca, cache_client)
        cache = cache_server_process(
            tmp_path / "data",
            embedder.address,
            "--embedder-tls-ca-file",
            str(ca.cert),
            "--embedder-tls-cert-file",
            str(cache_client.cert),
            "--embedder-tls-key-file",
            str(cache_client.key),
            "--tls-cert-file",
            str(cache_cert.cert),
            "--tls-key-file",
            str(cache_cert.key),
            "--tls-client-ca-file",
            str(ca.cert),
        ).start(wait_serving=False)
        wait_serving_tls(cache, ca, gateway_client)

        # Plaintext, and TLS without a client certificate, are both refused.
        with grpc.insecure_channel(embedder.address) as plain, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
        no_cert = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
        with grpc.secure_channel(cache.address, no_cert) as anonymous, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(), timeout=3)

        with GatewayProcess(
            cache.address,
            env={
                "GATEWAY_CACHE_SERVER_TLS_CA_FILE": str(ca.cert),
                "GATEWAY_CACHE_SERVER_TLS_CERT_FILE": str(gateway_client.cert),
                "GATEWAY_CACHE_SERVER_TLS_KEY_FILE": str(gateway_client.key),
            },
        ) as gateway:
            first = httpx.post(f"{gateway.url}/query", json={"query": "Is this encrypted?"})
            assert first.status_code == 200 and first.json()["cache_hit"] is False
            second = httpx.post(f"{gateway.url}/query", json={"query": "Is this encrypted?"})
            assert second.json()["cache_hit"] is True
            health = httpx.get(f"{gateway.url}/health")
            assert health.status_code == 200, health.text  # embedder reachable over mTLS
        with GatewayProcess(cache.address) as plaintext_gateway:  # no certificates
            refused = httpx.post(f"{plaintext_gateway.url}/query", json={"query": "hello?"})
            assert refused.status_code == 503
    finally:
        if cache is not None:
            cache.stop()
        embedder.stop()


def test_half_configured_tls_is_a_startup_error(tmp_path: Path, minilm_dir: Path) -> None:
    from tests.processes import run_module

    ca = make_ca(tmp_path)
    result = run_module(
        "embedder",
        "--port",
        "0",
        "--model-dir",
        str(minilm_dir),
        "--tls-cert-file",
        str(ca.cert),
        timeout=60,
    )
    assert result.returncode == 2
    assert "tls_cert_file and tls_key_file go together" in result.stderr
