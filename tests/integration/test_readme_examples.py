"""Every example marked `<!-- run: stack ... -->` in README.md and docs/clients.md, run as it
is written (only the addresses are replaced) in a process of its own, against a real embedder,
cache server and gateway with a fake upstream LLM; what it prints must hold the `expect`ed
words, in order."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.reformulation import reformulation_prompt
from tests.fake_llm import FakeLLM
from tests.processes import REPO, ServiceProcess

pytestmark = pytest.mark.slow

DOCUMENTS = (REPO / "README.md", REPO / "docs" / "clients.md")
BLOCK = re.compile(r'<!-- run: stack(?: expect="([^"]*)")? -->\n```python\n(.*?)```', re.DOTALL)
# The README's conversational example: the rewrite a real LLM would give.
REWRITES = {
    reformulation_prompt(["What is the capital of France?"], "And its population?"): (
        "What is the population of Paris?"
    ),
}


def examples() -> list[tuple[str, str, list[str]]]:
    found = []
    for document in DOCUMENTS:
        for i, match in enumerate(BLOCK.finditer(document.read_text())):
            expect = [w for w in (match.group(1) or "").split(",") if w]
            found.append((f"{document.name}-{i}", match.group(2), expect))
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM(answer=lambda prompt: REWRITES.get(prompt, f"LLM answer to: {prompt}")) as fake:
        yield fake


def test_the_readme_shows_an_example_for_every_client() -> None:
    readme = [code for name, code, _ in EXAMPLES if name.startswith("README")]
    for client in ("from openai", "from langcache", "from semcache_client import", "langchain"):
        assert any(client in code for code in readme), client


@pytest.mark.parametrize(
    ("code", "expect"), [(c, e) for _, c, e in EXAMPLES], ids=[n for n, _, _ in EXAMPLES]
)
def test_example_runs_and_prints_what_it_should(
    code: str, expect: list[str], gateway: str, cache_server: ServiceProcess, tmp_path: Path
) -> None:
    address = cache_server.address
    code = code.replace("http://localhost:8000", gateway).replace("localhost:50051", address)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    at = 0
    for word in expect:
        found = result.stdout.find(word, at)
        assert found >= 0, f"{word!r} not printed (after {at}): {result.stdout}"
        at = found + len(word)
