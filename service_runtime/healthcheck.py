"""Container health checks without extra binaries.

    python -m service_runtime.healthcheck grpc localhost:50052
    python -m service_runtime.healthcheck http http://localhost:8000/health

Exit 0 when the gRPC health service says SERVING, or the URL answers 2xx; else 1.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def check_grpc(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def check_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            return 200 <= int(reply.status) < 300
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("grpc", "http"):
        print(__doc__, file=sys.stderr)
        return 2
    healthy = check_grpc(argv[1]) if argv[0] == "grpc" else check_http(argv[1])
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
