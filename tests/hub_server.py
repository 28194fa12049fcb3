"""A loopback stand-in for the Hugging Face Hub API: just the endpoints that
``HfApi.create_commit`` (regular upload mode, copies included), ``get_paths_info`` and
``repo_info`` call, with an in-memory git-like history. It records every request (method, path,
Authorization header, body size) so tests see exactly what the real client sent.

The server listens on 127.0.0.1 on a free port and shuts itself down after ``lifetime`` seconds
even if a test forgets to stop it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_REPO = r"(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"


def blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, repo_id: str, token: str, repo_type: str = "dataset",
                 lifetime: float = 120.0):
        self.repo_id, self.token, self.repo_type = repo_id, token, repo_type
        self.head = hashlib.sha1(b"initial commit").hexdigest()
        self.snapshots: dict[str, dict[str, bytes]] = {self.head: {}}
        self.commits: list[dict] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- state ---------------------------------------------------------------------------------
    @property
    def files(self) -> dict[str, bytes]:
        return self.snapshots[self.head]

    def _snapshot(self, revision: str) -> dict[str, bytes] | None:
        revision = unquote(revision)
        if revision == "main":
            return self.snapshots[self.head]
        return self.snapshots.get(revision)

    def tamper(self, path: str, data: bytes) -> None:
        """Change a file in place at HEAD (as if the storage were corrupted)."""
        self.snapshots[self.head][path] = data

    # -- HTTP ----------------------------------------------------------------------------------
    def _reply(self, handler, status: int, payload=None, raw: bytes | None = None):
        body = raw if raw is not None else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type",
                            "application/octet-stream" if raw is not None else "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if status >= 400:
            handler.send_header("X-Error-Message", (payload or {}).get("error", ""))
        handler.end_headers()
        handler.wfile.write(body)

    def _read_body(self, handler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(handler.rfile.readline().strip(), 16)
                if size == 0:
                    handler.rfile.readline()
                    return b"".join(chunks)
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    def _handle(self, handler, method: str) -> None:
        url = urlsplit(handler.path)
        body = self._read_body(handler) if method == "POST" else b""
        auth = handler.headers.get("Authorization")
        with self.lock:
            self.requests.append({"method": method, "path": url.path, "query": url.query,
                                  "authorization": auth, "body": body,
                                  "content_type": handler.headers.get("Content-Type")})
            if auth != f"Bearer {self.token}":
                return self._reply(handler, 401, {"error": "Invalid credentials"})
            routes = [
                ("POST", rf"^/api/{_REPO}/preupload/(?P<rev>[^/]+)$", self._preupload),
                ("POST", rf"^/api/{_REPO}/commit/(?P<rev>[^/]+)$", self._commit),
                ("POST", rf"^/api/{_REPO}/paths-info/(?P<rev>[^/]+)$", self._paths_info),
                ("GET", rf"^/api/{_REPO}/revision/(?P<rev>[^/]+)$", self._repo_info),
                ("GET", rf"^/api/{_REPO}$", self._repo_info),
                ("GET", r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/"
                        r"(?P<rev>[^/]+)/(?P<path>.+)$", self._resolve),
            ]
            for verb, pattern, route in routes:
                match = re.match(pattern, url.path)
                if verb == method and match:
                    groups = match.groupdict()
                    if groups["repo"] != self.repo_id or (
                            (groups.get("type") or "models") != self.repo_type + "s"):
                        return self._reply(handler, 404, {"error": "Repository not found"})
                    return route(handler, groups, body)
            return self._reply(handler, 404, {"error": f"no route for {method} {url.path}"})

    def _preupload(self, handler, groups, body):
        files = json.loads(body)["files"]
        snap = self._snapshot(groups["rev"]) or {}
        out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                "oid": blob_oid(snap[f["path"]]) if f["path"] in snap else None} for f in files]
        return self._reply(handler, 200, {"files": out, "commitOid": self.head})

    def _commit(self, handler, groups, body):
        if unquote(groups["rev"]) != "main":
            return self._reply(handler, 400, {"error": "only main is a branch here"})
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]
        if header.get("key") != "header":
            return self._reply(handler, 400, {"error": "first NDJSON line must be the header"})
        parent = header["value"].get("parentCommit")
        if parent is not None and parent != self.head:
            return self._reply(handler, 412, {"error": f"A commit has happened since {parent}"})
        files = dict(self.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            else:
                return self._reply(handler, 400, {"error": f"unsupported operation {key}"})
        oid = hashlib.sha1(self.head.encode() + body).hexdigest()
        self.snapshots[oid] = files
        self.commits.append({"oid": oid, "parent": self.head,
                             "summary": header["value"]["summary"],
                             "operations": [line["key"] for line in lines[1:]]})
        self.head = oid
        return self._reply(handler, 200, {"commitUrl": f"{self.url}/{self.repo_id}/commit/{oid}",
                                          "commitOid": oid, "pullRequestUrl": None,
                                          "success": True})

    def _paths_info(self, handler, groups, body):
        form = parse_qs(body.decode())
        snap = self._snapshot(groups["rev"])
        if snap is None:
            return self._reply(handler, 404, {"error": "Revision not found"})
        out = [{"type": "file", "path": p, "size": len(snap[p]), "oid": blob_oid(snap[p])}
               for p in form.get("paths", []) if p in snap]
        return self._reply(handler, 200, out)

    def _repo_info(self, handler, groups, body):
        rev = groups.get("rev") or "main"
        if self._snapshot(rev) is None:
            return self._reply(handler, 404, {"error": "Revision not found"})
        sha = self.head if unquote(rev) == "main" else unquote(rev)
        return self._reply(handler, 200, {"id": self.repo_id, "sha": sha, "private": True})

    def _resolve(self, handler, groups, body):
        snap = self._snapshot(groups["rev"])
        path = unquote(groups["path"])
        if snap is None or path not in snap:
            return self._reply(handler, 404, {"error": "Entry not found"})
        return self._reply(handler, 200, raw=snap[path])
