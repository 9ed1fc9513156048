"""A real registry for tests: Debian's `docker-registry` on a free port, its own config,
storage and log under a temp dir, started and stopped by the process id it got.

``start_registry(root)`` serves plain HTTP on 127.0.0.1; ``htpasswd=`` adds basic auth
(bcrypt entries made by ``make_htpasswd`` with apache2-utils' ``htpasswd -B``), ``tls=``
serves HTTPS with a certificate made by ``make_tls`` (a CA and a server certificate for an
address, by ``openssl``), ``readonly=True`` refuses every write with the registry's own
405. ``start_token_server`` runs ``tokenserver.py`` (its own process) for ``token=``, the
registry's bearer-token auth; ``start_digest_proxy`` puts ``digestproxy.py`` in front of a
registry, to stand for one that rewrites the manifests it is given.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REGISTRY = "/usr/bin/docker-registry"
HERE = Path(__file__).resolve().parent


@dataclass
class Registry:
    host: str                      # "127.0.0.1:PORT"
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


@dataclass
class TokenServer:
    realm: str                     # "http://127.0.0.1:PORT/token"
    service: str
    issuer: str
    cert: Path                     # the signing key's certificate: the registry's root bundle
    proc: subprocess.Popen[bytes]


def need(tool: str) -> str:
    """The path of `tool`, or a failure naming it (tests/run installs it)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (tests/run installs it with apt-get)")
    return path


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def make_htpasswd(path: Path, user: str, password: str) -> Path:
    out = subprocess.run([need("htpasswd"), "-Bbn", user, password], check=True,
                         capture_output=True, text=True).stdout
    path.write_text(out)
    return path


def make_tls(directory: Path, address: str) -> Tls:
    """A self-signed CA and a certificate for `address` (an IP) signed by it."""
    openssl = need("openssl")
    (directory / "ca").mkdir(parents=True, exist_ok=True)
    # alone in its dir, named *.crt: the form `skopeo --cert-dir` reads
    ca, ca_key = directory / "ca" / "ca.crt", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text(f"subjectAltName = IP:{address}\nbasicConstraints = CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(ca), "-days", "2", "-subj", "/CN=envbuild test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={address}")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return Tls(ca, cert, key)


def start_token_server(root: Path, user: str, password: str, identity: str) -> TokenServer:
    """A token service signing with a fresh key, answering before this returns."""
    openssl = need("openssl")
    root.mkdir(parents=True, exist_ok=True)
    key, cert = root / "token.key", root / "token.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=envbuild token"],
                   check=True, capture_output=True)
    port = free_port()
    service, issuer = "envbuild-test-registry", "envbuild-test-issuer"
    with open(root / "token.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(HERE / "tokenserver.py"), str(port),
                                 str(key), str(cert), issuer, service, user, password, identity],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = TokenServer(f"http://127.0.0.1:{port}/token", service, issuer, cert, proc)
    _wait(proc, server.realm, None, root / "token.log")
    return server


def start_digest_proxy(root: Path, upstream: Registry) -> tuple[str, subprocess.Popen[bytes]]:
    """`digestproxy.py` in front of `upstream`: its host and its process."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(root / "proxy.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(HERE / "digestproxy.py"), str(port),
                                 upstream.host], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    _wait(proc, f"http://127.0.0.1:{port}/v2/", None, root / "proxy.log")
    return f"127.0.0.1:{port}", proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this module started, by its own handle (its pid)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _config(root: Path, address: str, port: int, htpasswd: Path | None, tls: Tls | None,
            readonly: bool, token: TokenServer | None) -> str:
    lines = ["version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:",
             f"    rootdirectory: {root / 'data'}"]
    if readonly:
        lines += ["  maintenance:", "    readonly:", "      enabled: true"]
    lines += ["http:", f"  addr: {address}:{port}", "  secret: envbuild-test-secret"]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {tls.cert}", f"    key: {tls.key}"]
    if htpasswd is not None:
        lines += ["auth:", "  htpasswd:", "    realm: envbuild-test", f"    path: {htpasswd}"]
    if token is not None:
        lines += ["auth:", "  token:", f"    realm: {token.realm}",
                  f"    service: {token.service}", f"    issuer: {token.issuer}",
                  f"    rootcertbundle: {token.cert}"]
    return "\n".join(lines) + "\n"


def start_registry(root: Path, *, address: str = "127.0.0.1", htpasswd: Path | None = None,
                   tls: Tls | None = None, readonly: bool = False,
                   token: TokenServer | None = None) -> Registry:
    """A registry serving under `root`, answering `GET /v2/` before this returns."""
    if not Path(REGISTRY).exists():
        pytest.fail(f"{REGISTRY} is not installed (tests/run installs docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port(address)
    config = root / "config.yml"
    config.write_text(_config(root, address, port, htpasswd, tls, readonly, token))
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    registry = Registry(host, root, proc)
    url = f"{'https' if tls else 'http'}://{host}/v2/"
    _wait(proc, url, tls, root / "registry.log")
    return registry


def _wait(proc: subprocess.Popen[bytes], url: str, tls: Tls | None, log: Path) -> None:
    """Until `url` answers at all; a failure with the log if the process ends or hangs."""
    session = requests.Session()
    session.trust_env = False                  # no proxy between the tests and this host
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args!r} exited with {proc.returncode}:\n"
                            + (log.read_text() if log.exists() else ""))
            try:
                session.get(url, timeout=2, verify=str(tls.ca) if tls else True)
                return
            except requests.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    stop_process(proc)
                    pytest.fail(f"{proc.args!r} did not answer {url} within 60 s:\n"
                                + (log.read_text() if log.exists() else ""))
                time.sleep(0.05)
    finally:
        session.close()


def stop_registry(registry: Registry) -> None:
    """Stop the registry this module started, by its process."""
    stop_process(registry.proc)
