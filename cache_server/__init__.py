"""The cache server: semantic lookup over gRPC, a pluggable store, an LLM on a miss."""
