"""`python -m gateway`: serve the REST API with uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from service_runtime.settings import start_service
from service_runtime.tenants import KeyFileError

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    settings = start_service(GatewaySettings, argv, "gateway")
    if settings is None:
        return 2
    try:
        app = create_app(settings)
    except KeyFileError as exc:
        log.error("cannot start: %s", exc)
        return 2
    keyed = app.state.keys.keyed
    host = settings.listen_host(open_to_all=not keyed)
    if not keyed:
        log.warning(
            "no API key configured: anyone who reaches the gateway may use every cache; "
            "listening on %s%s",
            host,
            " only (set GATEWAY_HOST=0.0.0.0 to listen on all interfaces)"
            if settings.host is None
            else "",
        )
    uvicorn.run(
        app,
        host=host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # Keep-alive connections and a bounded number of concurrent requests.
        limit_concurrency=1024,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
