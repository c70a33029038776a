"""The operator console: `GET /console`, a static page (HTML, one CSS file, a few JavaScript
modules under `/console/static/`, no build step, nothing from the internet) that reads and acts
on the caches from the browser through the documented REST API, with the operator's key.

The shell holds no data, so the gateway serves it without a key (a browser navigation carries
no `Authorization` header): every call the page makes carries the key the operator typed in,
and the cache server decides what it may see (statistics, decisions and policy need an admin
key). The page is told only whether this gateway has keys at all, so that it asks for one
before making calls that would be refused.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.errors import ProblemError

STATIC = Path(__file__).parent / "static"

# The only files served (no path from the request reaches the file system), with their types.
ASSETS = {
    "console.css": "text/css; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "decisions.js": "text/javascript; charset=utf-8",
    "entries.js": "text/javascript; charset=utf-8",
    "policy.js": "text/javascript; charset=utf-8",
    "main.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

# Everything from this origin only: no inline script or style, no other site, no framing.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files, read once per process: a browser asks again (cheap) so that an upgraded
    # gateway never runs with the old page's scripts.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@router.get("/console")
async def console(request: Request) -> Response:
    """The page. It learns from a meta tag whether this gateway has API keys."""
    keyed = "true" if request.app.state.keys.keyed else "false"
    page = _read("index.html").replace(b"__KEYED__", keyed.encode())
    return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/console/static/{name}")
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ProblemError(404, f"no console asset {name!r}")
    return Response(_read(name), media_type=media_type, headers=HEADERS)
