"""Who may use which caches: API keys, each granting caches and actions, with its own limits.

One deployment serves several applications (tenants). Each holds a key; the operator lists the
keys in a JSON file (or a Kubernetes Secret mounted as one), never the keys themselves but
their SHA-256 digests, so a leaked file grants nothing (keys are long random tokens, so a fast
digest is enough: nothing to brute-force). `python -m service_runtime.keys new` mints a key
and prints the file's entry for it. The file is read again every `reload_s` seconds: a key
added, changed or revoked takes effect within that interval, without a restart.

    {"keys": [
      {"id": "shop", "sha256": "9f86d0...", "caches": ["shop", "shop-*"],
       "actions": ["read", "write"], "rate_per_s": 20, "burst": 40, "concurrency": 8,
       "passthrough": false, "upstream_requests_per_day": 5000,
       "upstream_tokens_per_day": 2000000}
    ]}

- `caches`: exact cache ids, or prefixes ending in `*` ("*" alone: every cache). The default
  cache (a request naming none) is "default".
- `actions`: read (look-ups: search, query, chat), write (set, delete, flush, feedback), admin
  (policy, statistics, reindex; "*" in caches: server-wide statistics).
- limits: requests per second (a token bucket of `burst`), requests at once, and what the key
  may spend upstream per UTC day; an absent limit is the server's default (its settings).
- `passthrough`: whether the key's uncacheable chat requests may go to the upstream LLM.
- `certificates`: client certificate names (common name or DNS SAN) that, over mutual TLS,
  stand for this key on gRPC without sending it (`sha256` may then be left out).

Three modes: a keys file (tenants); a single key (`SEMCACHE_API_KEY`: one tenant, "default",
holding everything); or none (`make run`'s default: every caller may do everything, so the
services listen on loopback only unless told otherwise).

The cache server, which owns the caches, enforces the grants (cache_server.access); the gateway
reads the same file only to turn away a request with no valid key before doing any work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

log = logging.getLogger(__name__)

# gRPC metadata: the caller's key as an HTTP Authorization value ("Bearer <key>"), and, from
# the gateway, the address of the client it serves (the limits' key when there are no keys).
KEY_METADATA = "authorization"
CLIENT_METADATA = "x-semcache-client"
# What the gateway forwards of the request it serves, on every call it makes for it.
forwarded: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("forwarded", default=())

DEFAULT_CACHE = "default"
MIN_KEY_CHARS = 16
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class Action(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass(frozen=True)
class Limits:
    """A key's own limits; None: the server's default for that limit."""

    rate_per_s: float | None = None
    burst: int | None = None
    concurrency: int | None = None
    upstream_requests_per_day: int | None = None
    upstream_tokens_per_day: int | None = None


@dataclass(frozen=True)
class Tenant:
    """What one key may do. `id` names it in logs, metrics and the audit log (never the key)."""

    id: str
    caches: tuple[str, ...] = ("*",)
    actions: frozenset[Action] = frozenset(Action)
    passthrough: bool = True
    limits: Limits = field(default_factory=Limits)
    keyed: bool = True  # False: no key was configured; every caller is this open tenant

    def holds(self, cache_id: str) -> bool:
        """Whether the key grants this cache ("" is the default cache)."""
        cache_id = cache_id or DEFAULT_CACHE
        return any(
            grant == cache_id or (grant.endswith("*") and cache_id.startswith(grant[:-1]))
            for grant in self.caches
        )

    @property
    def holds_every_cache(self) -> bool:
        return "*" in self.caches

    def may(self, action: Action, cache_id: str) -> bool:
        return action in self.actions and self.holds(cache_id)


OPEN = Tenant("anonymous", keyed=False)


class KeyFileError(ValueError):
    """The keys file is not valid: the message says where."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _positive(entry: dict[str, object], name: str, kind: type) -> float | int | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise KeyFileError(f"key {entry.get('id')!r}: {name} must be a positive number")
    if kind is int and not float(value).is_integer():
        raise KeyFileError(f"key {entry.get('id')!r}: {name} must be a whole number")
    return kind(value)  # type: ignore[no-any-return]


def parse_entry(entry: object) -> tuple[list[str], Tenant]:
    """One key's entry -> the credentials that name it (its key's digest, and "cert:<name>"
    for each client certificate name mapped to it) and what it may do."""
    if not isinstance(entry, dict):
        raise KeyFileError("each key must be an object")
    known = {
        "id",
        "sha256",
        "caches",
        "actions",
        "passthrough",
        "rate_per_s",
        "burst",
        "concurrency",
        "upstream_requests_per_day",
        "upstream_tokens_per_day",
        "certificates",
        "comment",
    }
    if unknown := sorted(set(entry) - known):
        raise KeyFileError(f"key {entry.get('id')!r}: unknown field(s) {', '.join(unknown)}")
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not _ID.match(key_id):
        raise KeyFileError(f"key id {key_id!r}: 1-64 letters, digits and _ . : -")
    sha = entry.get("sha256")
    names = entry.get("certificates", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise KeyFileError(f"key {key_id!r}: certificates must be a list of names")
    if sha is None and not names:
        raise KeyFileError(f"key {key_id!r}: give its sha256, or certificates, or both")
    if sha is not None and (not isinstance(sha, str) or not _DIGEST.match(sha)):
        raise KeyFileError(f"key {key_id!r}: sha256 must be 64 lowercase hex digits")
    credentials = ([sha] if isinstance(sha, str) else []) + [f"cert:{n}" for n in names]
    caches = entry.get("caches")
    if (
        not isinstance(caches, list)
        or not caches
        or not all(isinstance(c, str) and c for c in caches)
    ):
        raise KeyFileError(f"key {key_id!r}: caches must be a non-empty list of ids or prefixes*")
    actions = entry.get("actions", ["read"])
    if not isinstance(actions, list) or not all(a in Action._value2member_map_ for a in actions):
        raise KeyFileError(f"key {key_id!r}: actions must be a list of read, write, admin")
    passthrough = entry.get("passthrough", False)
    if not isinstance(passthrough, bool):
        raise KeyFileError(f"key {key_id!r}: passthrough must be true or false")
    limits = Limits(
        rate_per_s=_positive(entry, "rate_per_s", float),
        burst=_positive(entry, "burst", int),  # type: ignore[arg-type]
        concurrency=_positive(entry, "concurrency", int),  # type: ignore[arg-type]
        upstream_requests_per_day=_positive(entry, "upstream_requests_per_day", int),  # type: ignore[arg-type]
        upstream_tokens_per_day=_positive(entry, "upstream_tokens_per_day", int),  # type: ignore[arg-type]
    )
    tenant = Tenant(
        key_id,
        tuple(caches),
        frozenset(Action(a) for a in actions),
        passthrough,
        limits,
    )
    return credentials, tenant


def parse_keys(text: str) -> dict[str, Tenant]:
    """The keys file's text -> tenants by credential (a key's digest, or "cert:<name>").
    Raises KeyFileError naming the fault."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise KeyFileError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFileError('the file must be an object with a "keys" list')
    tenants: dict[str, Tenant] = {}
    ids: set[str] = set()
    for entry in document["keys"]:
        credentials, tenant = parse_entry(entry)
        if tenant.id in ids or any(c in tenants for c in credentials):
            raise KeyFileError(
                f"key {tenant.id!r} is listed twice (same id, key or certificate name)"
            )
        tenants.update(dict.fromkeys(credentials, tenant))
        ids.add(tenant.id)
    return tenants


class KeyRing:
    """The keys a service accepts. `authenticate` is the one check of a presented key."""

    def __init__(
        self,
        tenants: dict[str, Tenant] | None,
        *,
        path: Path | None = None,
        reload_s: float = 5.0,
    ) -> None:
        self._tenants = tenants  # None: no keys at all (open)
        self.path = path
        self.reload_s = reload_s
        self._read_at = time.monotonic()
        self._text: str | None = None

    @classmethod
    def configured(
        cls, *, api_key: str | None, keys_file: Path | None, reload_s: float = 5.0
    ) -> KeyRing:
        """From settings: a keys file wins over a single key; neither: open."""
        if keys_file is not None:
            ring = cls({}, path=keys_file, reload_s=reload_s)
            ring._tenants = ring._read(first=True)
            return ring
        if api_key is not None:
            if len(api_key) < MIN_KEY_CHARS:
                raise KeyFileError(f"the API key is too short: use at least {MIN_KEY_CHARS} chars")
            return cls({digest(api_key): Tenant(DEFAULT_CACHE)})
        return cls(None)

    @property
    def keyed(self) -> bool:
        return self._tenants is not None

    @property
    def tenants(self) -> list[Tenant]:
        return list({t.id: t for t in (self._tenants or {}).values()}.values())

    def _read(self, *, first: bool = False) -> dict[str, Tenant]:
        assert self.path is not None
        try:
            text = self.path.read_text()
            if text == self._text and self._tenants is not None:
                return self._tenants
            tenants = parse_keys(text)
        except (OSError, KeyFileError) as exc:
            if first:
                raise KeyFileError(f"keys file {self.path}: {exc}") from exc
            # Keep serving with the keys last read: a bad edit must not lock everyone out.
            log.error("keys file %s not reloaded, keeping the keys read before: %s", self.path, exc)
            return self._tenants or {}
        if not first:
            log.warning("keys file %s reloaded: %d key(s)", self.path, len(tenants))
        self._text = text
        return tenants

    def refresh(self, now: float | None = None) -> None:
        """Reads the keys file again when `reload_s` has passed since it was last read."""
        if self.path is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._read_at >= self.reload_s:
            self._read_at = now
            self._tenants = self._read()

    def authenticate(
        self, authorization: str | None, certificates: Sequence[str] = ()
    ) -> Tenant | None:
        """The tenant of an `Authorization: Bearer <key>` value, or, with none, of a verified
        client certificate's names (mutual TLS: the gRPC shell passes them); OPEN when no keys
        are configured; None when keys are and neither names one."""
        if self._tenants is None:
            return OPEN
        self.refresh()
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            # By digest: how long the look-up takes says nothing about the keys.
            return self._tenants.get(digest(token.strip()))
        return next(
            (t for n in certificates if (t := self._tenants.get(f"cert:{n}")) is not None), None
        )
