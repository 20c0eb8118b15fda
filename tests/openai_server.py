"""A stand-in for an OpenAI-compatible chat endpoint on 127.0.0.1: a real http.server in a thread.

It serves POST /v1/chat/completions as vLLM, llama.cpp or a hosted API do. Each answer comes from `replies`
(scripted answers, consumed in order: a status with headers, a raw body, or message content, optionally sent a
byte at a time), then from `always` (one scripted answer repeated forever, e.g. a 500), then from `by_kind` (one
scripted answer to every request of a kind), then from the model it
plays, by the kind of request (the response_format json_schema name, or without one the prompt's tags):
* qa_facts         `writer(prompt) -> content`; by default `sentence_writer()`, a careful writer.
* qa_verdict       `verdict(passage, question, answer) -> bool`, answered {"supported": ...}; by default
                   `grounded_verdict`, which says true when the answer (or each sentence of a rewrite) is in the
                   passage; tests that plant false facts pass a verdict that knows the truth.
* passage_rewrite  `rewriter(subject, passage) -> text`, answered {"text": ...}; by default the passage's
                   sentences in reverse order (a rewrite that states nothing new).
Every request is recorded in `requests` ({"headers", "body", "time", "kind"}; header names in lower case) so
tests can count calls, read the prompt and check which API key was sent.
"""

import json
import re
import sys
import threading
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cthulhu_sft.examples import named_terms


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the assistant message, wrapped in a chat.completion object
    body: str | None = None  # or the whole response body, as is
    headers: dict = field(default_factory=dict)
    usage: object = None  # the completion's "usage" instead of the counted one (a string, say)
    trickle: float | None = None  # seconds between two bytes of the body


def completion(content: str, model: str, prompt: str, usage=None) -> dict:
    counted = {"prompt_tokens": len(prompt), "completion_tokens": len(content), "total_tokens": len(prompt) + len(content)}
    return {
        "id": f"chatcmpl-{abs(hash(content)) % 10**8}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": counted if usage is None else usage,
    }


def prompt_of(body: dict) -> str:
    return "\n".join(message.get("content") or "" for message in body.get("messages", []))


def kind_of(body: dict) -> str:
    schema = (body.get("response_format") or {}).get("json_schema") or {}
    if schema.get("name"):
        return schema["name"]
    prompt = prompt_of(body)
    return "qa_verdict" if "<question>" in prompt else "passage_rewrite" if '{"text"' in prompt else "qa_facts"


def tagged(prompt: str, tag: str) -> str:
    return re.search(rf"<{tag}>\n(.*?)\n</{tag}>", prompt, re.S).group(1)


def passage_of(prompt: str) -> tuple[str, str]:
    """(subject, passage) of a facts or rewrite prompt built from prompts/."""
    return re.search(r"^主題: (.*)$", prompt, re.M).group(1), tagged(prompt, "passage")


def fold(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def sentences(text: str) -> list[str]:
    return [s for s in re.findall(r"[^。\n]+。", text) if len(s) > 4]


def sentence_facts(subject: str, passage: str) -> list[dict]:
    """One true fact per sentence that names something besides the subject: the sentence is the evidence and the
    answer, the first such name the short answer, asked twice with the name blanked."""
    facts = []
    for sentence in sentences(passage):
        names = [name for name in named_terms(sentence) if name not in subject and subject not in name]
        if not names:
            continue
        masked = sentence.replace(names[0], "＿＿")
        facts.append({"evidence": sentence, "short_answer": names[0], "answer": sentence,
                      "questions": [f"{subject}について、「{masked}」の＿＿に入る名前は何ですか？",
                                    f"{subject}に関して、次の空欄に入る語を答えてください：{masked}"]})
    return facts


def sentence_writer(extra=()):
    """A careful writer: `sentence_facts` of the passage, plus the `extra` facts (dicts; "{subject}" in their
    strings is replaced by the subject) on every answer."""

    def write(prompt: str) -> str:
        subject, passage = passage_of(prompt)
        planted = [{key: [q.format(subject=subject) for q in value] if isinstance(value, list) else value.format(subject=subject)
                    for key, value in fact.items()} for fact in extra]
        return json.dumps({"facts": sentence_facts(subject, passage) + planted}, ensure_ascii=False)

    return write


passage_writer = sentence_writer  # the name older tests use


def facts_writer(facts_by_subject: dict[str, list[dict]]):
    """A writer that answers each passage with the facts given for its subject (none for others)."""
    return lambda prompt: json.dumps({"facts": facts_by_subject.get(passage_of(prompt)[0], [])}, ensure_ascii=False)


def grounded_verdict(passage: str, question: str, answer: str) -> bool:
    """True when the answer (without a polite ending) or every sentence of it occurs in the passage, commas aside."""
    def bare(text: str) -> str:
        return re.sub(r"[、，,]", "", fold(text))

    parts = sentences(answer) or [answer]
    return all(bare(re.sub(r"(です|でした)?。$", "", part)) in bare(passage) for part in parts)


def reversed_rewrite(subject: str, passage: str) -> str:
    return "".join(reversed(sentences(passage))) or passage


class QuietServer(ThreadingHTTPServer):
    """A client that gives up (a cancelled request, a run stopped by a signal) is not the server's error."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class OpenAIServer:
    def __init__(self, writer=None, model: str = "test-writer-7b", verdict=None, rewriter=None):
        self.writer = writer or sentence_writer()
        self.verdict = verdict or grounded_verdict
        self.rewriter = rewriter or reversed_rewrite
        self.model = model
        self.replies: deque[Reply] = deque()
        self.always: Reply | None = None
        self.by_kind: dict[str, Reply] = {}  # a scripted answer to every request of that kind
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
                    server.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                            "time": time.monotonic(), "kind": kind_of(body)})
                    reply = server.replies.popleft() if server.replies else server.always or server.by_kind.get(kind_of(body))
                if reply is None:
                    reply = Reply(content=server.answer(body))
                self._send(reply, body)

            def _send(self, reply: Reply, body: dict):
                if reply.body is not None:
                    data = reply.body
                elif reply.content is not None:
                    data = json.dumps(completion(reply.content, server.model, prompt_of(body), reply.usage), ensure_ascii=False)
                else:
                    data = json.dumps({"error": {"message": f"scripted {reply.status}", "type": "server_error"}})
                encoded = data.encode("utf-8")
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if reply.trickle is None:
                    self.wfile.write(encoded)
                    return
                for index in range(len(encoded)):
                    self.wfile.write(encoded[index:index + 1])
                    self.wfile.flush()
                    time.sleep(reply.trickle)

            def log_message(self, *args):
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, body: dict) -> str:
        prompt, kind = prompt_of(body), kind_of(body)
        if kind == "qa_verdict":
            supported = self.verdict(tagged(prompt, "passage"), tagged(prompt, "question"), tagged(prompt, "answer"))
            return json.dumps({"supported": bool(supported)})
        if kind == "passage_rewrite":
            return json.dumps({"text": self.rewriter(*passage_of(prompt))}, ensure_ascii=False)
        return self.writer(prompt)

    def __enter__(self) -> "OpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def prompts(self, kind: str | None = None) -> list[str]:
        return [prompt_of(request["body"]) for request in self.requests if kind in (None, request["kind"])]
