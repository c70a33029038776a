"""A deterministic OpenAI-compatible LLM for benchmarks, served in-process on a free port.

POST {base_url}/chat/completions answers `answer(prompt)` (the last message's content) as
choices[0].message.content, and counts the calls. With embedder.training.traffic's answers,
every question of one meaning gets the very same text, so a cached answer is right exactly
when it equals the fresh one (the cache server's `exact` judge).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class FakeUpstream:
    def __init__(self, answer: Callable[[str], str]) -> None:
        self._answer = answer
        self._calls = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the cache server's client reuses it
            # Headers and body go out as two writes: with Nagle's algorithm the body waits for
            # the client's delayed ACK (~40 ms a call).
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                prompt = str(body["messages"][-1]["content"])
                with owner._lock:
                    owner._calls += 1
                content = owner._answer(prompt)
                self._send(
                    200,
                    {
                        "object": "chat.completion",
                        "model": body.get("model", "fake"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                )

            def _send(self, status: int, payload: object) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """For CACHE_UPSTREAM_BASE_URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def calls(self) -> int:
        """Chat completions answered so far."""
        with self._lock:
            return self._calls

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
