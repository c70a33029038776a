"""Feedback in the Redis store: per cache, a bounded list of reports and a hash of the entries
excluded per prompt key, both in the cache's hash slot, updated together by one Lua script
(replicas sharing the Redis see a report at once; an exclusion goes with the report that made
it, so both stay within MAX_FEEDBACK_PER_CACHE). Flushing the cache removes both."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

from cache_server.feedback import MAX_FEEDBACK_PER_CACHE, MAX_MARKS_PER_CACHE, Feedback
from cache_server.store import redis_scripts
from cache_server.store.redis_connection import RedisConnection


class RedisFeedback(RedisConnection):
    feedback_page = 500  # reports read per LRANGE by list_feedback

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._feedback_script = self._redis.register_script(redis_scripts.FEEDBACK)
        self._mark_script = self._redis.register_script(redis_scripts.MARK)

    async def mark(self, cache_id: str, marks: Sequence[str], now: float) -> list[bool]:
        if not marks:
            return []
        keys = self.layout.cache(cache_id)
        args: list[Any] = [repr(now), MAX_MARKS_PER_CACHE, *marks]
        added = await self._call(lambda: self._mark_script(keys=[keys.marks, keys.meta], args=args))
        return [bool(one) for one in added] if added else [False] * len(marks)

    async def marked(self, cache_id: str, mark: str) -> bool:
        key = self.layout.cache(cache_id).marks
        return await self._call(lambda: self._redis.zscore(key, mark)) is not None

    async def unmark(self, cache_id: str, marks: Sequence[str]) -> None:
        if marks:
            key = self.layout.cache(cache_id).marks
            await self._call(lambda: self._redis.zrem(key, *marks))

    async def add_feedback(self, report: Feedback) -> None:
        keys = self.layout.cache(report.cache_id)
        args = [
            json.dumps(asdict(report)),
            report.prompt_key,
            report.entry_id,
            "1" if report.correct else "0",
            repr(report.entry_created_at),
            report.id,
            MAX_FEEDBACK_PER_CACHE,
        ]
        await self._call(
            lambda: self._feedback_script(keys=[keys.feedback, keys.rejected], args=args)
        )

    async def excluded(self, cache_id: str, prompt_key: str) -> dict[str, float]:
        rejected = self.layout.cache(cache_id).rejected
        raw = await self._call(lambda: self._redis.hget(rejected, prompt_key))
        if not raw:
            return {}
        # {entry id: [created_at, id of the report]} (a bare created_at before reports were
        # bounded with their exclusions).
        return {
            entry_id: float(made[0] if isinstance(made, list) else made)
            for entry_id, made in json.loads(raw).items()
        }

    async def list_feedback(self, cache_id: str | None = None) -> list[Feedback]:
        if cache_id is None:
            registry = await self._call(lambda: self._redis.hvals(self.layout.registry))
            cache_ids = sorted(raw.decode() for raw in registry)
        else:
            cache_ids = [cache_id]
        reports: list[Feedback] = []
        for one in cache_ids:
            key = self.layout.cache(one).feedback
            # In pages: a list of long answers is never one huge reply. A report added while
            # paging shifts nothing already read (new reports go to the end); one that drops
            # the oldest may skip a report, as an export a moment later would.
            start = 0
            while rows := await self._call(
                partial(self._redis.lrange, key, start, start + self.feedback_page - 1)
            ):
                reports.extend(Feedback(**json.loads(row)) for row in rows)
                start += len(rows)
        return sorted(reports, key=lambda r: r.created_at)

    async def _forget_feedback(self, cache_id: str) -> None:
        keys = self.layout.cache(cache_id)
        await self._call(lambda: self._redis.delete(keys.feedback, keys.rejected, keys.marks))
