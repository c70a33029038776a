"""The protobuf modules of the two services, imported from one place.

They live under the module path that `make proto` gives them in the repository,
`protos.semcache.*`: in the repository the client uses the repository's own generated
modules, and an installed client the ones its build generated from the same .proto files. So a
process never holds two copies of a .proto (protobuf's descriptor pool refuses a second
definition of `semcache.cache.v1.QueryRequest`), whoever imported the stubs first.
"""

from __future__ import annotations

from protos.semcache.cache.v1 import cache_pb2 as cache_pb
from protos.semcache.embedding.v1 import embedding_pb2 as embedding_pb

CACHE_SERVICE = cache_pb.DESCRIPTOR.services_by_name["CacheService"].full_name
EMBEDDING_SERVICE = embedding_pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name

__all__ = ["CACHE_SERVICE", "EMBEDDING_SERVICE", "cache_pb", "embedding_pb"]
