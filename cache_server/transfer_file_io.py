"""Writing and reading a whole export file (the format: cache_server.transfer_file).

The reader also says where it is in the file, in a way a later run can check: `mark()` is the
number of the last line read and the SHA-256 of every line up to it, as read (decompressed,
each with its newline). An import records the mark of the last line the server acknowledged
(cache_server.transfer_resume); the next run skips that many lines and compares the digest, so
it goes on only where the file still holds exactly what was imported.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from cache_server.transfer_file import (
    ExportFileError,
    ExportLine,
    Header,
    decoded,
    entry_line,
    header_line,
    parse_entry,
    parse_header,
)

_GZIP_MAGIC = b"\x1f\x8b"
Mark = tuple[int, str]  # the last line read (1: the header) and the digest of lines 1..it


class ExportWriter:
    """Writes an export to `path.partial`, then renames it to `path` on `commit`: a file
    under the name asked for is always whole. Closed without commit: the partial file goes."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self.header = header
        self._partial = path.with_name(path.name + ".partial")
        self._raw = self._partial.open("wb")
        self._gzip = (
            gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)
            if path.suffix == ".gz"
            else None
        )
        self._text = io.TextIOWrapper(self._gzip or self._raw, encoding="utf-8", newline="\n")
        self._text.write(header_line(header) + "\n")
        self.entries = 0

    def write(self, line: ExportLine) -> None:
        self._text.write(entry_line(line) + "\n")
        self.entries += 1

    def commit(self) -> None:
        self._text.detach()  # flushed; the files below stay open
        if self._gzip is not None:
            self._gzip.close()  # its trailer; the file it writes to stays open
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._partial, self.path)

    def abandon(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # detached already, or a full disk
            self._text.detach()
            if self._gzip is not None:
                self._gzip.close()
        self._raw.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> ExportWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._raw.closed:
            self.abandon()


class ExportReader:
    """Reads an export: its header at once (ExportFileError when it is not one), then each
    entry with its line number; `position` is how far into the file (bytes, compressed), and
    `mark()` where it is in its lines (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._raw = path.open("rb")
        compressed = self._raw.read(2) == _GZIP_MAGIC
        self._raw.seek(0)
        binary: gzip.GzipFile | io.BufferedReader = (
            gzip.GzipFile(fileobj=self._raw) if compressed else self._raw
        )
        self._lines = iter(binary)
        self._binary = binary
        self._digest = hashlib.sha256()
        self.line = 0  # the last line read
        try:
            self.header = parse_header(decoded(self._next() or b"", 1))
        except (OSError, EOFError) as exc:  # not gzip after all, cut short
            self.close()
            raise ExportFileError(1, f"unreadable ({exc})") from None
        except ExportFileError:
            self.close()
            raise

    def _next(self) -> bytes | None:
        raw = next(self._lines, None)
        if raw is not None:
            self.line += 1
            self._digest.update(raw)
        return raw

    @property
    def position(self) -> int:
        return self._raw.tell() if not self._raw.closed else self.size

    def mark(self) -> Mark:
        """The last line read, and the SHA-256 (hex) of the lines up to it."""
        return self.line, self._digest.copy().hexdigest()

    def skip(self, lines: int) -> int:
        """Reads up to `lines` more lines without parsing them (a resumed import's part done
        before); how many there were (fewer at the end of the file)."""
        done = 0
        try:
            while done < lines and self._next() is not None:
                done += 1
        except (OSError, EOFError) as exc:
            raise ExportFileError(self.line + 1, f"unreadable ({exc})") from None
        return done

    def __iter__(self) -> Iterator[tuple[int, ExportLine]]:
        try:
            while (raw := self._next()) is not None:
                if raw.strip():
                    yield self.line, parse_entry(decoded(raw, self.line), self.line, self.header)
        except (OSError, EOFError) as exc:  # a compressed file cut short or corrupt
            raise ExportFileError(self.line + 1, f"unreadable ({exc})") from None

    def close(self) -> None:
        self._binary.close()
        self._raw.close()

    def __enter__(self) -> ExportReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
