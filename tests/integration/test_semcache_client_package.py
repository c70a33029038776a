"""The semcache-client distribution as pip builds it: the wheel carries stubs generated from
protos/ at build time (none are committed), depends on grpcio and protobuf only, builds from
its source distribution outside the repository too, and, on its own, talks to a real cache
server and embedder."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.processes import REPO, ServiceProcess

pytestmark = pytest.mark.slow

CLIENT = REPO / "clients" / "python"


def backend(hook: str, source: Path, out: Path) -> Path:
    """setuptools' PEP 517 hook, as pip calls it, run in `source`; the file it made."""
    out.mkdir(exist_ok=True)
    made = subprocess.run(
        [sys.executable, "-c", f"import setuptools.build_meta as b; print(b.{hook}({str(out)!r}))"],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    return out / made.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's folder and the .proto files, laid out as in a fresh clone (no stubs)."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(
        CLIENT,
        root / "clients" / "python",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "dist"),
    )
    for proto in (REPO / "protos").rglob("*.proto"):
        target = root / proto.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto, target)
    return root


def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {n for n in archive.namelist() if ".dist-info/" not in n}


def test_the_wheel_holds_generated_stubs_and_needs_grpcio_and_protobuf_only(
    checkout: Path, tmp_path: Path
) -> None:
    wheel = backend("build_wheel", checkout / "clients" / "python", tmp_path / "dist")
    files = names(wheel)
    for stub in [
        "protos/semcache/cache/v1/cache_pb2.py",
        "protos/semcache/cache/v1/cache_pb2_grpc.py",
        "protos/semcache/embedding/v1/embedding_pb2.py",
        "protos/__init__.py",
        "semcache_client/py.typed",
        "semcache_client/langchain/cache.py",
    ]:
        assert stub in files, stub
    assert not [f for f in files if f.startswith(("tests/", "examples/"))]
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(metadata_name))
    assert metadata["Name"] == "semcache-client"
    requires = sorted(metadata.get_all("Requires-Dist") or [])
    assert [r for r in requires if "extra ==" not in r] == [
        "grpcio<2,>=1.85.1",
        "protobuf<8,>=7.35.1",
    ]
    assert [r.split(";")[0] for r in requires if "extra ==" in r] == ["langchain-core<2,>=1.0"]


def test_the_source_distribution_builds_outside_the_repository(
    checkout: Path, tmp_path: Path
) -> None:
    sdist = backend("build_sdist", checkout / "clients" / "python", tmp_path / "sdist")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (source,) = (tmp_path / "unpacked").iterdir()
    assert (source / "proto-src" / "protos" / "semcache" / "cache" / "v1" / "cache.proto").exists()
    wheel = backend("build_wheel", source, tmp_path / "dist")
    from_checkout = backend("build_wheel", checkout / "clients" / "python", tmp_path / "dist2")
    assert names(wheel) == names(from_checkout)


def test_the_installed_wheel_alone_talks_to_the_servers(
    checkout: Path, tmp_path: Path, cache_server: ServiceProcess, embedder_process: str
) -> None:
    wheel = backend("build_wheel", checkout / "clients" / "python", tmp_path / "dist")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    script = f"""
import protos, semcache_client
from semcache_client import CacheClient, EmbedderClient
site = {str(site)!r}
assert protos.__file__.startswith(site), protos.__file__  # the wheel's stubs, not the repo's
assert semcache_client.__file__.startswith(site), semcache_client.__file__
with CacheClient({cache_server.address!r}, cache_id="wheel") as cache:
    print(cache.query("Does the installed wheel work?").response)
with EmbedderClient({embedder_process!r}) as embedder:
    print(embedder.embed(["yes"]).dimension)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["LLM answer to: Does the installed wheel work?", "384"]
