"""EmbeddedStore's part for what the cache learns about its answers: feedback reports
(cache_server.feedback), marks, and the verified hit policy's observations and per-cache
policies (cache_server.learned_thresholds). Each call hands the work to its table's module
(embedded_feedback, embedded_marks, embedded_evidence), run on the store's thread."""

from __future__ import annotations

from collections.abc import Sequence

from cache_server.feedback import Feedback
from cache_server.store import embedded_evidence, embedded_feedback, embedded_marks
from cache_server.store.embedded_connection import EmbeddedConnection


class EmbeddedLearning(EmbeddedConnection):
    # -- feedback (cache_server.feedback) -------------------------------------------------

    async def add_feedback(self, report: Feedback) -> None:
        await self._run(self._add_feedback, report)

    def _add_feedback(self, report: Feedback) -> None:
        embedded_feedback.add(self.db, report)
        if not report.correct:
            self._rejecting.add(report.cache_id)

    async def excluded(self, cache_id: str, prompt_key: str) -> dict[str, float]:
        if cache_id not in self._rejecting:
            return {}
        return await self._run(embedded_feedback.excluded, self.db, cache_id, prompt_key)

    async def list_feedback(self, cache_id: str | None = None) -> list[Feedback]:
        return await self._run(embedded_feedback.listing, self.db, cache_id)

    # -- marks (cache_server.feedback) ------------------------------------------------------

    async def mark(self, cache_id: str, marks: Sequence[str], now: float) -> list[bool]:
        if cache_id not in self._caches:
            return [False] * len(marks)
        return await self._run(embedded_marks.add, self.db, cache_id, list(marks), now)

    async def marked(self, cache_id: str, mark: str) -> bool:
        return await self._run(embedded_marks.has, self.db, cache_id, mark)

    async def unmark(self, cache_id: str, marks: Sequence[str]) -> None:
        await self._run(embedded_marks.remove, self.db, cache_id, list(marks))

    # -- the verified hit policy (embedded_evidence) ----------------------------------------

    async def evidence(self, cache_id: str, entry_id: str) -> bytes:
        return await self._run(embedded_evidence.of_entry, self.db, cache_id, entry_id)

    async def observe(
        self, cache_id: str, entry_id: str, entry_created_at: float, record: bytes
    ) -> bool:
        embedded_evidence.check_record(record)
        return await self._run(self._observe, cache_id, entry_id, entry_created_at, record)

    def _observe(self, cache_id: str, entry_id: str, created_at: float, record: bytes) -> bool:
        # On the store's thread, where `_caches` changes: "held" as `admits` judges it.
        held = cache_id in self._caches
        return embedded_evidence.observe(self.db, cache_id, entry_id, created_at, record, held)

    async def inherit_evidence(
        self, cache_id: str, entry_id: str, entry_created_at: float, blob: bytes
    ) -> bool:
        return await self._run(
            embedded_evidence.inherit, self.db, cache_id, entry_id, entry_created_at, blob
        )

    async def pooled_evidence(self, cache_id: str) -> bytes:
        return await self._run(embedded_evidence.pooled, self.db, cache_id)

    async def sample_evidence(self, cache_id: str, limit: int) -> list[bytes]:
        return await self._run(embedded_evidence.sample, self.db, cache_id, limit)

    async def forget_learning(self, cache_id: str) -> None:
        await self._run(embedded_evidence.forget, self.db, cache_id)

    async def cache_policy(self, cache_id: str) -> str | None:
        return await self._run(embedded_evidence.policy, self.db, cache_id)

    async def policy_count(self) -> int:
        return await self._run(embedded_evidence.policy_count, self.db)

    async def policy_cache_ids(self) -> list[str]:
        return await self._run(embedded_evidence.policy_cache_ids, self.db)

    async def set_cache_policy(self, cache_id: str, policy: str | None) -> None:
        await self._run(embedded_evidence.set_policy, self.db, cache_id, policy)
