"""A loopback stand-in for the Hugging Face Hub that refuses every request, recording what it was sent."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RefusingHub:
    """Answers every request with `status` and a Hub-style JSON error; `requests` lists (method, path, headers)."""

    def __init__(self, status: int = 500):
        self.requests = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                hub.requests.append((self.command, self.path, dict(self.headers)))
                body = json.dumps({"error": "refused by the test server"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _refuse

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
