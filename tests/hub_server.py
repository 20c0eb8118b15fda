"""Loopback stand-ins for the Hugging Face Hub: real HTTP servers on 127.0.0.1 that record what they were sent.

`LoopbackHub` speaks the part of the Hub API that huggingface_hub uses to publish (whoami-v2, repos/create,
preupload, commit) and keeps the uploaded files; `RefusingHub` answers everything with an error status;
`SilentHub` accepts connections and never answers.
"""

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VALID_TOKEN = "hf_loopbackTestToken1234567890abcdef"


class _Server:
    def __init__(self, handler):
        self.requests = []  # (method, path, headers)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Handler(BaseHTTPRequestHandler):
    hub = None

    def log_message(self, *args):
        pass

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, value) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class RefusingHub(_Server):
    """Answers every request with `status` and a Hub-style JSON error."""

    def __init__(self, status: int = 500):
        hub = self

        class Handler(_Handler):
            def refuse(self):
                self.body()
                hub.requests.append((self.command, self.path, dict(self.headers)))
                self.reply(status, {"error": "refused by the test server"})

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = refuse

        super().__init__(Handler)


class SilentHub(_Server):
    """Accepts every connection, reads the request and never answers (until closed)."""

    def __init__(self):
        hub = self
        self.closing = threading.Event()

        class Handler(_Handler):
            def hang(self):
                hub.requests.append((self.command, self.path, dict(self.headers)))
                hub.closing.wait(600)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = hang

        super().__init__(Handler)

    def close(self):
        self.closing.set()
        super().close()


class LoopbackHub(_Server):
    """A Hub that accepts `token` for `user` (who may write to `user/*` only) and keeps uploads; with
    `upload_status`, every upload (preupload and commit) is answered with that status instead.

    `files[(repo_type, repo_id)]` maps each uploaded path to its bytes; `commits` lists (repo_type, repo_id,
    summary). Repos are created by repos/create or by the first commit.
    """

    def __init__(self, user: str = "tester", token: str = VALID_TOKEN, upload_status: int | None = None):
        self.user, self.token, self.upload_status = user, token, upload_status
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}
        self.commits: list[tuple[str, str, str]] = []
        hub = self

        class Handler(_Handler):
            def do_GET(self):
                hub.requests.append((self.command, self.path, dict(self.headers)))
                if not self.authorized():
                    return
                if self.path.startswith("/api/whoami-v2"):
                    return self.reply(200, {"type": "user", "name": hub.user, "orgs": [],
                                            "auth": {"accessToken": {"role": "write"}}})
                self.reply(404, {"error": "not found"})

            def do_POST(self):
                hub.requests.append((self.command, self.path, dict(self.headers)))
                body = self.body()
                if not self.authorized():
                    return
                if self.path.startswith("/api/repos/create"):
                    return self.create(json.loads(body))
                if self.path.startswith("/api/validate-yaml"):  # a README's metadata, checked before upload
                    return self.reply(200, {})
                parts = self.path.split("?")[0].strip("/").split("/")
                # /api/{type}s/{namespace}/{name}/{preupload|commit}/{revision}
                if len(parts) >= 6 and parts[0] == "api" and parts[4] in ("preupload", "commit"):
                    repo_type, repo_id = parts[1].removesuffix("s"), f"{parts[2]}/{parts[3]}"
                    if parts[2] != hub.user:
                        return self.reply(403, {"error": f"You don't have the rights to write to {repo_id}"})
                    if hub.upload_status:
                        return self.reply(hub.upload_status, {"error": "upload refused by the test server"})
                    if parts[4] == "preupload":
                        files = json.loads(body)["files"]
                        return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                           "shouldIgnore": False} for f in files]})
                    return self.commit(repo_type, repo_id, body)
                self.reply(404, {"error": "not found"})

            def authorized(self) -> bool:
                if (self.headers.get("Authorization") or self.headers.get("authorization")) == f"Bearer {hub.token}":
                    return True
                self.reply(401, {"error": "Invalid credentials in Authorization header"})
                return False

            def create(self, request: dict):
                namespace = request.get("organization") or hub.user
                if namespace != hub.user:
                    return self.reply(403, {"error": f"You don't have the rights to create a repo under {namespace}"})
                key = (request.get("type") or "model", f"{namespace}/{request['name']}")
                if key in hub.files:
                    return self.reply(409, {"error": "You already created this repo", "url": f"{hub.url}/{key[1]}"})
                hub.files[key] = {}
                self.reply(200, {"url": f"{hub.url}/{key[1]}"})

            def commit(self, repo_type: str, repo_id: str, body: bytes):
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                files = hub.files.setdefault((repo_type, repo_id), {})
                summary = ""
                for line in lines:
                    if line["key"] == "header":
                        summary = line["value"].get("summary", "")
                    elif line["key"] == "file":
                        files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    elif line["key"] == "deletedFile":
                        files.pop(line["value"]["path"], None)
                hub.commits.append((repo_type, repo_id, summary))
                oid = f"{len(hub.commits):040x}"
                prefix = "" if repo_type == "model" else f"{repo_type}s/"
                self.reply(200, {"commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid,
                                 "pullRequestUrl": None})

        super().__init__(Handler)


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
