"""The gateway: the documented REST API (and a LangCache-compatible one) over gRPC."""
