"""A real HTTP server speaking the OpenAI chat-completions API, standing in for the upstream
LLM in integration tests. It counts calls and can be slow or fail on demand."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class FakeLLM:
    def __init__(self, delay_s: float = 0.0, answer: Callable[[str], str] | None = None) -> None:
        """`answer(prompt)` gives the answer (default: one of its own for every prompt)."""
        self.delay_s = delay_s
        self.answer = answer or (lambda prompt: f"LLM answer to: {prompt}")
        self.fail_status: int | None = None
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with owner._lock:
                    owner.prompts.append(prompt)
                time.sleep(owner.delay_s)
                if self.path != "/v1/chat/completions" or owner.fail_status:
                    self.send_response(owner.fail_status or 404)
                    self.end_headers()
                    self.wfile.write(b'{"error": "failed on purpose"}')
                    return
                answer = {
                    "choices": [{"message": {"role": "assistant", "content": owner.answer(prompt)}}]
                }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.prompts)

    def __enter__(self) -> FakeLLM:
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
