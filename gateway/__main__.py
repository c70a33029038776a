"""`python -m gateway`: serve the REST API with uvicorn."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from service_runtime.settings import start_service


def main(argv: Sequence[str] | None = None) -> int:
    settings = start_service(GatewaySettings, argv, "gateway")
    if settings is None:
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # Keep-alive connections and a bounded number of concurrent requests.
        limit_concurrency=1024,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
