"""semcache as LangChain's cache: a paraphrase is answered without calling the model.

    pip install './clients/python[langchain]'
    python examples/langchain_chat.py [--cache localhost:50051]

A fake chat model stands in for a real one (any LangChain chat model works the same way); it
counts its calls. Exits 1 unless the model was called once for two questions that mean the
same.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from langchain_core.globals import set_llm_cache
from langchain_core.language_models import FakeListChatModel

from semcache_client.langchain import SemcacheCache


class CountingChatModel(FakeListChatModel):
    calls: int = 0

    def _call(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        return super()._call(*args, **kwargs)


def main(address: str) -> int:
    cache = SemcacheCache(address, cache_id="langchain-example")
    cache.clear()
    set_llm_cache(cache)
    try:
        model = CountingChatModel(responses=["Paris is the capital of France."])
        first = model.invoke("What is the capital of France?")
        second = model.invoke("Which city is the capital of France?")
        print(f"first:  {first.content!r}")
        print(f"second: {second.content!r} (model called {model.calls} time(s))")
        return 0 if model.calls == 1 and second.content == first.content else 1
    finally:
        set_llm_cache(None)
        cache.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="localhost:50051", help="cache server address(es)")
    sys.exit(main(parser.parse_args().cache))
