"""LangChain integration: `set_llm_cache(SemcacheCache("localhost:50051"))`.

Needs the `langchain` extra (`pip install 'semcache-client[langchain]'`).
"""

from __future__ import annotations

from semcache_client.langchain.cache import SemcacheCache

__all__ = ["SemcacheCache"]
