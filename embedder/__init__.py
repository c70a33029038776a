"""The embedder: exports a sentence-embedding model to ONNX and serves it over gRPC."""
