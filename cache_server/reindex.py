"""Re-embedding a cache's stored prompts with the model the embedder serves now.

A cache records the embedding model its vectors came from (CacheStore.vector_model). When the
embedder serves another model of the same dimension (`make finetune`, a new export), the cache
refuses similarity searches and new entries rather than compare vectors of two models; exact
repeats are still served. `make reindex CACHE=<id>` (the Reindex RPC) re-embeds every stored
prompt in batches and then records the new model.

Resumable: while it runs the cache's model reads `reindexing:<target>@<last id done>` (entries
are done in id order), so a run that is stopped, or a cache server that dies, is continued by
the next run from there. The cache keeps refusing similarity searches until the last batch is
done. A model of another dimension cannot be reached this way (the cache's index has one
dimension): flush the cache instead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cache_server.entries import InvalidInputError, check_cache_id
from cache_server.store.base import CacheStore, StoreConflictError

log = logging.getLogger(__name__)
_IN_PROGRESS = "reindexing:"
# The embedder's embed call and the served model's identity (SemanticCache provides both).
Embed = Callable[[Sequence[str]], Awaitable[npt.NDArray[np.float32]]]
ServedModel = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class Progress:
    cache_id: str
    done: int  # entries re-embedded so far (this run and the runs it continues)
    total: int  # entries the cache held when this run began, plus those done before it
    model: str  # the model being reached
    finished: bool


def in_progress(model: str | None) -> tuple[str, str] | None:
    """(target model, last entry id done) of a re-embedding under way, else None."""
    if model is None or not model.startswith(_IN_PROGRESS):
        return None
    target, _, last = model[len(_IN_PROGRESS) :].partition("@")
    return target, last


class Reindexer:
    def __init__(self, store: CacheStore, embed: Embed, served_model: ServedModel) -> None:
        self.store = store
        self._embed = embed
        self._served_model = served_model
        self._running: set[str] = set()

    async def run(self, cache_id: str, batch_size: int = 64) -> AsyncGenerator[Progress, None]:
        cache_id = check_cache_id(cache_id)
        if not 1 <= batch_size <= 1024:
            raise InvalidInputError(f"batch_size {batch_size} must be between 1 and 1024")
        served = await self._served_model()
        if not served:
            raise StoreConflictError("no embedder answers: the served model is not known")
        if cache_id in self._running:
            raise StoreConflictError(f"cache {cache_id!r} is being re-embedded already")
        self._running.add(cache_id)
        try:
            async for progress in self._run(cache_id, served, batch_size):
                yield progress
        finally:
            self._running.discard(cache_id)

    async def _run(self, cache_id: str, served: str, batch_size: int) -> AsyncIterator[Progress]:
        held = await self.store.vector_model(cache_id)
        ids = await self.store.entry_ids(cache_id)
        if held == served or not ids:
            if ids and held is None:
                await self.store.set_vector_model(cache_id, served)
            yield Progress(cache_id, len(ids), len(ids), served, True)
            return
        under_way = in_progress(held)
        after = under_way[1] if under_way is not None and under_way[0] == served else ""
        todo = [entry_id for entry_id in ids if entry_id > after]
        done_before = len(ids) - len(todo)
        total = len(ids)
        log.info(
            "re-embedding cache %r: %d entries (%d done before) with model %s",
            cache_id,
            len(todo),
            done_before,
            served[:16],
        )
        if not after:
            # What the verified policy learned are similarities of the old model: the cache
            # starts again from the new model's prior (its pool and evidence go, not its policy).
            await self.store.forget_learning(cache_id)
        await self.store.set_vector_model(cache_id, f"{_IN_PROGRESS}{served}@{after}")
        done = done_before
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            now = time.time()
            found = await asyncio.gather(*(self.store.get(cache_id, i, now) for i in batch))
            entries = [entry for entry in found if entry is not None]
            if entries:
                vectors = await self._embed([entry.prompt for entry in entries])
                replacing = {entry.id: vectors[i] for i, entry in enumerate(entries)}
                await self.store.replace_vectors(cache_id, replacing)
            await self.store.set_vector_model(cache_id, f"{_IN_PROGRESS}{served}@{batch[-1]}")
            done += len(batch)
            yield Progress(cache_id, done, total, served, False)
        await self.store.set_vector_model(cache_id, served)
        log.info("re-embedded cache %r: %d entries, model %s", cache_id, total, served[:16])
        yield Progress(cache_id, total, total, served, True)


def main(argv: list[str] | None = None) -> int:
    """`make reindex CACHE=<id>`: asks a running cache server to re-embed one cache (or every
    cache) and shows its progress."""
    import grpc
    from tqdm import tqdm

    from protos.semcache.cache.v1 import cache_pb2 as pb
    from protos.semcache.cache.v1 import cache_pb2_grpc

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--address", default="127.0.0.1:50051", help="the cache server")
    parser.add_argument("--cache-id", default="", help="one cache (default: every cache)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SEMCACHE_API_KEY"),
        help="an admin key of the cache(s), when the server has keys (env SEMCACHE_API_KEY)",
    )
    args = parser.parse_args(argv)
    metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()
    with grpc.insecure_channel(args.address) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        request = pb.ReindexRequest(cache_id=args.cache_id, batch_size=args.batch_size)
        bars: dict[str, tqdm] = {}
        try:
            for step in stub.Reindex(request, metadata=metadata):
                bar = bars.get(step.cache_id)
                if bar is None:
                    bar = bars[step.cache_id] = tqdm(total=step.total, desc=step.cache_id)
                bar.n = step.done
                bar.refresh()
                if step.finished:
                    bar.close()
        except grpc.RpcError as error:
            print(f"reindex failed: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(f"re-embedded {len(bars)} cache(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
