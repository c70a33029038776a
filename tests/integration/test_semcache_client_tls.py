"""semcache-client over TLS and mutual TLS to real cache servers, with certificates the test
makes: the CA checked, the server name override, client certificates required or not."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from semcache_client import AsyncCacheClient, CacheClient, TlsConfig, Unavailable
from tests.certificates import Pair, make_ca, make_cert
from tests.processes import ServiceProcess, cache_server_process

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Certificates:
    ca: Pair
    server: Pair  # names "cache-server", "localhost" and 127.0.0.1
    client: Pair
    stranger: Pair  # a client certificate signed by another CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certs")
    ca = make_ca(folder)
    other_ca = make_ca(folder / "other", name="another-ca")
    return Certificates(
        ca,
        make_cert(folder, ca, "cache-server", server=True),
        make_cert(folder, ca, "app-client", server=False),
        make_cert(folder / "other", other_ca, "stranger", server=False),
    )


def start(data_dir: Path, embedder: str, certs: Certificates, *, mutual: bool) -> ServiceProcess:
    tls = ["--tls-cert-file", str(certs.server.cert), "--tls-key-file", str(certs.server.key)]
    if mutual:
        tls += ["--tls-client-ca-file", str(certs.ca.cert)]
    server = cache_server_process(data_dir, embedder, *tls).start(wait_serving=False)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.cert.read_bytes(),
        private_key=certs.client.key.read_bytes(),
        certificate_chain=certs.client.cert.read_bytes(),
    )
    server.wait_serving(60, credentials)
    return server


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, certs: Certificates
) -> Iterator[ServiceProcess]:
    server = start(tmp_path_factory.mktemp("tls"), embedder_process, certs, mutual=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, certs: Certificates
) -> Iterator[ServiceProcess]:
    server = start(tmp_path_factory.mktemp("mtls"), embedder_process, certs, mutual=True)
    yield server
    server.stop()


def test_tls_checks_the_server_against_the_ca(
    tls_server: ServiceProcess, certs: Certificates
) -> None:
    trusted = TlsConfig.from_files(ca_file=certs.ca.cert)
    with CacheClient(tls_server.address, tls=trusted) as client:
        assert client.query("Is this encrypted?").response
    renamed = TlsConfig.from_files(ca_file=certs.ca.cert, server_name="cache-server")
    with CacheClient(tls_server.address, tls=renamed) as client:
        assert client.get_stats().cache_size == 1
    wrong_name = TlsConfig.from_files(ca_file=certs.ca.cert, server_name="someone-else")
    for tls in (wrong_name, TlsConfig()):  # a name the certificate lacks; system roots
        with CacheClient(tls_server.address, tls=tls) as client, pytest.raises(Unavailable):
            client.get_stats(timeout_s=3)
    with CacheClient(tls_server.address) as plaintext, pytest.raises(Unavailable):
        plaintext.get_stats(timeout_s=3)


def test_mutual_tls_needs_a_client_certificate_from_the_ca(
    mtls_server: ServiceProcess, certs: Certificates
) -> None:
    mutual = TlsConfig.from_files(certs.ca.cert, certs.client.cert, certs.client.key)
    with CacheClient(mtls_server.address, tls=mutual) as client:
        first = client.query("Who may ask?")
        assert client.query("Who may ask?").cache_hit and not first.cache_hit
    anonymous = TlsConfig.from_files(ca_file=certs.ca.cert)
    stranger = TlsConfig.from_files(certs.ca.cert, certs.stranger.cert, certs.stranger.key)
    for tls in (anonymous, stranger):
        with CacheClient(mtls_server.address, tls=tls) as client, pytest.raises(Unavailable):
            client.get_stats(timeout_s=3)


async def test_mutual_tls_asyncio(mtls_server: ServiceProcess, certs: Certificates) -> None:
    mutual = TlsConfig.from_files(
        certs.ca.cert, certs.client.cert, certs.client.key, server_name="cache-server"
    )
    async with AsyncCacheClient(mtls_server.address, tls=mutual) as client:
        entry_id = await client.set("Encrypted both ways?", "Yes.")
        found = await client.search("Encrypted both ways?")
        assert found.best is not None and found.best.entry.id == entry_id
