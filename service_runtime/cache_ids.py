"""The rule for cache ids, one copy for the processes that check it: the cache server (which
also accepts the ids it reserves for itself, cache_server/entries.py) and the gateway (whose
schema refuses a bad id with a 400/422 before any gRPC call, and never lets a REST caller name
a reserved one: those start with "_")."""

from __future__ import annotations

CACHE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

# The caches the cache server keeps for others, each with the attribute that names, in every
# entry and look-up, the application cache it serves: the gateway's conversational search
# keeps its question rewrites in REFORMULATIONS, one scope per application cache.
REFORMULATIONS = "__reformulations__"
RESERVED_SCOPES: dict[str, str] = {REFORMULATIONS: "cache"}
