"""The gRPC channel `make export-cache` and `make import-cache` reach the cache server by
(cache_server.transfer_cli): plain or TLS, with the server's message size."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

MESSAGE_BYTES = 16 * 1024 * 1024  # the cache server's limit on a message
Metadata = tuple[tuple[str, str], ...]


def channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to `args.address`, TLS when `args` names a CA or a client certificate."""
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


def failed(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"
