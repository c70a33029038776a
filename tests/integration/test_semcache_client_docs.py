"""Every Python block of clients/python/README.md, and every script of clients/python/examples,
run as they are written against real servers (only the addresses are replaced), each in a
process of its own started outside the repository: `semcache_client` comes from the venv's
install of the repository (`make setup`), as a user of the repository would have it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certificates import make_ca, make_cert
from tests.integration.test_semcache_client_tls import Certificates, start
from tests.processes import REPO, ServiceProcess

pytestmark = pytest.mark.slow

CLIENT = REPO / "clients" / "python"
README = CLIENT / "README.md"
CLIENTS_DOC = REPO / "docs" / "clients.md"
# A block runs against the plain stack, the mutual-TLS server, or needs LangChain.
BLOCK = re.compile(r"<!-- run: (plain|tls|langchain) -->\n```python\n(.*?)```", re.DOTALL)


def marked_blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(path.read_text())]


def readme_blocks() -> list[tuple[str, str]]:
    return marked_blocks(README)


# docs/clients.md has other clients' sections too: only the blocks marked to run are run.
DOC_BLOCKS = readme_blocks() + marked_blocks(CLIENTS_DOC)


def run(code: str, cwd: Path, cache: str, embedder: str) -> subprocess.CompletedProcess[str]:
    code = code.replace("localhost:50051", cache).replace("localhost:50052", embedder)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def mtls_server(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str
) -> Iterator[tuple[ServiceProcess, Path]]:
    """A mutual-TLS cache server, and a folder holding the README's certs/ for it."""
    folder = tmp_path_factory.mktemp("readme-tls")
    certs_dir = folder / "certs"
    ca = make_ca(certs_dir)
    certs = Certificates(
        ca,
        make_cert(certs_dir, ca, "cache-server", server=True),
        make_cert(certs_dir, ca, "client", server=False),
        make_cert(certs_dir, ca, "unused", server=False),
    )
    server = start(folder / "data", embedder_process, certs, mutual=True)
    yield server, folder
    server.stop()


def test_every_python_block_of_the_readme_is_run() -> None:
    blocks = readme_blocks()
    assert len(blocks) == README.read_text().count("```python") >= 8
    assert {kind for kind, _ in blocks} == {"plain", "tls", "langchain"}


def test_the_client_sections_of_docs_clients_md_are_run() -> None:
    assert {kind for kind, _ in marked_blocks(CLIENTS_DOC)} == {"plain", "langchain"}


@pytest.mark.parametrize(
    ("kind", "code"), DOC_BLOCKS, ids=[f"block{i}" for i in range(len(DOC_BLOCKS))]
)
def test_documented_block_runs(
    kind: str,
    code: str,
    tmp_path: Path,
    cache_server: ServiceProcess,
    embedder_process: str,
    request: pytest.FixtureRequest,
) -> None:
    cwd, address = tmp_path, cache_server.address
    if kind == "tls":
        server, cwd = request.getfixturevalue("mtls_server")
        address = server.address
    result = run(code, cwd, address, embedder_process)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("script", ["quickstart.py", "async_quickstart.py", "langchain_chat.py"])
def test_example_script_runs(
    script: str, tmp_path: Path, cache_server: ServiceProcess, embedder_process: str
) -> None:
    copy = shutil.copy(CLIENT / "examples" / script, tmp_path / script)
    args = ["--cache", cache_server.address]
    if script == "quickstart.py":
        args += ["--embedder", embedder_process]
    result = subprocess.run(
        [sys.executable, str(copy), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "hit" in result.stdout or "model called 1 time" in result.stdout
