"""Where an import of a file got to, so that running the same command again goes on from there
(`make import-cache`, cache_server.transfer_cli_import).

After each batch the cache server acknowledged (stored: durable when it answers), the program
replaces a small JSON file beside the input, `FILE.import-progress`: the target (address,
and the cache every entry goes into, "" for each its own), the last line of the file whose
entry was acknowledged, the SHA-256 of the file's lines up to it as they were read
(cache_server.transfer_file_io), and the counts so far. The next run into the same target
reads that many lines again without sending them and compares the digest: the same, it goes
on after that line; different (the file was changed, or is another one under that name),
shorter, another target, or a progress file that cannot be read: it starts from the first
entry, which is safe (entry ids are computed, so an entry imported twice replaces itself).

It is written after the acknowledgement, and replaced whole (a rename), so it never claims a
line that was not stored: a run killed at any point (Ctrl-C, SIGKILL, the network) leaves
at worst one batch to send again. A run that completes removes it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "semcache-import-progress"
VERSION = 1
SUFFIX = ".import-progress"


def progress_path(input_path: Path) -> Path:
    return input_path.with_name(input_path.name + SUFFIX)


@dataclass
class Progress:
    """An import's progress: what it goes into, how far it got, what it counted so far."""

    target: dict[str, str]  # {"address": ..., "cache_id": ... ("": each entry's own)}
    line: int = 1  # the last line acknowledged (1: the header, nothing imported yet)
    digest: str = ""  # SHA-256 (hex) of lines 1..line as read
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    caches: set[str] = field(default_factory=set)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "target": self.target,
                "line": self.line,
                "sha256": self.digest,
                "counts": dict(self.counts),
                "refused": dict(self.refused),
                "caches": sorted(self.caches),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Progress:
        """ValueError (KeyError, TypeError) when `text` is not a progress record."""
        record: dict[str, Any] = json.loads(text)
        if record.get("format") != FORMAT or record.get("version") != VERSION:
            raise ValueError("not a progress record of this version")
        target, line, digest = record["target"], record["line"], record["sha256"]
        if not isinstance(target, dict) or not isinstance(line, int) or line < 1:
            raise ValueError("malformed progress record")
        return cls(
            target={str(k): str(v) for k, v in target.items()},
            line=line,
            digest=str(digest),
            counts=collections.Counter({str(k): int(v) for k, v in record["counts"].items()}),
            refused=collections.Counter({str(k): int(v) for k, v in record["refused"].items()}),
            caches={str(c) for c in record["caches"]},
        )


def load(path: Path) -> Progress | None:
    """The progress recorded at `path`; None when there is none or it cannot be read."""
    try:
        return Progress.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class ProgressFile:
    """Keeps one import's progress at `path` (see the module's docstring). A folder it cannot
    write to is said once (`warning`), and the import goes on without being resumable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.warning: str | None = None

    def save(self, progress: Progress) -> None:
        if self.warning is not None:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            partial.write_text(progress.to_json(), encoding="utf-8")
            os.replace(partial, self.path)
        except OSError as error:
            self.warning = (
                f"cannot record the import's progress in {self.path} ({error}): if it stops, "
                "running it again starts from the beginning (--progress elsewhere)"
            )

    def remove(self) -> None:
        for path in (self.path, self.path.with_name(self.path.name + ".partial")):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
