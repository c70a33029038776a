"""schemathesis, run as its users run it (its own CLI, all default phases: examples, coverage,
fuzzing, stateful) against the gateway's own OpenAPI schema, over the three real processes.

Checks: no server error, every status code declared, every body as the schema says (so every
error is an RFC 7807 Problem). Bounded by SEMCACHE_SCHEMATHESIS_SECONDS (default 120); the
seed is fixed so that a failure can be replayed (SEMCACHE_SCHEMATHESIS_SEED to vary it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from tests.fake_llm import FakeLLM
from tests.integration.conftest import API_KEY
from tests.processes import GatewayProcess, cache_server_process

pytestmark = pytest.mark.slow

SECONDS = int(os.environ.get("SEMCACHE_SCHEMATHESIS_SECONDS", "120"))
SEED = os.environ.get("SEMCACHE_SCHEMATHESIS_SEED", "20261126")
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
PHASES = "examples,coverage,fuzzing,stateful"


def test_schemathesis_cli_finds_no_failures(tmp_path: Path, embedder_process: str) -> None:
    """With a key, as a deployment runs: every case carries it, and the cache server checks it
    on every call the gateway makes."""
    cli = Path(sys.executable).with_name("schemathesis")
    keyed = {"SEMCACHE_API_KEY": API_KEY}
    auth = f"Authorization: Bearer {API_KEY}"
    with (
        FakeLLM() as llm,
        cache_server_process(
            tmp_path / "data", embedder_process, "--upstream-base-url", llm.base_url, env=keyed
        ) as cache,
        GatewayProcess(cache.address, env=keyed) as gateway,
    ):
        schema = httpx.get(
            f"{gateway.url}/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}
        ).json()
        result = subprocess.run(
            [
                str(cli),
                "run",
                f"{gateway.url}/openapi.json",
                "--header",
                auth,
                "--checks",
                CHECKS,
                "--phases",
                PHASES,
                "--max-time",
                str(SECONDS),
                "--seed",
                SEED,
                "--request-timeout",
                "30",
                "--report",
                "junit",
                "--report-dir",
                str(tmp_path / "report"),
            ],
            cwd=tmp_path,  # the CLI keeps a .schemathesis folder where it runs
            capture_output=True,
            text=True,
            timeout=SECONDS * 3 + 120,
            env={**os.environ, "NO_COLOR": "1"},
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    # It really ran: every operation was exercised, in every phase.
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert phase in output, output[-4000:]
    # Every generated case passed (a warning, e.g. about test data, is not a failure).
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts is not None and counts[1] == counts[2] and int(counts[1]) > 100, output[-4000:]
    # Every operation the schema declares was tested (the hit policy's routes among them).
    declared = {
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method in operations
    }
    assert {"GET /v1/caches/{cacheId}/policy", "PUT /v1/caches/{cacheId}/policy"} <= declared
    (report,) = (tmp_path / "report").glob("junit-*.xml")
    tested = {case.get("name") for case in ET.parse(report).iter("testcase")}
    assert declared <= tested, sorted(declared - tested)
