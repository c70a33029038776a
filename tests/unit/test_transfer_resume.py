"""Resuming an import (cache_server.transfer_resume, transfer_cli_import): the reader's mark
is the digest of exactly the lines read; a run goes on after the recorded line only when the
file still holds those same lines and the target is the same, and starts from the first
entry otherwise (a changed, shorter or other file, another target, an unreadable record)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cache_server.transfer_cli_import import _resumed
from cache_server.transfer_file import ExportLine, Header, entry_line, header_line
from cache_server.transfer_file_io import ExportReader, ExportWriter
from cache_server.transfer_resume import Progress, ProgressFile, load, progress_path

TARGET = {"address": "127.0.0.1:50051", "cache_id": ""}


def line(i: int, response: str = "") -> ExportLine:
    return ExportLine("c", "", f"question {i}", response or f"answer {i}", {}, 1.0, None, None, b"")


def write(path: Path, lines: list[ExportLine]) -> None:
    with ExportWriter(path, Header("", 0, 1_700_000_000.0)) as writer:
        for entry in lines:
            writer.write(entry)
        writer.commit()


def stopped_at(path: Path, last_line: int) -> Progress:
    """The progress an import of `path` records once lines up to `last_line` are stored."""
    with ExportReader(path) as reader:
        for number, _ in reader:
            if number == last_line:
                progress = Progress(dict(TARGET), *reader.mark())
                progress.counts["imported"] = last_line - 1
                return progress
    raise AssertionError("no such line")


def rest(path: Path, earlier: Progress | None, target: dict[str, str] = TARGET) -> list[int]:
    """The lines a run would send, given the earlier progress."""
    reader, progress = _resumed(ExportReader(path), target, earlier)
    with reader:
        numbers = [number for number, _ in reader]
    assert progress is earlier or progress.line == 1
    return numbers


@pytest.mark.parametrize("name", ["f.jsonl", "f.jsonl.gz"])
def test_the_mark_is_the_digest_of_the_lines_read(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write(path, [line(i) for i in range(5)])
    text = (header_line(Header("", 0, 1_700_000_000.0)) + "\n").encode()
    text += b"".join((entry_line(line(i)) + "\n").encode() for i in range(2))
    with ExportReader(path) as reader:
        assert reader.skip(2) == 2
        assert reader.mark() == (3, hashlib.sha256(text).hexdigest())
        assert [number for number, _ in reader] == [4, 5, 6]
        assert reader.skip(10) == 0


def test_a_run_goes_on_after_the_line_recorded_when_the_file_is_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f.jsonl.gz"
    write(path, [line(i) for i in range(10)])
    earlier = stopped_at(path, 6)
    assert rest(path, None) == list(range(2, 12))
    assert rest(path, earlier) == list(range(7, 12))
    assert "resuming after line 6: 5 entries were imported" in capsys.readouterr().out
    # A line after the part done mended (or changed): still the same import.
    write(path, [line(i, "mended" if i == 8 else "") for i in range(10)])
    assert rest(path, earlier) == list(range(7, 12))


def test_a_changed_or_shorter_file_or_another_target_starts_from_the_first_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f.jsonl"
    write(path, [line(i) for i in range(10)])
    earlier = stopped_at(path, 6)
    assert rest(path, earlier, {**TARGET, "cache_id": "other"}) == list(range(2, 12))
    assert "this one goes elsewhere: starting from the first entry" in capsys.readouterr().out
    write(path, [line(i, "changed" if i == 2 else "") for i in range(10)])
    assert rest(path, earlier) == list(range(2, 12))
    assert "its lines up to 6 differ now" in capsys.readouterr().out
    write(path, [line(i) for i in range(3)])
    assert rest(path, earlier) == [2, 3, 4]


def test_the_record_is_replaced_whole_and_one_unreadable_is_none(tmp_path: Path) -> None:
    path = progress_path(tmp_path / "f.jsonl.gz")
    assert path.name == "f.jsonl.gz.import-progress"
    progress = Progress(dict(TARGET), 7, "ab" * 32)
    progress.counts.update(imported=5, expired=1)
    progress.refused["prompt"] += 1
    progress.caches.add("c")
    record = ProgressFile(path)
    record.save(progress)
    assert load(path) == progress and list(tmp_path.iterdir()) == [path]
    for garbage in ("", "{", '{"format": "semcache-import-progress", "version": 1}', "[1]"):
        path.write_text(garbage)
        assert load(path) is None, garbage
    record.remove()
    assert list(tmp_path.iterdir()) == [] and load(path) is None

    nowhere = ProgressFile(tmp_path / "no such folder" / "f.import-progress")
    nowhere.save(progress)  # said, not raised: the import goes on, not resumable
    assert nowhere.warning is not None and "starts from the beginning" in nowhere.warning
