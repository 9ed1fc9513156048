"""A registry front that stores manifests as a rewriting registry would, run as its own
process: every request goes to UPSTREAM unchanged, and the `Docker-Content-Digest` of a
manifest PUT comes back as the digest of that manifest re-serialized (indented), as from a
registry that does not keep the bytes it was given.

    python digestproxy.py PORT UPSTREAM_HOST:PORT
"""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class Handler(BaseHTTPRequestHandler):
    upstream = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() in HOP:
                continue
            if key.lower() == "docker-content-digest" and self.command == "PUT" \
                    and "/manifests/" in self.path:
                rewritten = json.dumps(json.loads(body), indent=3).encode()
                value = "sha256:" + hashlib.sha256(rewritten).hexdigest()
            self.send_header(key, value)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = forward  # noqa: N815


def main(argv: list[str]) -> None:
    port, Handler.upstream = int(argv[0]), argv[1]
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
