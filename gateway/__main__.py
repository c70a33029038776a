"""`python -m gateway`: serve the REST API with uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from gateway.app import create_app
from gateway.settings import GatewaySettings
from service_runtime.settings import settings_from_args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from_args(GatewaySettings, argv, prog="python -m gateway")
    except ValidationError as exc:
        print(f"gateway: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s [gateway] %(name)s: %(message)s",
    )
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
