"""`make import-cache` (`python -m cache_server.transfer_cli import`): an export file stored
in a running cache server, in calls of up to --batch-size entries (ImportEntries), with a
progress bar; resumable: after each call the server acknowledged, where the file got to is
recorded beside it (cache_server.transfer_resume), and the same command run again after it
stopped (killed, interrupted, the server or network away, a malformed line mended) goes on
after the last acknowledged line instead of starting over."""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from tqdm import tqdm

from cache_server.entry_pb import cost_pb
from cache_server.transfer_channel import Metadata, channel, failed
from cache_server.transfer_file import ExportFileError, ExportLine
from cache_server.transfer_file_io import ExportReader, Mark
from cache_server.transfer_resume import Progress, ProgressFile, load, progress_path
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from service_runtime.error_reasons import retry_after_of

BATCH_BYTES = 4 * 1024 * 1024  # an import call's entries, at most about this
SHOWN_REFUSALS = 20  # refused entries named one by one; the rest only counted
RETRIES = 4  # of a batch refused for the key's rate limit, or meeting a server briefly away

Batch = tuple[str, list[int], list[pb.ExportedEntry], Mark]  # cache, lines, entries, last mark


def _entry_pb(line: ExportLine) -> pb.ExportedEntry:
    return pb.ExportedEntry(
        entry=pb.Entry(
            prompt=line.prompt,
            response=line.response,
            attributes=dict(line.attributes),
            created_at=line.created_at,
            expires_at=line.expires_at or 0.0,
            cost=cost_pb(line.cost),
        ),
        vector=line.vector,
    )


def _batches(
    reader: ExportReader, into: str, size: int, stopped: list[ExportFileError]
) -> Iterator[Batch]:
    """The file's entries in calls: one cache per call, at most `size` entries and about
    BATCH_BYTES, each with the reader's mark after its last line. A malformed line ends it
    (in `stopped`) after the batch before it."""
    cache, weight, mark = "", 0, reader.mark()
    numbers: list[int] = []
    entries: list[pb.ExportedEntry] = []
    try:
        for number, line in reader:
            target = into or line.cache_id
            entry = _entry_pb(line)
            cost = entry.ByteSize()
            if entries and (target != cache or len(entries) >= size or weight + cost > BATCH_BYTES):
                yield cache, numbers, entries, mark
                numbers, entries, weight = [], [], 0
            cache = target
            numbers.append(number)
            entries.append(entry)
            weight += cost
            mark = reader.mark()
    except ExportFileError as error:
        stopped.append(error)
    if entries:
        yield cache, numbers, entries, mark


def _import_batch(
    stub: pb_grpc.CacheServiceStub, request: pb.ImportEntriesRequest, metadata: Metadata
) -> pb.ImportEntriesResponse:
    """One call, tried again when the refusal says to wait (the key's rate limit) or the
    server is briefly away: a batch stored twice is stored once (entry ids are computed)."""
    for attempt in range(RETRIES + 1):
        try:
            reply: pb.ImportEntriesResponse = stub.ImportEntries(
                request, metadata=metadata, timeout=600
            )
            return reply
        except grpc.RpcError as error:
            trailing = error.trailing_metadata()
            wait = retry_after_of(trailing)
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                wait = wait or str(2**attempt)
            if attempt == RETRIES or wait is None:
                raise
            time.sleep(float(wait))
    raise AssertionError("unreachable")


def import_(args: argparse.Namespace, metadata: Metadata) -> int:
    path = Path(args.input)
    try:
        reader = ExportReader(path)
    except (OSError, ExportFileError) as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    if args.check:
        with reader:
            return _check(reader)
    target = {"address": args.address, "cache_id": args.cache_id}
    record = ProgressFile(Path(args.progress) if args.progress else progress_path(path))
    earlier = None if args.restart else load(record.path)
    try:
        reader, progress = _resumed(reader, target, earlier)
    except (OSError, ExportFileError) as error:
        reader.close()
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        reader.close()
        print("\ninterrupted before importing anything", file=sys.stderr)
        return 130
    with reader:
        return _import(args, metadata, reader, progress, record)


def _check(reader: ExportReader) -> int:
    counts: collections.Counter[str] = collections.Counter()
    with_vectors = 0
    try:
        for _, line in reader:
            counts[line.cache_id] += 1
            with_vectors += bool(line.vector)
    except ExportFileError as error:
        print(f"{reader.path}: {error}", file=sys.stderr)
        return 1
    model = reader.header.model[:16] or "none"
    print(
        f"{reader.path}: {sum(counts.values())} entries of {len(counts)} cache(s), "
        f"{with_vectors} with vectors (model {model}, {reader.header.dimension} dims): readable"
    )
    return 0


def _resumed(
    reader: ExportReader, target: dict[str, str], earlier: Progress | None
) -> tuple[ExportReader, Progress]:
    """The reader past the lines an earlier run of this import had stored, and the progress
    to go on from; the reader at the first entry and a new progress when there is none to
    go on from (see cache_server.transfer_resume)."""
    fresh = Progress(target, *reader.mark())
    if earlier is None:
        return reader, fresh
    if earlier.target != target:
        print(
            f"an earlier import of {reader.path} into {earlier.target} did not finish; this "
            "one goes elsewhere: starting from the first entry"
        )
        return reader, fresh
    print(
        f"an earlier run of this import stopped after line {earlier.line}: reading {reader.path} "
        "up to there again, to check it holds the same lines"
    )
    try:
        reader.skip(earlier.line - 1)
        same = reader.mark() == (earlier.line, earlier.digest)
    except ExportFileError:
        same = False
    if same:
        print(
            f"resuming after line {earlier.line}: {earlier.counts['imported']} entries were "
            "imported by an earlier run of this import"
        )
        return reader, earlier
    print(
        f"{reader.path} is not what an earlier import stopped in (its lines up to "
        f"{earlier.line} differ now): starting from the first entry"
    )
    reader.close()
    reader = ExportReader(reader.path)
    return reader, Progress(target, *reader.mark())


def _import(
    args: argparse.Namespace,
    metadata: Metadata,
    reader: ExportReader,
    progress: Progress,
    record: ProgressFile,
) -> int:
    started = time.time()
    before = progress.counts["imported"]
    stopped: list[ExportFileError] = []
    shown = 0
    bar = tqdm(
        total=reader.size, initial=reader.position, unit="B", unit_scale=True, desc=reader.path.name
    )
    bar.set_postfix(imported=progress.counts["imported"])
    try:
        with channel(args) as opened:
            stub = pb_grpc.CacheServiceStub(opened)
            for cache, numbers, entries, mark in _batches(
                reader, args.cache_id, args.batch_size, stopped
            ):
                request = pb.ImportEntriesRequest(
                    cache_id=cache, model=reader.header.model, entries=entries
                )
                try:
                    reply = _import_batch(stub, request, metadata)
                except grpc.RpcError as error:
                    print(
                        f"import failed at lines {numbers[0]}-{numbers[-1]} (cache {cache!r}): "
                        f"{failed(error)}\nevery line before {numbers[0]} was imported, none "
                        f"after {numbers[-1]}; run the same command again to go on from line "
                        f"{numbers[0]}",
                        file=sys.stderr,
                    )
                    return 1
                progress.caches.add(cache)
                progress.counts.update(
                    imported=reply.imported,
                    reembedded=reply.reembedded,
                    expired=reply.skipped_expired,
                )
                for refusal in reply.refused:
                    progress.refused[refusal.reason] += 1
                    shown += 1
                    if shown <= SHOWN_REFUSALS:
                        tqdm.write(
                            f"line {numbers[refusal.index]}: refused ({refusal.reason}): "
                            f"{refusal.message}",
                            file=sys.stderr,
                        )
                progress.line, progress.digest = mark
                record.save(progress)
                bar.update(reader.position - bar.n)
                bar.set_postfix(imported=progress.counts["imported"], refresh=False)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"\ninterrupted: the entries to line {progress.line} were imported; run the same "
            "command again to go on from there",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
        if record.warning is not None:
            print(record.warning, file=sys.stderr)
    counts, reasons = progress.counts, progress.refused
    refused = sum(reasons.values())
    print(
        f"imported {counts['imported']} entries into {len(progress.caches)} cache(s) from "
        f"{reader.path} in {time.time() - started:.2f} s ({counts['reembedded']} re-embedded"
        + (f"; {before} of them by an earlier run" if before else "")
        + f"); {counts['expired']} skipped (already expired); {refused} refused"
        + (f" ({', '.join(f'{n} {r}' for r, n in reasons.most_common())})" if refused else "")
    )
    if stopped:
        print(
            f"{reader.path}: {stopped[0]}\nimport stopped there: the entries before it (to line "
            f"{progress.line}) were imported, none from it on; fix the line and run the same "
            "command again: it goes on after line "
            f"{progress.line}",
            file=sys.stderr,
        )
        return 1
    record.remove()
    return 2 if refused else 0
