"""A real HTTP server speaking the OpenAI chat-completions API, standing in for the upstream
LLM in integration tests. It counts calls and can be slow or fail on demand, and reports a
`usage` tests can predict to the token: one prompt token per word of the prompt, one completion
token per word of the answer (`usage_of`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


def word_usage(prompt: str, answer: str) -> dict[str, int]:
    """OpenAI's usage object, counting one token per word."""
    prompt_tokens, completion_tokens = len(prompt.split()), len(answer.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class FakeLLM:
    def __init__(self, delay_s: float = 0.0, answer: Callable[[str], str] | None = None) -> None:
        """`answer(prompt)` gives the answer (default: one of its own for every prompt)."""
        self.delay_s = delay_s
        self.answer = answer or (lambda prompt: f"LLM answer to: {prompt}")
        self.fail_status: int | None = None
        # Sent with fail_status (default: a body that is not OpenAI's error shape).
        self.fail_body = b'{"error": "failed on purpose"}'
        # A stream breaks off (the connection closes) after this many chunks.
        self.break_stream_after: int | None = None
        # Seconds each call takes are `delay_s`; `usage_of` gives its usage.
        self.usage_of: Callable[[str, str], dict[str, int]] = word_usage
        self.prompts: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1].get("content")
                prompt = content if isinstance(content, str) else json.dumps(content)
                with owner._lock:
                    owner.prompts.append(prompt)
                    owner.bodies.append(body)
                time.sleep(owner.delay_s)
                if self.path != "/v1/chat/completions" or owner.fail_status:
                    self.send_response(owner.fail_status or 404)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(owner.fail_body)
                    return
                text = owner.answer(prompt)
                if body.get("stream"):
                    self._stream(body, text, owner.usage_of(prompt, text))
                    return
                message = {"role": "assistant", "content": text}
                answer = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": owner.usage_of(prompt, text),
                }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict[str, Any], text: str, usage: dict[str, int]) -> None:
                """Server-sent chunks, one word each, then (asked with include_usage) one with
                the usage and no choices, then [DONE] (or a broken connection)."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
                head["model"] = body.get("model", "fake")
                words = text.split(" ")
                deltas = [{"role": "assistant", "content": ""}]
                deltas += [
                    {"content": w + (" " if i < len(words) - 1 else "")}
                    for i, w in enumerate(words)
                ]
                for sent, delta in enumerate([*deltas, {}]):
                    if owner.break_stream_after is not None and sent >= owner.break_stream_after:
                        self.close_connection = True
                        return
                    finish = "stop" if not delta else None
                    chunk = {
                        **head,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                if (body.get("stream_options") or {}).get("include_usage"):
                    last = {**head, "choices": [], "usage": usage}
                    self.wfile.write(f"data: {json.dumps(last)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

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
