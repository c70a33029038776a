"""How the cache server says it handled a Chat call: the call's initial metadata, read by the
gateway (headers X-Semcache-Chat-Scope / -Uncacheable) and the client library (ChatStream.route,
which names the same keys: it is a package of its own)."""

from __future__ import annotations

# The digest the answer is looked up and stored under (attribute chat_scope); absent when the
# request is not cached.
CHAT_SCOPE_KEY = "semcache-chat-scope"
# Why the request is passed to the upstream uncached; absent when it is cached.
UNCACHEABLE_KEY = "semcache-uncacheable"
