"""Loopback test doubles of the remote LLM servers, speaking their real wire formats over real HTTP.

- `FakeOllama`: `POST /api/chat`, NDJSON stream (`message.content` per line, a final `done: true` line with
  `done_reason`, `prompt_eval_count`, `eval_count`) or one JSON object when `"stream": false`; errors as
  `{"error": "..."}` with the HTTP status, like Ollama.
- `FakeOpenAI`: `POST /v1/chat/completions`, SSE (`data: {chunk}` with `choices[0].delta.content`, a finish chunk,
  a usage chunk when `stream_options.include_usage`, `data: [DONE]`) or one JSON completion; checks
  `Authorization: Bearer <key>` and answers 401 in OpenAI's error shape.

Each server runs a stdlib ThreadingHTTPServer on 127.0.0.1, port 0, in a daemon thread (use as a context
manager), records every request (`.requests`: path, headers, JSON body), streams with HTTP/1.1 chunked encoding,
can pause `delay_s` between chunks and stream `pieces` repeated for a long time (`repeat`), answers
`fail_status` to everything, and notes when the client hung up mid-stream (`.disconnected`, `.chunks_sent`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive + chunked streaming, as real servers do
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw or b"{}")
        fake = self.server.fake
        fake.requests.append(RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        fake.handle(self, body)

    # -- helpers the fakes use
    def send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> bool:
        """One HTTP chunk; False once the client has gone away."""
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return False

    def end_stream(self) -> None:
        self.write_chunk(b"")  # the zero-length chunk ends the body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeLLMServer


class FakeLLMServer:
    def __init__(
        self,
        *,
        pieces: tuple[str, ...] = ("Paris", " is", " the", " capital", "."),
        prompt_tokens: int = 17,
        delay_s: float = 0.0,
        repeat: int = 1,
        fail_status: int | None = None,
        error_message: str = "model runner crashed",
        send_usage: bool = True,
    ) -> None:
        self.pieces = pieces
        self.prompt_tokens = prompt_tokens
        self.delay_s = delay_s
        self.repeat = repeat
        self.fail_status = fail_status
        self.error_message = error_message
        self.send_usage = send_usage
        self.requests: list[RecordedRequest] = []
        self.chunks_sent = 0
        self.disconnected = threading.Event()
        self.disconnected_at: float | None = None  # time.monotonic()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def stream_pieces(self) -> list[str]:
        return list(self.pieces) * self.repeat

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def handle(self, h: _Handler, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def _stream(self, h: _Handler, encoded: list[bytes]) -> bool:
        """Send encoded chunks (delay_s apart); False if the client hung up."""
        for i, data in enumerate(encoded):
            if i and self.delay_s:
                time.sleep(self.delay_s)
            if not h.write_chunk(data):
                self.disconnected_at = time.monotonic()
                self.disconnected.set()
                return False
            self.chunks_sent += 1
        return True


class FakeOllama(FakeLLMServer):
    def handle(self, h: _Handler, body: dict[str, Any]) -> None:
        if h.path != "/api/chat":
            return h.send_json(404, {"error": f"404 page not found: {h.path}"})
        if self.fail_status:
            return h.send_json(self.fail_status, {"error": self.error_message})
        model = body.get("model", "")
        num_predict = (body.get("options") or {}).get("num_predict") or 10**9
        pieces = self.stream_pieces[:num_predict]
        done_reason = "length" if len(pieces) < len(self.stream_pieces) else "stop"
        stamp = "2026-01-01T00:00:00.000000Z"
        final = {
            "model": model, "created_at": stamp, "message": {"role": "assistant", "content": ""},
            "done": True, "done_reason": done_reason, "total_duration": 1_000_000, "load_duration": 1000,
            "prompt_eval_count": self.prompt_tokens, "prompt_eval_duration": 1000,
            "eval_count": len(pieces), "eval_duration": 1000,
        }  # fmt: skip
        if body.get("stream") is False:
            final["message"]["content"] = "".join(pieces)
            return h.send_json(200, final)
        h.start_stream("application/x-ndjson")
        lines = [
            {"model": model, "created_at": stamp, "message": {"role": "assistant", "content": p}, "done": False}
            for p in pieces
        ] + [final]
        if self._stream(h, [json.dumps(line).encode() + b"\n" for line in lines]):
            h.end_stream()


class FakeOpenAI(FakeLLMServer):
    def __init__(self, *, api_key: str | None = "sk-test", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_key = api_key

    def handle(self, h: _Handler, body: dict[str, Any]) -> None:
        if h.path != "/v1/chat/completions":
            return h.send_json(404, {"error": {"message": f"Unknown path {h.path}", "type": "invalid_request_error"}})
        if self.api_key is not None and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return h.send_json(
                401,
                {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                           "code": "invalid_api_key"}},
            )
        if self.fail_status:
            return h.send_json(self.fail_status, {"error": {"message": self.error_message, "type": "server_error"}})
        model = body.get("model", "")
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 10**9
        pieces = self.stream_pieces[:limit]
        finish = "length" if len(pieces) < len(self.stream_pieces) else "stop"
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(pieces),
                 "total_tokens": self.prompt_tokens + len(pieces)}  # fmt: skip
        base = {"id": "chatcmpl-fake", "created": 1767225600, "model": model, "system_fingerprint": "fake"}
        if not body.get("stream"):
            return h.send_json(200, {
                **base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                             "finish_reason": finish}],
                "usage": usage,
            })  # fmt: skip

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            return {**base, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}  # fmt: skip

        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": p}, None) for p in pieces]
        events.append(chunk({}, finish))
        if self.send_usage and (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        h.start_stream("text/event-stream")
        encoded = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        if self._stream(h, encoded):
            h.end_stream()
