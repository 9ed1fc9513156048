"""The registry API v2 as envbuild speaks it: references, requests, the auth handshake.

A registry on a loopback address (127.0.0.0/8, ::1, localhost) is spoken to over plain HTTP
and without any proxy; every other one over HTTPS, verified with the system's CAs (or
`REQUESTS_CA_BUNDLE`) or the PEM file given as `ca`. On a 401 the client answers the
registry's challenge once: `Basic` with the docker config's credentials, `Bearer` with a
token from the challenge's realm (asked with those credentials, or an identity token).
Every failure is a `RegistryError` naming the registry, in the registry's own words.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.request import parse_http_list

import requests

from .errors import InputError, RegistryError
from .registryauth import Credentials, config_path, credentials

_TIMEOUT = (30, 600)  # connect, read (seconds): a big blob's PUT may take a while to answer
_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_PART}(?:/{_PART})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Reference:
    """`HOST[:PORT]/REPO[:TAG]`, split."""

    host: str                     # as written, port included: "127.0.0.1:5000"
    repo: str                     # "team/demo"
    tag: str                      # "latest" when none was given

    @property
    def loopback(self) -> bool:
        name = self.host[1:].split("]")[0] if self.host.startswith("[") else \
            self.host.rsplit(":", 1)[0]
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    @property
    def base_url(self) -> str:
        return f"{'http' if self.loopback else 'https'}://{self.host}"

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repo}"


def parse_reference(tag: str) -> Reference:
    """Split a docker-style reference; refuse one without a registry host, or Docker Hub's."""
    host, slash, rest = tag.partition("/")
    if not slash or not ("." in host or ":" in host or host == "localhost"):
        raise InputError(f"{tag!r} names no registry: push needs HOST[:PORT]/REPO[:TAG], "
                         "e.g. 127.0.0.1:5000/demo:1")
    if host.lower() in _HUB:
        raise InputError(f"{tag!r}: pushing to Docker Hub is not supported; "
                         "name another registry (HOST[:PORT]/REPO[:TAG])")
    if "@" in rest:
        raise InputError(f"{tag!r}: push takes a tag, not a digest")
    repo, colon, version = rest.rpartition(":") if ":" in rest else (rest, "", "latest")
    if not _NAME.fullmatch(repo) or (colon and not _TAG.fullmatch(version)):
        raise InputError(f"{tag!r}: not a valid repository[:tag] after {host!r} "
                         "(lowercase letters, digits, '.', '_', '-', '/'; tags up to 128 chars)")
    if len(f"{host}/{repo}") > 255:
        raise InputError(f"{tag!r}: a repository name is at most 255 characters, host included")
    return Reference(host, repo, version)


class Client:
    """One registry and repository: requests with the auth handshake done on a 401."""

    def __init__(self, ref: Reference, ca: Path | None) -> None:
        self.ref = ref
        self.http = requests.Session()
        self.http.trust_env = not ref.loopback   # no proxy between us and our own host
        self.verify: str | bool = str(ca) if ca is not None else True
        self.authorization: str | None = None
        self.creds: Credentials | None = None
        self.creds_read = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.http.close()

    def url(self, path: str) -> str:
        return f"{self.ref.base_url}/v2/{path}"

    def send(self, method: str, url: str, body: Path | bytes | None = None,
             headers: Mapping[str, str] | None = None) -> requests.Response:
        resp = self._once(method, url, body, headers)
        if resp.status_code == 401:
            self._authenticate(resp)
            resp = self._once(method, url, body, headers)
        if resp.status_code in (401, 403):
            self._refused(resp)
        return resp

    def _once(self, method: str, url: str, body: Path | bytes | None,
              headers: Mapping[str, str] | None) -> requests.Response:
        sent = dict(headers or {})
        if self.authorization:
            sent["Authorization"] = self.authorization
        try:
            if isinstance(body, Path):
                with open(body, "rb") as fh:
                    return self.http.request(method, url, data=fh, headers=sent,
                                             verify=self.verify, timeout=_TIMEOUT)
            return self.http.request(method, url, data=body, headers=sent,
                                     verify=self.verify, timeout=_TIMEOUT)
        except requests.exceptions.SSLError as exc:
            raise RegistryError(
                f"TLS failure talking to {self.ref.host}: {_reason(exc)}; if its certificate "
                "comes from your own CA, pass that CA's PEM file with --ca FILE") from exc
        except requests.exceptions.ConnectionError as exc:
            raise RegistryError(f"cannot connect to {url}: {_reason(exc)}") from exc
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"{method} {url} failed: {_reason(exc)}") from exc

    def _credentials(self) -> Credentials | None:
        if not self.creds_read:
            self.creds = credentials(self.ref.host)
            self.creds_read = True
        return self.creds

    def _authenticate(self, resp: requests.Response) -> None:
        scheme, _, params = resp.headers.get("WWW-Authenticate", "").partition(" ")
        creds = self._credentials()
        if scheme.lower() == "basic":
            if creds is None or creds.username is None:
                self._refused(resp)
            pair = f"{creds.username}:{creds.password}".encode()
            self.authorization = "Basic " + base64.b64encode(pair).decode()
        elif scheme.lower() == "bearer":
            self.authorization = f"Bearer {self._token(_challenge(params), creds)}"
        else:
            self._refused(resp)

    def _token(self, challenge: dict[str, str], creds: Credentials | None) -> str:
        realm = challenge.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.ref.host} asked for a token without a realm")
        form = {"service": challenge.get("service") or "",
                "scope": f"repository:{self.ref.repo}:pull,push"}
        try:
            if creds is not None and creds.identity_token:
                resp = self.http.post(realm, data={**form, "grant_type": "refresh_token",
                                                   "refresh_token": creds.identity_token,
                                                   "client_id": "envbuild"},
                                      verify=self.verify, timeout=_TIMEOUT)
            else:
                auth = (creds.username, creds.password) if creds and creds.username else None
                resp = self.http.get(realm, params=form, auth=auth, verify=self.verify,
                                     timeout=_TIMEOUT)
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"cannot get a token from {realm}: {_reason(exc)}") from exc
        if resp.status_code in (401, 403):
            self._refused(resp)
        body = _json(resp)
        token = body.get("token") or body.get("access_token")
        if resp.status_code != 200 or not isinstance(token, str):
            raise RegistryError(f"token service {realm} answered {resp.status_code} "
                                "without a token")
        return token

    def _refused(self, resp: requests.Response) -> NoReturn:
        creds = self._credentials()
        who = (f"the credentials of {creds.username or 'the identity token'}"
               f" ({creds.source})" if creds else "anonymous access (no credentials found)")
        raise RegistryError(
            f"registry {self.ref.host} refused {who}: {resp.status_code} {resp.reason}"
            f"{_errors_text(resp)}; credentials come from the docker config in DOCKER_CONFIG "
            f"({config_path()}): run `docker login {self.ref.host}` with DOCKER_CONFIG set there")

    def check(self, resp: requests.Response, expected: tuple[int, ...], what: str) -> None:
        if resp.status_code not in expected:
            raise RegistryError(f"registry {self.ref.host} refused {what} for "
                                f"{self.ref.repo}: {resp.status_code} {resp.reason}"
                                f"{_errors_text(resp)}")


def _challenge(params: str) -> dict[str, str]:
    """`realm="...",service="..."` of a WWW-Authenticate header (values may hold commas)."""
    pairs = (item.partition("=") for item in parse_http_list(params))
    return {k.strip().lower(): v.strip().strip('"') for k, _, v in pairs}


def _reason(exc: BaseException) -> str:
    """A requests error in a few words: its innermost known cause, else its text."""
    todo: list[object] = [exc]
    for _ in range(32):                       # the chain is short; never loop on a cycle
        if not todo:
            break
        cause = todo.pop()
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {cause.verify_message}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, BaseException):
            todo += [*cause.args, getattr(cause, "reason", None), cause.__cause__]
    return str(exc)


def _json(resp: requests.Response) -> dict[str, object]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _errors_text(resp: requests.Response) -> str:
    """The registry's own words: `errors[].code: message` of its JSON body, else a short
    plain-text body's first line."""
    errors = _json(resp).get("errors")
    if isinstance(errors, list):
        parts = [f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)]
    elif resp.headers.get("Content-Type", "").startswith("text/plain") and resp.text.strip():
        parts = [resp.text.strip().splitlines()[0][:200]]
    else:
        parts = []
    return f" ({'; '.join(parts)})" if parts else ""
