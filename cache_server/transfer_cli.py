"""`make export-cache` and `make import-cache`: a cache (or every cache) written to a file by
a running cache server, and such a file stored in another, over gRPC (the server that owns a
store is the only one to open it). The file's format: cache_server.transfer_file; what the
server does with each entry: cache_server.transfer.

    python -m cache_server.transfer_cli export --address HOST:PORT [--cache-id ID] --output F
    python -m cache_server.transfer_cli import --address HOST:PORT --input F [--cache-id ID]
        [--progress P] [--restart]

Exit status: 0 when done, 1 when stopped by an error (a malformed line, a refused call: what
was imported before it stays, and importing again is safe: entries replace themselves), 2
when done but some entries were refused (each named by its line), 130 when interrupted. An
import that stops, for whatever reason, goes on where it stopped when the same command runs
again (cache_server.transfer_cli_import, transfer_resume).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from tqdm import tqdm

from cache_server.entry_pb import cost_of
from cache_server.transfer_channel import Metadata, channel, failed
from cache_server.transfer_cli_import import import_
from cache_server.transfer_file import ExportLine, Header
from cache_server.transfer_file_io import ExportWriter
from cache_server.transfer_resume import SUFFIX
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc

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
        with channel(args) as opened:
            stub = pb_grpc.CacheServiceStub(opened)
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
            print(f"export failed: {failed(error)}", file=sys.stderr)
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
    into.add_argument(
        "--progress",
        help=f"where to record how far the import got (default: beside the input, INPUT{SUFFIX})",
    )
    into.add_argument(
        "--restart",
        action="store_true",
        help="start from the first entry even where an earlier run of this import stopped",
    )
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
