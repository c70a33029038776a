"""Feedback end to end, over the real processes: an application reports a served hit wrong
through REST or gRPC, the entry is no longer served for that prompt (the next-best one is),
stats count it, bad input is a clear 4xx, and `make feedback-export` turns the reports into
`make finetune` pairs, from the embedded store while the server runs and from Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from embedder.training.pairs import read_pairs
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.processes import (
    GatewayProcess,
    RedisProcess,
    ServiceProcess,
    cache_server_process,
    redis_cache_server,
    run_module,
)

STORED = "How do I learn Python?"
ASKED = "How can I learn Python?"
OTHER = "What is the best way to learn Python?"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feedback-data")


@pytest.fixture(scope="module")
def server(data_dir: Path, embedder_process: str) -> Iterator[ServiceProcess]:
    with cache_server_process(data_dir, embedder_process) as process:
        yield process


@pytest.fixture(scope="module")
def url(server: ServiceProcess) -> Iterator[str]:
    with GatewayProcess(server.address) as gateway:
        yield gateway.url


def new_cache(url: str, *prompts: str) -> tuple[str, list[str]]:
    cache = f"fb-{uuid.uuid4().hex[:8]}"
    ids = []
    for prompt in prompts:
        reply = httpx.post(
            f"{url}/v1/caches/{cache}/entries",
            json={"prompt": prompt, "response": f"answer to {prompt}"},
        )
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["entryId"])
    return cache, ids


def search(url: str, cache: str, prompt: str) -> list[str]:
    reply = httpx.post(
        f"{url}/v1/caches/{cache}/entries/search",
        json={
            "prompt": prompt,
            "similarityThreshold": 0.5,
            "searchStrategies": ["exact", "semantic"],
        },
    )
    assert reply.status_code == 200, reply.text
    return [hit["prompt"] for hit in reply.json()["data"]]


def report(url: str, cache: str, entry: str, prompt: str, correct: bool) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/caches/{cache}/entries/{entry}/feedback",
        json={"prompt": prompt, "correct": correct},
    )


def test_a_hit_reported_wrong_is_not_served_again_for_that_prompt(url: str) -> None:
    cache, (entry,) = new_cache(url, STORED)
    assert search(url, cache, ASKED) == [STORED]
    reply = report(url, cache, entry, ASKED, correct=False)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["entryId"] == entry and body["entryPrompt"] == STORED
    assert body["correct"] is False and body["servedForPrompt"] is False
    assert search(url, cache, ASKED) == []
    assert search(url, cache, f"  {ASKED} ") == []  # the same prompt, as exact look-ups see it
    assert search(url, cache, OTHER) == [STORED]  # other prompts still get it
    # Reported right for that prompt after all: served again.
    assert report(url, cache, entry, ASKED, correct=True).json()["servedForPrompt"] is True
    assert search(url, cache, ASKED) == [STORED]


def test_the_next_best_entry_is_served_instead(url: str) -> None:
    cache, ids = new_cache(url, STORED, OTHER)
    first = search(url, cache, ASKED)[0]
    wrong = ids[[STORED, OTHER].index(first)]
    assert report(url, cache, wrong, ASKED, correct=False).status_code == 201
    assert search(url, cache, ASKED) == [p for p in (STORED, OTHER) if p != first]


def test_an_exact_repeat_reported_wrong_goes_to_the_llm_and_the_new_answer_is_served(
    url: str, server: ServiceProcess
) -> None:
    stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
    cache = f"fb-{uuid.uuid4().hex[:8]}"
    stub.Set(pb.SetRequest(cache_id=cache, prompt=STORED, response="a stale answer"), timeout=30)
    hit = stub.Query(pb.QueryRequest(cache_id=cache, query=STORED), timeout=30)
    assert hit.cache_hit and hit.response == "a stale answer"
    reply = stub.SubmitFeedback(
        pb.SubmitFeedbackRequest(
            cache_id=cache, entry_id=hit.entry_id, prompt=STORED, correct=False
        ),
        timeout=10,
    )
    assert not reply.served_for_prompt and reply.entry_prompt == STORED
    fresh = stub.Query(pb.QueryRequest(cache_id=cache, query=STORED), timeout=30)
    assert not fresh.cache_hit and "demo responder" in fresh.response
    # The fresh answer replaced the entry: the report judged the old one, so it is served.
    again = stub.Query(pb.QueryRequest(cache_id=cache, query=STORED), timeout=30)
    assert again.cache_hit and again.response == fresh.response
    stats = stub.GetStats(pb.GetStatsRequest(cache_id=cache), timeout=10)
    assert (stats.reported_wrong, stats.reported_right) == (1, 0)
    rest = httpx.get(f"{url}/cache/stats", params={"cache_id": cache}).json()
    assert rest["reported_wrong"] == 1


def test_bad_feedback_is_a_clear_4xx(url: str, server: ServiceProcess) -> None:
    cache, (entry,) = new_cache(url, STORED)
    for body, status in (
        ({"prompt": "", "correct": False}, 400),
        ({"prompt": ASKED}, 400),
        ({"prompt": ASKED, "correct": "perhaps"}, 400),
        ({"prompt": "x" * 9000, "correct": False}, 400),
    ):
        reply = httpx.post(f"{url}/v1/caches/{cache}/entries/{entry}/feedback", json=body)
        assert reply.status_code == status, (body, reply.text)
        problem = reply.json()  # an RFC 7807 Problem, as on every /v1 route
        assert problem["status"] == status and problem["type"] and problem["detail"]
    missing = report(url, cache, "0" * 32, ASKED, correct=False)
    assert missing.status_code == 404 and missing.json()["detail"]
    stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitFeedback(
            pb.SubmitFeedbackRequest(cache_id=cache, entry_id="0" * 32, prompt=ASKED), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitFeedback(
            pb.SubmitFeedbackRequest(cache_id=cache, entry_id=entry, prompt=" "), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert search(url, cache, ASKED) == [STORED]  # nothing was recorded


def _exported(path: Path, *args: str) -> list[dict[str, object]]:
    result = run_module("cache_server.feedback_export", "--output", str(path), *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_export_writes_finetune_pairs_while_the_server_runs(
    url: str, data_dir: Path, tmp_path: Path
) -> None:
    cache, ids = new_cache(url, *(f"question number {i} about gardening" for i in range(30)))
    for i, entry in enumerate(ids):
        prompt = f"a paraphrase of question {i}"
        assert report(url, cache, entry, prompt, correct=i % 2 == 0).status_code == 201
    # The latest report on a pair wins.
    assert report(url, cache, ids[1], "a paraphrase of question 1", correct=True).status_code == 201
    rows = _exported(tmp_path / "fb.jsonl", "--data-dir", str(data_dir), "--cache-id", cache)
    assert len(rows) == 30
    by_prompt = {row["text_b"]: row for row in rows}
    assert by_prompt["a paraphrase of question 1"]["label"] == 1
    assert by_prompt["a paraphrase of question 3"]["label"] == 0
    assert by_prompt["a paraphrase of question 3"]["text_a"] == "question number 3 about gardening"
    # make finetune reads it (it needs 50 pairs and 10 of each class: two exports together).
    both = tmp_path / "both.jsonl"
    both.write_text((tmp_path / "fb.jsonl").read_text() * 2)
    pairs = read_pairs(both)
    assert len(pairs) == 60 and sum(p.label for p in pairs) == 32
    missing = run_module("cache_server.feedback_export", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no embedded store" in missing.stderr
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "semcache.sqlite3").write_text("not a database")
    output = tmp_path / "never.jsonl"
    broken = run_module(
        "cache_server.feedback_export", "--output", str(output), "--data-dir", str(corrupt)
    )
    assert broken.returncode == 2 and "cannot read the store" in broken.stderr
    assert not output.exists() and not list(tmp_path.glob("never.jsonl*"))


def test_the_export_reads_redis_too(tmp_path: Path, embedder_process: str) -> None:
    prefix = f"fb{uuid.uuid4().hex[:8]}"
    redis = RedisProcess(tmp_path / "redis").start()
    try:
        rows = _reported_through_redis(tmp_path, embedder_process, redis, prefix)
    finally:
        redis.stop()
    assert [(r["text_a"], r["text_b"], r["label"]) for r in rows] == [(STORED, ASKED, 0)]
    gone = run_module(
        "cache_server.feedback_export", "--store-backend", "redis", "--redis-url", redis.url
    )
    assert gone.returncode == 2 and "unreachable" in gone.stderr


def _reported_through_redis(
    tmp_path: Path, embedder_process: str, redis: RedisProcess, prefix: str
) -> list[dict[str, object]]:
    with redis_cache_server(tmp_path, embedder_process, redis.url, prefix) as server:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        entry = stub.Set(
            pb.SetRequest(cache_id="r", prompt=STORED, response="tutorial"), timeout=30
        )
        stub.SubmitFeedback(
            pb.SubmitFeedbackRequest(cache_id="r", entry_id=entry.entry_id, prompt=ASKED),
            timeout=10,
        )
        hits = stub.Search(pb.SearchRequest(cache_id="r", prompt=ASKED), timeout=30).hits
        assert list(hits) == []
        return _exported(
            tmp_path / "fb.jsonl",
            "--store-backend",
            "redis",
            "--redis-url",
            redis.url,
            "--redis-prefix",
            prefix,
        )
