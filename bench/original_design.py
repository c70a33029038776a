"""The design the original product had, as a benchmark baseline: one FastAPI process with
sentence-transformers (PyTorch) in process and a Python list as the cache.

    python -m bench.original_design --model PATH --port N
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


@dataclass
class Entry:
    query: str
    response: str
    embedding: np.ndarray
    timestamp: float


class QueryIn(BaseModel):
    query: str
    use_cache: bool = True
    similarity_threshold: float | None = None


def create_app(model_path: str, threshold: float = 0.85) -> FastAPI:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(model_path, device="cpu")
    cache: list[Entry] = []
    app = FastAPI()

    @app.post("/query")
    def query(body: QueryIn) -> dict[str, object]:
        started = time.perf_counter()
        embedding = model.encode(body.query, normalize_embeddings=True)
        best: tuple[float, Entry] | None = None
        if body.use_cache:
            for entry in cache:
                similarity = float(np.dot(embedding, entry.embedding))
                if best is None or similarity > best[0]:
                    best = (similarity, entry)
        limit = threshold if body.similarity_threshold is None else body.similarity_threshold
        if best is not None and best[0] >= limit:
            similarity, entry = best
            return {
                "query": body.query,
                "response": entry.response,
                "cache_hit": True,
                "cached_data": {
                    "cached_response": entry.response,
                    "similarity_score": similarity,
                    "cached_query": entry.query,
                    "cache_timestamp": entry.timestamp,
                },
                "embedding_dimension": int(embedding.shape[0]),
                "processing_time": time.perf_counter() - started,
            }
        response = f"answer to {body.query}"
        cache.append(Entry(body.query, response, embedding, time.time()))
        return {
            "query": body.query,
            "response": response,
            "cache_hit": False,
            "cached_data": None,
            "embedding_dimension": int(embedding.shape[0]),
            "processing_time": time.perf_counter() - started,
        }

    @app.get("/health")
    def health() -> dict[str, object]:
        return {"status": "healthy", "timestamp": time.time()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
