"""The counters behind each client's limits (in memory; the Redis ones are the same rules in
Lua, tested against a real Redis in tests/integration/test_tenants_redis.py), and the keys file
that names the clients."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cache_server.limits import MemoryLimiter
from service_runtime.keys import entry_for, main, mint_key
from service_runtime.tenants import OPEN, Action, KeyFileError, KeyRing, Tenant, parse_keys


def test_burst_then_refill_at_the_rate() -> None:
    limiter = MemoryLimiter()
    assert [limiter.take_now("a", 2.0, 3, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take_now("a", 2.0, 3, now=0.0)
    assert wait == pytest.approx(0.5)  # one token comes back every 1/rate seconds
    assert limiter.take_now("a", 2.0, 3, now=0.5) == 0.0
    assert limiter.take_now("a", 2.0, 3, now=0.5) > 0


def test_clients_are_independent_and_memory_is_bounded() -> None:
    limiter = MemoryLimiter(max_clients=2)
    assert limiter.take_now("a", 1.0, 1, now=0.0) == 0.0
    assert limiter.take_now("a", 1.0, 1, now=0.0) > 0
    assert limiter.take_now("b", 1.0, 1, now=0.0) == 0.0
    limiter.take_now("c", 1.0, 1, now=0.0)  # "a" is forgotten: the oldest
    assert limiter.take_now("a", 1.0, 1, now=0.0) == 0.0


def test_requests_at_once_and_spending_are_counted_per_client() -> None:
    async def run() -> None:
        limiter = MemoryLimiter()
        assert await limiter.enter("a", 2, "1") and await limiter.enter("a", 2, "2")
        assert not await limiter.enter("a", 2, "3")
        assert await limiter.enter("b", 2, "3")  # another client has its own slots
        await limiter.leave("a", "1")
        assert await limiter.enter("a", 2, "4")
        await limiter.spend("k", "2026-12-03", 1, 8)
        await limiter.spend("k", "2026-12-03", 1, 0)
        assert await limiter.spent("k", "2026-12-03") == (2, 8)
        await limiter.spend("k", "2026-12-04", 1, 1)  # a new day starts from nothing
        assert await limiter.spent("k", "2026-12-04") == (1, 1)
        assert await limiter.spent("k", "2026-12-03") == (0, 0)

    asyncio.run(run())


def test_a_key_holds_exact_caches_and_prefixes_and_only_its_actions() -> None:
    shop = Tenant("shop", ("shop", "shop-*"), frozenset({Action.READ}))
    assert shop.may(Action.READ, "shop") and shop.may(Action.READ, "shop-eu")
    assert not shop.may(Action.READ, "shopping") and not shop.may(Action.READ, "")
    assert not shop.may(Action.WRITE, "shop")
    assert Tenant("ops", ("*",)).may(Action.ADMIN, "")  # "" is the default cache
    assert Tenant("d", ("default",)).holds("")


def test_keys_are_stored_hashed_and_checked_by_digest(tmp_path: Path) -> None:
    key = mint_key()
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [entry_for(key, "shop", ["shop"], ["read"])]}))
    assert key not in path.read_text()
    ring = KeyRing.configured(api_key=None, keys_file=path)
    tenant = ring.authenticate(f"Bearer {key}")
    assert tenant is not None and tenant.id == "shop" and not tenant.passthrough
    for wrong in (None, "", key, f"Basic {key}", f"Bearer {key}x", "Bearer "):
        assert ring.authenticate(wrong) is None
    assert KeyRing.configured(api_key=None, keys_file=None).authenticate(None) is OPEN


def test_a_revoked_key_is_refused_after_the_reload_and_a_bad_edit_keeps_the_old_keys(
    tmp_path: Path,
) -> None:
    keep, drop = mint_key(), mint_key()
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {"keys": [entry_for(keep, "keep", ["a"], ["read"]), entry_for(drop, "drop", ["a"], [])]}
        )
    )
    ring = KeyRing.configured(api_key=None, keys_file=path, reload_s=5)
    assert ring.authenticate(f"Bearer {drop}") is not None
    path.write_text(json.dumps({"keys": [entry_for(keep, "keep", ["a"], ["read"])]}))
    ring.refresh(now=ring._read_at + 4.9)
    assert ring.authenticate(f"Bearer {drop}") is not None  # not yet: within the interval
    ring.refresh(now=ring._read_at + 5.0)
    assert ring.authenticate(f"Bearer {drop}") is None
    path.write_text("{broken")
    ring.refresh(now=ring._read_at + 10.0)
    assert ring.authenticate(f"Bearer {keep}") is not None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[]", '"keys" list'),
        ('{"keys": [{"id": "a", "sha256": "xyz", "caches": ["a"]}]}', "sha256"),
        ('{"keys": [{"id": "a", "sha256": "' + "0" * 64 + '", "caches": []}]}', "caches"),
        (
            '{"keys": [{"id": "a", "sha256": "' + "0" * 64 + '", "caches": ["a"], "rate": 1}]}',
            "unknown field",
        ),
        (
            '{"keys": [{"id": "a", "sha256": "' + "0" * 64 + '", "caches": ["a"], '
            '"actions": ["delete"]}]}',
            "actions",
        ),
        (
            '{"keys": [{"id": "a", "sha256": "' + "0" * 64 + '", "caches": ["a"], "burst": 0}]}',
            "positive",
        ),
    ],
)
def test_a_bad_keys_file_is_refused_saying_where(text: str, says: str) -> None:
    with pytest.raises(KeyFileError, match=says):
        parse_keys(text)


def test_the_command_mints_a_key_and_appends_its_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    assert main(["new", "--id", "shop", "--caches", "shop,shop-*", "--file", str(path)]) == 0
    key = capsys.readouterr().err.rsplit(" ", 1)[-1].strip()
    assert key.startswith("sc_") and key not in path.read_text()
    tenant = KeyRing.configured(api_key=None, keys_file=path).authenticate(f"Bearer {key}")
    assert tenant is not None and tenant.caches == ("shop", "shop-*")
    assert tenant.actions == {Action.READ, Action.WRITE}
    assert main(["check", str(path)]) == 0


def test_a_certificate_name_stands_for_a_key_only_when_no_key_is_sent() -> None:
    key = mint_key()
    document = {
        "keys": [
            {**entry_for(key, "shop", ["shop"], ["read"]), "certificates": ["shop-app"]},
            {"id": "batch", "certificates": ["batch-job"], "caches": ["shop"]},
        ]
    }
    ring = KeyRing(parse_keys(json.dumps(document)))
    assert [t.id for t in ring.tenants] == ["shop", "batch"]
    by_cert = ring.authenticate(None, ["shop-app"])
    assert by_cert is not None and by_cert.id == "shop"
    batch = ring.authenticate("", ["batch-job"])
    assert batch is not None and batch.id == "batch"
    assert ring.authenticate(None, ["stranger"]) is None
    assert ring.authenticate("Bearer sc_wrong-key-123456", ["shop-app"]) is None  # a key decides
    with pytest.raises(KeyFileError, match="sha256, or certificates"):
        parse_keys('{"keys": [{"id": "a", "caches": ["a"]}]}')
