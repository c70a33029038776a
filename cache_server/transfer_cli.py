"""`make export-cache` and `make import-cache`: a cache (or every cache) written to a file by
a running cache server, and such a file stored in another, over gRPC (the server that owns a
store is the only one to open it). The file's format: cache_server.transfer_file; what the
server does with each entry: cache_server.transfer.

    python -m cache_server.transfer_cli export --address HOST:PORT [--cache-id ID] --output F
    python -m cache_server.transfer_cli import --address HOST:PORT --input F [--cache-id ID]

Exit status: 0 when done, 1 when stopped by an error (a malformed line, a refused call: what
was imported before it stays, and importing again is safe: entries replace themselves), 2
when done but some entries were refused (each named by its line).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from tqdm import tqdm

from cache_server.entry_pb import cost_of, cost_pb
from cache_server.transfer_file import (
    ExportFileError,
    ExportLine,
    ExportReader,
    ExportWriter,
    Header,
)
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from service_runtime.error_reasons import retry_after_of

MESSAGE_BYTES = 16 * 1024 * 1024  # the cache server's limit on a message
BATCH_BYTES = 4 * 1024 * 1024  # an import call's entries, at most about this
SHOWN_REFUSALS = 20  # refused entries named one by one; the rest only counted
RETRIES = 4  # of a batch refused for the key's rate limit, or meeting a server briefly away
Metadata = tuple[tuple[str, str], ...]


def _channel(args: argparse.Namespace) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", MESSAGE_BYTES),
        ("grpc.max_send_message_length", MESSAGE_BYTES),
    ]
    if not (args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(args.address, options=options)
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes() if args.tls_ca else None,
        private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
        certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
    )
    return grpc.secure_channel(args.address, credentials, options=options)


def _failed(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"


# -- export ------------------------------------------------------------------------------


def export(args: argparse.Namespace, metadata: Metadata) -> int:
    output = Path(args.output)
    started = time.time()
    request = pb.ExportEntriesRequest(
        cache_id=args.cache_id, batch_size=args.batch_size, omit_vectors=args.omit_vectors
    )
    writer: ExportWriter | None = None
    bars: dict[str, tqdm] = {}
    left_out = 0
    try:
        with _channel(args) as channel:
            stub = pb_grpc.CacheServiceStub(channel)
            info = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=metadata, timeout=30)
            source = {
                "address": args.address,
                "store_backend": info.store_backend,
                "embedder_model_id": info.embedder_model_id,
                "cache_id": args.cache_id or "*",
            }
            for chunk in stub.ExportEntries(request, metadata=metadata):
                if writer is None:
                    # One model's vectors per file: the first chunk's (every cache of a
                    # server has the model it serves, but one being re-embedded sends none).
                    writer = ExportWriter(
                        output, Header(chunk.model, chunk.dimension, started, source)
                    )
                bar = bars.get(chunk.cache_id)
                if bar is None:
                    bar = bars[chunk.cache_id] = tqdm(
                        total=chunk.total, desc=chunk.cache_id, unit=" entries"
                    )
                header = writer.header
                same = (chunk.model, chunk.dimension) == (header.model, header.dimension)
                if chunk.model and not same:
                    left_out += len(chunk.entries)
                for exported in chunk.entries:
                    writer.write(_line(chunk.cache_id, exported, with_vector=same))
                bar.update(len(chunk.entries))
            if writer is None:  # no cache (that the key administers) was there to export
                writer = ExportWriter(output, Header("", 0, started, source))
            writer.commit()
    except BaseException as error:
        if writer is not None:
            writer.abandon()  # no file under the name asked for but a whole one
        if isinstance(error, grpc.RpcError):
            print(f"export failed: {_failed(error)}", file=sys.stderr)
            return 1
        if isinstance(error, OSError):  # the file: no such folder, a full disk
            print(f"export failed: {error}", file=sys.stderr)
            return 1
        raise
    finally:
        for bar in bars.values():
            bar.close()
    model = writer.header.model
    vectors = f"vectors of model {model[:16]}, {writer.header.dimension} dims" if model else ""
    print(
        f"exported {writer.entries} entries of {len(bars)} cache(s) to {output} "
        f"({vectors or 'no vectors'}) in {time.time() - started:.2f} s"
    )
    if left_out:
        print(f"{left_out} entries of caches of another model were written without vectors")
    return 0


def _line(cache_id: str, exported: pb.ExportedEntry, *, with_vector: bool) -> ExportLine:
    e = exported.entry
    return ExportLine(
        cache_id=cache_id,
        entry_id=e.id,
        prompt=e.prompt,
        response=e.response,
        attributes=dict(e.attributes),
        created_at=e.created_at,
        expires_at=e.expires_at or None,
        cost=cost_of(e),
        vector=exported.vector if with_vector else b"",
    )


# -- import ------------------------------------------------------------------------------


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


Batch = tuple[str, list[int], list[pb.ExportedEntry]]  # cache, line numbers, entries


def _batches(
    lines: Iterator[tuple[int, ExportLine]], into: str, size: int, stopped: list[ExportFileError]
) -> Iterator[Batch]:
    """The file's entries in calls: one cache per call, at most `size` entries and about
    BATCH_BYTES. A malformed line ends it (in `stopped`) after the batch before it."""
    cache, weight = "", 0
    numbers: list[int] = []
    entries: list[pb.ExportedEntry] = []
    try:
        for number, line in lines:
            target = into or line.cache_id
            entry = _entry_pb(line)
            cost = entry.ByteSize()
            if entries and (target != cache or len(entries) >= size or weight + cost > BATCH_BYTES):
                yield cache, numbers, entries
                numbers, entries, weight = [], [], 0
            cache = target
            numbers.append(number)
            entries.append(entry)
            weight += cost
    except ExportFileError as error:
        stopped.append(error)
    if entries:
        yield cache, numbers, entries


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
    with reader:
        if args.check:
            return _check(reader)
        return _import(args, metadata, reader)


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


def _import(args: argparse.Namespace, metadata: Metadata, reader: ExportReader) -> int:
    started = time.time()
    totals: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    caches: set[str] = set()
    stopped: list[ExportFileError] = []
    last_line = 1
    bar = tqdm(total=reader.size, unit="B", unit_scale=True, desc=reader.path.name)
    try:
        with _channel(args) as channel:
            stub = pb_grpc.CacheServiceStub(channel)
            for cache, numbers, entries in _batches(
                iter(reader), args.cache_id, args.batch_size, stopped
            ):
                request = pb.ImportEntriesRequest(
                    cache_id=cache, model=reader.header.model, entries=entries
                )
                try:
                    reply = _import_batch(stub, request, metadata)
                except grpc.RpcError as error:
                    print(
                        f"import failed at lines {numbers[0]}-{numbers[-1]} (cache {cache!r}): "
                        f"{_failed(error)}\nevery line before {numbers[0]} was imported, none "
                        f"after {numbers[-1]}; importing the file again is safe (entries "
                        "replace themselves)",
                        file=sys.stderr,
                    )
                    return 1
                caches.add(cache)
                totals.update(
                    imported=reply.imported,
                    reembedded=reply.reembedded,
                    expired=reply.skipped_expired,
                )
                for refusal in reply.refused:
                    reasons[refusal.reason] += 1
                    if sum(reasons.values()) <= SHOWN_REFUSALS:
                        tqdm.write(
                            f"line {numbers[refusal.index]}: refused ({refusal.reason}): "
                            f"{refusal.message}",
                            file=sys.stderr,
                        )
                last_line = numbers[-1]
                bar.update(reader.position - bar.n)
                bar.set_postfix(imported=totals["imported"], refresh=False)
    finally:
        bar.close()
    refused = sum(reasons.values())
    print(
        f"imported {totals['imported']} entries into {len(caches)} cache(s) from {reader.path} "
        f"in {time.time() - started:.2f} s ({totals['reembedded']} re-embedded); "
        f"{totals['expired']} skipped (already expired); {refused} refused"
        + (f" ({', '.join(f'{n} {r}' for r, n in reasons.most_common())})" if refused else "")
    )
    if stopped:
        print(
            f"{reader.path}: {stopped[0]}\nimport stopped there: the entries before it (to line "
            f"{last_line}) were imported, none from it on; fix the line and import the file "
            "again (entries replace themselves)",
            file=sys.stderr,
        )
        return 1
    return 2 if refused else 0


# -- the program -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cache_server.transfer_cli",
        description="Export caches from a running cache server to a JSONL file, or import one.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export", help="write a cache's entries (default: every cache)")
    out.add_argument("--cache-id", default="", help="one cache (default: every cache)")
    out.add_argument("--output", required=True, help="the file; gzip-compressed if it ends .gz")
    out.add_argument("--batch-size", type=int, default=256, help="entries per chunk (1-1024)")
    out.add_argument(
        "--omit-vectors", action="store_true", help="prompts only: the importer re-embeds"
    )
    into = commands.add_parser("import", help="store an export's entries")
    into.add_argument("--input", required=True, help="an export (.jsonl or .jsonl.gz)")
    into.add_argument(
        "--cache-id", default="", help="store every entry in this cache (default: its own)"
    )
    into.add_argument("--batch-size", type=int, default=256, help="entries per call (1-1024)")
    into.add_argument("--check", action="store_true", help="only read the file and say so")
    for command in (out, into):
        command.add_argument("--address", default="127.0.0.1:50051", help="the cache server")
        command.add_argument(
            "--api-key",
            "--key",
            default=os.environ.get("SEMCACHE_API_KEY"),
            help="an admin key of the cache(s), when the server has keys (env SEMCACHE_API_KEY)",
        )
        command.add_argument("--tls-ca", help="PEM of the CA of the server's certificate (TLS)")
        command.add_argument("--tls-cert", help="a client certificate (mutual TLS), PEM")
        command.add_argument("--tls-key", help="its key, PEM")
        command.add_argument("--tls-server-name", help="the name the certificate holds")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 1024:
        parser.error(f"--batch-size {args.batch_size} must be between 1 and 1024")
    metadata: Metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()
    if args.command == "export":
        return export(args, metadata)
    return import_(args, metadata)


if __name__ == "__main__":
    sys.exit(main())
