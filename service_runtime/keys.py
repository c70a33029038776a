"""`python -m service_runtime.keys`: mint an API key and add its entry to a keys file, or check
a keys file (service_runtime.tenants says what the file holds)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from service_runtime.tenants import KeyFileError, digest, parse_entry, parse_keys

KEY_PREFIX = "sc_"  # minted keys start with this, so that secret scanners can spot them


def mint_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def entry_for(
    key: str,
    key_id: str,
    caches: Iterable[str],
    actions: Iterable[str],
    *,
    passthrough: bool = False,
) -> dict[str, object]:
    return {
        "id": key_id,
        "sha256": digest(key),
        "caches": list(caches),
        "actions": list(actions),
        "passthrough": passthrough,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service_runtime.keys",
        description="Mint an API key and print its entry for the keys file (SEMCACHE_KEYS_FILE)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="a new random key and its entry")
    new.add_argument("--id", required=True, help="the key's name in logs and metrics")
    new.add_argument("--caches", required=True, help="comma-separated ids or prefixes*")
    new.add_argument("--actions", default="read,write", help="comma-separated read,write,admin")
    new.add_argument("--passthrough", action="store_true", help="may pass uncacheable chats")
    new.add_argument("--file", type=Path, help="append the entry to this keys file")
    check = sub.add_parser("check", help="validate a keys file")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            tenants = parse_keys(args.file.read_text())
        except (OSError, KeyFileError) as exc:
            print(f"{args.file}: {exc}", file=sys.stderr)
            return 1
        print(f"{args.file}: {len(tenants)} key(s): {', '.join(t.id for t in tenants.values())}")
        return 0
    key = mint_key()
    entry = entry_for(
        key,
        args.id,
        [c.strip() for c in args.caches.split(",") if c.strip()],
        [a.strip() for a in args.actions.split(",") if a.strip()],
        passthrough=args.passthrough,
    )
    try:
        _, _ = parse_entry(entry)
    except KeyFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.file is not None:
        document = json.loads(args.file.read_text()) if args.file.exists() else {"keys": []}
        document["keys"].append(entry)
        parse_keys(json.dumps(document))  # refuse to write a file that would not load
        args.file.write_text(json.dumps(document, indent=2) + "\n")
        print(f"added key {args.id!r} to {args.file}", file=sys.stderr)
    else:
        print(json.dumps(entry))
    print(f"the key (shown once; the file keeps only its digest): {key}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
