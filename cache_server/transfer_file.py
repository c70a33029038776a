"""The file `make export-cache` writes and `make import-cache` reads: JSON Lines, UTF-8,
gzip-compressed when its name ends in `.gz` (read either way).

The first line is the header:

    {"format": "semcache-cache-export", "version": 1, "model": "<sha256 of the ONNX file>",
     "dimension": 384, "exported_at": 1700000000.0, "source": {"address": ..., ...}}

`model` and `dimension` are those of the vectors in the file ("" and 0 when it holds none);
`exported_at` is Unix seconds. Then one line per entry:

    {"cache_id": "support", "id": "<32 hex>", "prompt": "...", "response": "...",
     "attributes": {"lang": "en"}, "created_at": 1699990000.0, "expires_at": 1700086400.0,
     "cost": {"prompt_tokens": 12, "completion_tokens": 80, "upstream_seconds": 1.2,
              "model": "gpt-4o-mini"},
     "vector": "<base64 of `dimension` little-endian float32>"}

`expires_at` is null for an entry that never expires (the time left is expires_at minus
exported_at); `cost` and `vector` are absent when the entry has none; `id` is informative
(an import computes it again). Keys this version does not know are ignored; a file of a newer
version is refused with a clear message. Writing and reading a whole file:
cache_server.transfer_file_io.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cache_server.entries import AnswerCost

FORMAT = "semcache-cache-export"
VERSION = 1


class ExportFileError(ValueError):
    """A line of the file is not what the format says; `line` counts from 1 (the header)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Header:
    model: str  # the identity of the model the file's vectors came from; "" when none
    dimension: int  # of the vectors; 0 when none
    exported_at: float  # Unix seconds
    source: Mapping[str, str] = field(default_factory=dict)
    version: int = VERSION


@dataclass(frozen=True)
class ExportLine:
    cache_id: str
    entry_id: str
    prompt: str
    response: str
    attributes: Mapping[str, str]
    created_at: float  # Unix seconds
    expires_at: float | None  # Unix seconds; None: never
    cost: AnswerCost | None
    vector: bytes  # `dimension` little-endian float32; b"" when none


def header_line(header: Header) -> str:
    return _dumps(
        {
            "format": FORMAT,
            "version": header.version,
            "model": header.model,
            "dimension": header.dimension,
            "exported_at": header.exported_at,
            "source": dict(header.source),
        }
    )


def entry_line(line: ExportLine) -> str:
    record: dict[str, Any] = {
        "cache_id": line.cache_id,
        "id": line.entry_id,
        "prompt": line.prompt,
        "response": line.response,
        "attributes": dict(line.attributes),
        "created_at": line.created_at,
        "expires_at": line.expires_at,
    }
    if line.cost is not None:
        c = line.cost
        record["cost"] = {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "upstream_seconds": c.upstream_seconds,
            "model": c.model,
        }
    if line.vector:
        record["vector"] = base64.b64encode(line.vector).decode("ascii")
    return _dumps(record)


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def parse_header(text: str) -> Header:
    record = _object(text, 1)
    if record.get("format") != FORMAT:
        raise ExportFileError(1, f'not a semcache cache export (no "format": "{FORMAT}")')
    version = record.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportFileError(1, f"format version {version!r} is not a version")
    if version > VERSION:
        raise ExportFileError(
            1,
            f"format version {version} is newer than this semcache reads ({VERSION}): import "
            "it with the semcache that wrote it, or a newer one",
        )
    model = _get(record, "model", str, 1, "")
    dimension = _get(record, "dimension", int, 1, 0)
    if dimension < 0 or bool(model) != bool(dimension):
        raise ExportFileError(1, f"model {model[:16]!r} with dimension {dimension}")
    source = _get(record, "source", dict, 1, {})
    return Header(
        model=model,
        dimension=dimension,
        exported_at=_time(record, "exported_at", 1, required=True) or 0.0,
        source={str(k): str(v) for k, v in source.items()},
        version=version,
    )


def parse_entry(text: str, number: int, header: Header) -> ExportLine:
    """The entry on line `number`; ExportFileError naming the line when it is not one."""
    record = _object(text, number)
    attributes = _get(record, "attributes", dict, number, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
        raise ExportFileError(number, "attributes must map strings to strings")
    vector = b""
    encoded = _get(record, "vector", str, number, "")
    if encoded:
        try:
            vector = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ExportFileError(number, f"vector is not base64 ({exc})") from None
        if len(vector) != 4 * header.dimension:
            raise ExportFileError(
                number,
                f"vector of {len(vector)} bytes; the header's dimension {header.dimension} "
                f"needs {4 * header.dimension}",
            )
    return ExportLine(
        cache_id=_get(record, "cache_id", str, number, None),
        entry_id=_get(record, "id", str, number, ""),
        prompt=_get(record, "prompt", str, number, None),
        response=_get(record, "response", str, number, None),
        attributes=attributes,
        created_at=_time(record, "created_at", number, required=False) or 0.0,
        expires_at=_time(record, "expires_at", number, required=False),
        cost=_cost(record.get("cost"), number),
        vector=vector,
    )


def _object(text: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise ExportFileError(number, f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ExportFileError(number, "not a JSON object")
    return record


def _get(record: Mapping[str, Any], name: str, kind: type, number: int, default: Any) -> Any:
    """record[name] of type `kind`; `default` when absent (None: required)."""
    value = record.get(name)
    if value is None:
        if default is None:
            raise ExportFileError(number, f"{name!r} is missing")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ExportFileError(number, f"{name!r} must be a {kind.__name__}")
    return value


def _time(record: Mapping[str, Any], name: str, number: int, *, required: bool) -> float | None:
    value = record.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ExportFileError(number, f"{name!r} must be a time (Unix seconds)")
    return float(value)


def _cost(value: Any, number: int) -> AnswerCost | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ExportFileError(number, "'cost' must be an object")
    prompt = _get(value, "prompt_tokens", int, number, 0)
    completion = _get(value, "completion_tokens", int, number, 0)
    seconds = _time(value, "upstream_seconds", number, required=False) or 0.0
    if prompt < 0 or completion < 0 or seconds < 0:
        raise ExportFileError(number, "'cost' holds a negative count or duration")
    return AnswerCost(prompt, completion, seconds, _get(value, "model", str, number, ""))


def decoded(raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExportFileError(number, f"not UTF-8 ({exc})") from None
