"""The export file (cache_server.transfer_file, transfer_file_io): what is written is read
back the same, plain or gzip-compressed; a file of a newer version, a line that is not an
entry, a vector that does not fit the header are refused naming the line; a file under the
name asked for is always whole."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from cache_server.entries import AnswerCost
from cache_server.transfer_file import (
    FORMAT,
    VERSION,
    ExportFileError,
    ExportLine,
    Header,
    entry_line,
    header_line,
    parse_entry,
    parse_header,
)
from cache_server.transfer_file_io import ExportReader, ExportWriter

HEADER = Header("ab" * 32, 4, 1_700_000_000.25, {"address": "x:1", "store_backend": "embedded"})


def line(prompt: str, *, vector: bool = True, **changes: object) -> ExportLine:
    values: dict[str, object] = {
        "cache_id": "support",
        "entry_id": "0" * 32,
        "prompt": prompt,
        "response": f"answer to {prompt} ☃",
        "attributes": {"lang": "en", "chat_scope": "d" * 16},
        "created_at": 1_699_999_000.123456,
        "expires_at": 1_700_086_400.5,
        "cost": AnswerCost(12, 80, 1.25, "gpt-4o-mini"),
        "vector": np.array([0.5, -0.5, 0.5, -0.5], dtype="<f4").tobytes() if vector else b"",
    }
    values.update(changes)
    return ExportLine(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["cache.jsonl", "cache.jsonl.gz"])
def test_what_is_written_is_read_back_the_same(tmp_path: Path, name: str) -> None:
    written = [
        line("How do I reset my password?"),
        line("no vector, no cost, never expires", vector=False, cost=None, expires_at=None),
        line("ünïcødé\nand a newline", attributes={}),
    ]
    path = tmp_path / name
    with ExportWriter(path, HEADER) as writer:
        for entry in written:
            writer.write(entry)
        writer.commit()
    assert writer.entries == 3 and not (tmp_path / f"{name}.partial").exists()
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    with ExportReader(path) as reader:
        assert reader.header == HEADER
        assert list(reader) == [(2, written[0]), (3, written[1]), (4, written[2])]
        assert reader.position == reader.size


def test_a_compressed_file_is_read_whatever_its_name(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"  # gzip inside, no .gz
    path.write_bytes(gzip.compress(f"{header_line(HEADER)}\n{entry_line(line('q'))}\n".encode()))
    with ExportReader(path) as reader:
        assert [n for n, _ in reader] == [2]


def test_the_lines_are_plain_json_with_the_vector_in_base64() -> None:
    header = json.loads(header_line(HEADER))
    assert header == {
        "format": FORMAT,
        "version": VERSION,
        "model": HEADER.model,
        "dimension": 4,
        "exported_at": HEADER.exported_at,
        "source": dict(HEADER.source),
    }
    record = json.loads(entry_line(line("q")))
    assert record["vector"] == "AAAAPwAAAL8AAAA/AAAAvw=="  # [0.5, -0.5, 0.5, -0.5] as <f4
    assert record["cost"] == {
        "prompt_tokens": 12,
        "completion_tokens": 80,
        "upstream_seconds": 1.25,
        "model": "gpt-4o-mini",
    }
    bare = json.loads(entry_line(line("q", vector=False, cost=None, expires_at=None)))
    assert "vector" not in bare and "cost" not in bare and bare["expires_at"] is None


def test_a_newer_version_or_another_file_is_refused_at_the_header() -> None:
    newer = {**json.loads(header_line(HEADER)), "version": VERSION + 1}
    with pytest.raises(ExportFileError, match="version 2 is newer than this semcache reads"):
        parse_header(json.dumps(newer))
    for text, message in [
        ('{"format": "something else"}', "not a semcache cache export"),
        ("not json", "line 1: not JSON"),
        (json.dumps({**newer, "version": "1"}), "not a version"),
        (json.dumps({**newer, "version": 1, "dimension": 0}), "with dimension 0"),
    ]:
        with pytest.raises(ExportFileError, match=message) as error:
            parse_header(text)
        assert error.value.line == 1
    # Keys this version does not know are ignored.
    assert parse_header(json.dumps({**newer, "version": 1, "later": True})) == HEADER


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": None}, "'prompt' is missing"),
        ({"response": 3}, "'response' must be a str"),
        ({"attributes": {"lang": 1}}, "attributes must map strings to strings"),
        ({"created_at": "yesterday"}, "'created_at' must be a time"),
        ({"expires_at": True}, "'expires_at' must be a time"),
        ({"vector": "not base64!"}, "vector is not base64"),
        ({"vector": "AAAAPw=="}, "vector of 4 bytes; the header's dimension 4 needs 16"),
        ({"cost": {"prompt_tokens": -1}}, "negative count"),
    ],
)
def test_a_line_that_is_not_an_entry_is_refused_naming_it(
    change: dict[str, object], message: str
) -> None:
    record = {**json.loads(entry_line(line("q"))), **change}
    record = {k: v for k, v in record.items() if v is not None}
    with pytest.raises(ExportFileError, match=message) as error:
        parse_entry(json.dumps(record), 57, HEADER)
    assert error.value.line == 57 and str(error.value).startswith("line 57: ")


def test_reading_stops_at_the_first_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    good = entry_line(line("q"))
    path.write_text(f"{header_line(HEADER)}\n{good}\n\n{good[:-9]}\n{good}\n")
    read = []
    with ExportReader(path) as reader, pytest.raises(ExportFileError, match="line 4: not JSON"):
        for number, _ in reader:
            read.append(number)
    assert read == [2]  # the blank line 3 is skipped; nothing after line 4 is read


def test_a_cut_short_compressed_file_is_an_error_not_an_end(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl.gz"
    body = f"{header_line(HEADER)}\n" + "".join(f"{entry_line(line(str(i)))}\n" for i in range(99))
    path.write_bytes(gzip.compress(body.encode())[:-40])
    with ExportReader(path) as reader, pytest.raises(ExportFileError, match="unreadable"):
        list(reader)


def test_an_abandoned_export_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl.gz"
    with pytest.raises(RuntimeError), ExportWriter(path, HEADER) as writer:
        writer.write(line("q"))
        raise RuntimeError("the server went away")
    assert list(tmp_path.iterdir()) == []
    path.write_text("not an export\n")
    with pytest.raises(ExportFileError, match="line 1: not JSON"):
        ExportReader(path)
