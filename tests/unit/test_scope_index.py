"""ScopeIndex: the entries carrying every asked attribute value, kept right as entries are
stored, replaced with other attributes, and forgotten."""

from __future__ import annotations

from cache_server.store.scope_index import ScopeIndex


def test_members_follow_puts_replacements_and_discards() -> None:
    scopes = ScopeIndex()
    scopes.put("a", {"tenant": "1", "lang": "en"})
    scopes.put("b", {"tenant": "1", "lang": "fr"})
    scopes.put("c", {"tenant": "2", "lang": "en"})
    assert scopes.members({"tenant": "1"}) == {"a", "b"}
    assert scopes.members({"tenant": "1", "lang": "en"}) == {"a"}
    assert scopes.members({"tenant": "3"}) == set()
    assert scopes.members({}) == {"a", "b", "c"} and len(scopes) == 3
    scopes.put("a", {"tenant": "2"})  # replaced: out of its old scopes
    assert scopes.members({"tenant": "1"}) == {"b"}
    assert scopes.members({"lang": "en"}) == {"c"}
    scopes.discard("c")
    scopes.discard("missing")
    assert scopes.members({"tenant": "2"}) == {"a"} and len(scopes) == 2
