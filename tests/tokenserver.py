"""A small token service for docker-registry's `auth: token`, run as its own process.

    python tokenserver.py PORT KEY CERT ISSUER SERVICE USER PASSWORD IDENTITY_TOKEN

`GET /token?service=..&scope=repository:NAME:ACTIONS` with basic auth USER:PASSWORD, or
`POST /token` with the form `grant_type=refresh_token&refresh_token=IDENTITY_TOKEN`, answers
`{"token", "access_token"}`: a JWT signed RS256 by KEY (with `openssl dgst`), its
certificate CERT in the `x5c` header, granting the actions asked on that repository.
Anything else is a 401.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Handler(BaseHTTPRequestHandler):
    key = cert_der = issuer = service = user = password = identity = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        query = parse_qs(urlsplit(self.path).query)
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.answer(401, {"error": "bad credentials"})
            return
        self.grant(query.get("scope", [""])[0])

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        if form.get("grant_type") != ["refresh_token"] or \
                form.get("refresh_token") != [self.identity]:
            self.answer(401, {"error": "bad refresh token"})
            return
        self.grant(form.get("scope", [""])[0])

    def grant(self, scope: str) -> None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der]}
        claims = {"iss": self.issuer, "sub": self.user, "aud": self.service,
                  "iat": now, "nbf": now - 60, "exp": now + 600, "jti": secrets.token_hex(8),
                  "access": [{"type": kind, "name": name, "actions": actions.split(",")}]
                  if kind == "repository" else []}
        signing_input = (b64url(json.dumps(header).encode()) + "."
                         + b64url(json.dumps(claims).encode()))
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                                   input=signing_input.encode(), capture_output=True,
                                   check=True).stdout
        token = signing_input + "." + b64url(signature)
        self.answer(200, {"token": token, "access_token": token, "expires_in": 600})

    def answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main(argv: list[str]) -> None:
    port, key, cert, issuer, service, user, password, identity = argv
    pem = open(cert).read()
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    Handler.cert_der = "".join(body.split())            # x5c: base64 DER, not url-safe
    Handler.key, Handler.issuer, Handler.service = key, issuer, service
    Handler.user, Handler.password, Handler.identity = user, password, identity
    ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
