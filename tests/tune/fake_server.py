"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 (tests of the LLM client, the
strategies and the benchmarks that talk to a server)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_body(content: str, prompt_tokens: int = 11, completion_tokens: int = 7) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class FakeLLM:
    """A scripted OpenAI-compatible server on 127.0.0.1 in a thread.

    ``script`` is a list of replies consumed one per request: ``("ok", content)``,
    ``("status", code)``, ``("error", (code, message))``, ``("sleep", seconds)`` (answers
    too late), ``("raw", bytes)``, ``("trickle", (content, seconds_per_byte))`` (a valid
    answer sent one byte at a time) or ``("retry_after", (code, seconds))``.
    When the script is empty the ``default`` reply is used. Requests are recorded.
    """

    def __init__(self) -> None:
        self.script: list[tuple] = []
        self.default: tuple = ("status", 500)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                fake.requests.append(json.loads(self.rfile.read(n) or b"{}"))
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                kind, arg = fake.script.pop(0) if fake.script else fake.default
                if kind == "sleep":
                    time.sleep(arg)
                    kind, arg = "ok", '{"points": []}'
                extra: dict[str, str] = {}
                if kind == "trickle":
                    body = json.dumps(chat_body(arg[0])).encode()
                    try:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(arg[1])
                    except (BrokenPipeError, ConnectionResetError, OSError):
                        pass
                    return
                if kind == "retry_after":
                    code, after = arg
                    payload = json.dumps({"error": {"message": "slow down"}}).encode()
                    extra["Retry-After"] = str(after)
                elif kind == "ok":
                    payload = json.dumps(chat_body(arg)).encode()
                    code = 200
                elif kind == "raw":
                    payload, code = arg, 200
                elif kind == "error":  # ("error", (code, message))
                    code, msg = arg
                    payload = json.dumps({"error": {"message": msg}}).encode()
                else:
                    payload = json.dumps({"error": {"message": f"scripted {arg}"}}).encode()
                    code = arg
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    if code == 429 and not extra:
                        self.send_header("Retry-After", "0")
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
