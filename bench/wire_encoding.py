"""Why EmbedResponse carries vectors as raw float32 bytes: encode/decode cost per reply.

Compares, for a reply of N vectors: `bytes` (our choice: np.frombuffer on the client),
`repeated float` rows (packed, the obvious proto), and the server-side encode of each.
Run: make bench  (or python -m bench.wire_encoding)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from protos.semcache.embedding.v1 import embedding_pb2 as pb


def _repeated_float_classes() -> Any:
    file = descriptor_pb2.FileDescriptorProto(
        name="bench_wire.proto", package="bench", syntax="proto3"
    )
    row = file.message_type.add(name="Row")
    row.field.add(
        name="values",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    rows = file.message_type.add(name="Rows")
    rows.field.add(
        name="rows",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        type_name=".bench.Row",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.Rows"))


def _time_us(fn: Callable[[], object], repeat: int = 200) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat * 1e6


def measure(rows_cls: Any, count: int, dims: int) -> list[str]:
    vectors = np.random.default_rng(0).standard_normal((count, dims)).astype(np.float32)

    def encode_bytes() -> bytes:
        reply = pb.EmbedResponse(
            count=count, dimension=dims, vectors=vectors.astype("<f4").tobytes()
        )
        return reply.SerializeToString()

    def encode_repeated() -> bytes:
        msg = rows_cls()
        for v in vectors:
            msg.rows.add().values.extend(v.tolist())
        return bytes(msg.SerializeToString())

    wire_bytes, wire_repeated = encode_bytes(), encode_repeated()

    def decode_bytes() -> np.ndarray:
        reply = pb.EmbedResponse.FromString(wire_bytes)
        return np.frombuffer(reply.vectors, dtype="<f4").reshape(reply.count, reply.dimension)

    def decode_repeated() -> np.ndarray:
        msg = rows_cls.FromString(wire_repeated)
        return np.array([list(r.values) for r in msg.rows], dtype=np.float32)

    np.testing.assert_array_equal(decode_bytes(), decode_repeated())
    return [
        f"| {count} x {dims} | {name} | {size} | {_time_us(enc):.1f} | {_time_us(dec):.1f} |"
        for name, enc, dec, size in [
            ("bytes (float32 LE)", encode_bytes, decode_bytes, len(wire_bytes)),
            ("repeated float", encode_repeated, decode_repeated, len(wire_repeated)),
        ]
    ]


def main() -> None:
    rows_cls = _repeated_float_classes()
    print("| vectors x dims | encoding | bytes on wire | server encode µs | client decode µs |")
    print("|---|---|---:|---:|---:|")
    for count, dims in [(1, 384), (32, 384), (1, 768), (32, 768)]:
        print("\n".join(measure(rows_cls, count, dims)))


if __name__ == "__main__":
    main()
