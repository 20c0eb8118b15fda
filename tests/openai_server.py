"""A stand-in for an OpenAI-compatible chat endpoint on 127.0.0.1: a real http.server in a thread.

It serves POST /v1/chat/completions as vLLM, llama.cpp or a hosted API do. Each answer comes from
`replies` (scripted answers, consumed in order: a status with headers, a raw body, or message content),
then from `always` (one scripted answer repeated forever, e.g. a 500), then from `writer(prompt) -> content`.
Every request is recorded in `requests` ({"headers", "body", "time"}) so tests can count calls, read the
prompt and check which API key was sent.

Header names are recorded in lower case. `passage_writer` plays a careful writer model: it reads the subject and the passage out of prompts built from
prompts/qa_synthesis_ja.md and answers each sentence of the passage with a question about the subject; the
`extra` pairs it is given are appended to every answer (an invented term, a question about "この節", ...).
"""

import json
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the assistant message, wrapped in a chat.completion object
    body: str | None = None  # or the whole response body, as is
    headers: dict = field(default_factory=dict)


def completion(content: str, model: str, prompt: str) -> dict:
    return {
        "id": f"chatcmpl-{abs(hash(content)) % 10**8}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(content), "total_tokens": len(prompt) + len(content)},
    }


def prompt_of(body: dict) -> str:
    return "\n".join(message.get("content") or "" for message in body.get("messages", []))


def passage_of(prompt: str) -> tuple[str, str]:
    """(subject, passage) of a prompt built from prompts/qa_synthesis_ja.md."""
    subject = re.search(r"^主題: (.*)$", prompt, re.M).group(1)
    passage = re.search(r"<passage>\n(.*?)\n</passage>", prompt, re.S).group(1)
    return subject, passage


def passage_writer(extra=()):
    """A writer that asks one grounded question per sentence of the passage, plus the `extra` pairs."""

    def write(prompt: str) -> str:
        subject, passage = passage_of(prompt)
        sentences = [s for s in re.findall(r"[^。\n]+。", passage) if len(s) > 4]
        pairs = [{"question": f"{subject}について、{sentence[:8]}で始まる説明は何ですか？", "answer": sentence}
                 for sentence in sentences]
        pairs += [{"question": q.format(subject=subject), "answer": a.format(subject=subject)} for q, a in extra]
        return json.dumps({"pairs": pairs}, ensure_ascii=False)

    return write


class QuietServer(ThreadingHTTPServer):
    """A client that gives up (a cancelled request, a run stopped by a signal) is not the server's error."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class OpenAIServer:
    def __init__(self, writer=None, model: str = "test-writer-7b"):
        self.writer = writer or passage_writer()
        self.model = model
        self.replies: deque[Reply] = deque()
        self.always: Reply | None = None
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(Reply(404, body='{"error": {"message": "not found"}}'), body)
                with server._lock:
                    server.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body, "time": time.monotonic()})
                    reply = server.replies.popleft() if server.replies else server.always
                if reply is None:
                    reply = Reply(content=server.writer(prompt_of(body)))
                self._send(reply, body)

            def _send(self, reply: Reply, body: dict):
                if reply.body is not None:
                    data = reply.body
                elif reply.content is not None:
                    data = json.dumps(completion(reply.content, server.model, prompt_of(body)), ensure_ascii=False)
                else:
                    data = json.dumps({"error": {"message": f"scripted {reply.status}", "type": "server_error"}})
                encoded = data.encode("utf-8")
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(encoded)

            def log_message(self, *args):
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "OpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def prompts(self) -> list[str]:
        return [prompt_of(request["body"]) for request in self.requests]
