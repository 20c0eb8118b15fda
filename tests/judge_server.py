"""A stand-in for an OpenAI-compatible grading model on 127.0.0.1: a real http.server in a thread.

It reads the answer out of prompts built from prompts/grade_ja.md (the text under "## 解答") and replies with the
letter `verdicts` gives it (default "B"), as a careful grader model would. Requests are recorded (headers lower
case, JSON body) so that tests can count calls and check the key that was sent.
"""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    def __init__(self, verdicts: dict[str, str], default: str = "B"):
        self.verdicts, self.default, self.requests = verdicts, default, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                prompt = body["messages"][-1]["content"]
                answer = re.search(r"## 解答\n(.*?)\n\n## 出力", prompt, re.S)[1]
                letter = server.verdicts.get(answer, server.default)
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": letter}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
