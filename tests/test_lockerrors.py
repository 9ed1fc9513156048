"""`envbuild lock` when the index cannot be reached or the requirements clash, and the TLS
trust it hands pip: real pip-compile against real servers (a refused port, an unknown host,
a local HTTPS index with its own CA), run as a user types it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import envbuild, ignore_sigchld, write_recipe
from pkgindex import LocalIndex, _Dist, build_index

from envbuild.errors import InputError
from envbuild.pipfail import conflict, redact, unreachable, useful_tail
from envbuild.recipe import load_recipe
from envbuild.trust import config_files, find_trust

# every variable through which trust or pip config could reach the subprocess
_AMBIENT = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE",
            "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
            "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS")


def user_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This process's environment with no trust and no pip config of its own (this machine
    has both), a home and a TMPDIR of the test's own; then `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in _AMBIENT}
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env.update({"HOME": str(tmp / "home"), "TMPDIR": str(tmp / "tmpdir"),
                "PIP_CONFIG_FILE": os.devnull, "no_proxy": "127.0.0.1,localhost",
                "NO_PROXY": "127.0.0.1,localhost"})
    env.update(extra)
    return env


def assert_nothing_left(recipe: Path, tmp: Path) -> None:
    """No lock, nothing beside the recipe, no temporary directory behind."""
    assert sorted(p.name for p in recipe.parent.iterdir()) == [recipe.name]
    assert list((tmp / "tmpdir").iterdir()) == []


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("envbuild: error:")]


def recipe_at(tmp: Path, index: LocalIndex, url: str, deps: list[str] | None = None) -> Path:
    recipe = write_recipe(tmp / "project", index, deps=deps or ["alpha"])
    recipe.write_text(recipe.read_text().replace(index.simple_url, url))
    return recipe


# --- the index cannot be reached --------------------------------------------------------


def test_unknown_host(tmp_path: Path, index: LocalIndex) -> None:
    recipe = recipe_at(tmp_path, index, "https://ci:s3cr3t@nonexistent.invalid/simple")
    res = envbuild("lock", recipe, env=user_env(tmp_path))
    assert res.returncode == 1, res.stderr
    # no such name, or (a machine without a resolver) no answer at all
    said = "envbuild: error: index https://nonexistent.invalid/simple: expected a package index"
    assert error_lines(res.stderr) in (
        [f"{said}, found no such host (DNS); check [index] url and the network"],
        [f"{said}, found no answer from DNS (name resolution failed); check the network and "
         "its DNS"]), res.stderr
    assert "s3cr3t" not in res.stderr and "Traceback" not in res.stderr
    assert_nothing_left(recipe, tmp_path)


def test_refused_port(tmp_path: Path, index: LocalIndex) -> None:
    with socket.socket() as sock:      # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/simple"
    recipe = recipe_at(tmp_path, index, url)
    res = envbuild("lock", recipe, env=user_env(tmp_path))
    assert res.returncode == 1, res.stderr
    assert error_lines(res.stderr) == [
        f"envbuild: error: index {url}: expected a package index, found the connection "
        f"refused (nothing listening at 127.0.0.1:{port}); check [index] url (its port) and "
        "that the index is up"]
    assert_nothing_left(recipe, tmp_path)


# --- a local HTTPS index with its own CA ------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path            # the CA that signed the server's certificate
    other_ca: Path      # a CA that did not
    server: Path
    key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _make_ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN=envbuild test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    assert shutil.which("openssl"), "openssl is missing: tests/run installs it (need+=)"
    folder = tmp_path_factory.mktemp("certs")
    _make_ca(folder, "ca")
    _make_ca(folder, "other-ca")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=folder)
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
             cwd=folder)
    return Certs(folder / "ca.pem", folder / "other-ca.pem", folder / "server.pem",
                 folder / "server.key")


_SERVE = """
import functools, http.server, ssl, sys
root, cert, key = sys.argv[1:4]
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
handler = functools.partial(Quiet, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def https_index(index: LocalIndex, certs: Certs) -> Iterator[str]:
    """The local index served over HTTPS by a certificate of `certs.ca`; its simple URL."""
    server = subprocess.Popen([sys.executable, "-c", _SERVE, str(index.root),
                               str(certs.server), str(certs.key)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        assert port.isdigit(), f"the HTTPS index did not start (exit {server.poll()})"
        yield f"https://127.0.0.1:{port}/simple"
    finally:
        server.terminate()      # by the pid this fixture started
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def test_untrusted_certificate(tmp_path: Path, index: LocalIndex, https_index: str) -> None:
    recipe = recipe_at(tmp_path, index, https_index)
    res = envbuild("lock", recipe, env=user_env(tmp_path))
    assert res.returncode == 1, res.stderr
    [line] = error_lines(res.stderr)
    assert line.startswith(f"envbuild: error: index {https_index}: expected a package index, "
                           "found certificate verification failed ("), line
    for words in ("PIP_CERT", "cert = FILE", "REQUESTS_CA_BUNDLE", "now trusted: certifi"):
        assert words in line
    assert_nothing_left(recipe, tmp_path)


def test_trust_from_each_source_locks_the_same_bytes(tmp_path: Path, index: LocalIndex,
                                                     https_index: str, certs: Certs) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "global.conf").write_text(f"[global]\ncert = {certs.ca}\n")
    # the command's own section wins over [global], as in pip
    (conf / "install.conf").write_text(f"[global]\ncert = {certs.other_ca}\n\n"
                                       f"[install]\ncert = {certs.ca}\n")
    sources = {
        "PIP_CERT": {"PIP_CERT": str(certs.ca)},
        "pip.conf [global]": {"PIP_CONFIG_FILE": str(conf / "global.conf")},
        "pip.conf [install]": {"PIP_CONFIG_FILE": str(conf / "install.conf")},
        "REQUESTS_CA_BUNDLE": {"REQUESTS_CA_BUNDLE": str(certs.ca)},
        "SSL_CERT_FILE": {"SSL_CERT_FILE": str(certs.ca)},
        # the precedence: the first source wins over a wrong CA further down
        "PIP_CERT over REQUESTS_CA_BUNDLE": {"PIP_CERT": str(certs.ca),
                                             "REQUESTS_CA_BUNDLE": str(certs.other_ca),
                                             "SSL_CERT_FILE": str(certs.other_ca)},
    }
    locks = {}
    for name, extra in sources.items():
        work = tmp_path / name.replace(" ", "-")
        recipe = recipe_at(work, index, https_index)
        res = envbuild("lock", recipe, env=user_env(work, **extra))
        assert res.returncode == 0, f"{name}: {res.stderr}"
        locks[name] = recipe.with_suffix(".lock").read_bytes()
        assert sorted(p.name for p in recipe.parent.iterdir()) == ["demo.lock", "demo.toml"]
    first = locks["PIP_CERT"]
    assert all(text == first for text in locks.values())
    assert b"alpha==2.0" in first
    for leaked in (b"cert", b"ca.pem", str(tmp_path).encode()):
        assert leaked not in first


def test_uv_takes_the_same_trust(tmp_path: Path, index: LocalIndex, https_index: str,
                                 certs: Certs) -> None:
    """`--resolver uv` trusts what pip would be given (uv reads it as SSL_CERT_FILE): the
    same lock bytes as pip-tools' apart from the resolver line; without trust, exit 1."""
    recipe = recipe_at(tmp_path / "none", index, https_index)
    res = envbuild("lock", recipe, "--resolver", "uv", env=user_env(tmp_path / "none"))
    assert res.returncode == 1, res.stderr
    assert not recipe.with_suffix(".lock").exists()
    locks = []
    for resolver in ("pip-tools", "uv"):
        work = tmp_path / resolver
        recipe = recipe_at(work, index, https_index)
        res = envbuild("lock", recipe, "--resolver", resolver,
                       env=user_env(work, PIP_CERT=str(certs.ca),
                                    SSL_CERT_FILE=str(certs.other_ca)))
        assert res.returncode == 0, f"{resolver}: {res.stderr}"
        locks.append([line for line in recipe.with_suffix(".lock").read_text().splitlines()
                      if not line.startswith("# resolver:")])
    assert locks[0] == locks[1]


def test_pip_conf_wins_over_requests_ca_bundle(tmp_path: Path, index: LocalIndex,
                                               https_index: str, certs: Certs) -> None:
    """The failure names the trust that was used, so a wrong one is found."""
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\ncert = {certs.other_ca}\n")
    recipe = recipe_at(tmp_path, index, https_index)
    res = envbuild("lock", recipe, env=user_env(tmp_path, PIP_CONFIG_FILE=str(conf),
                                                REQUESTS_CA_BUNDLE=str(certs.ca)))
    assert res.returncode == 1, res.stderr
    assert "certificate verification failed" in res.stderr
    assert f"now trusted: {certs.other_ca} (from {conf} [global] cert)" in res.stderr
    conf.unlink()
    assert_nothing_left(recipe, tmp_path)


@pytest.mark.parametrize("source", ["PIP_CERT", "pip.conf"])
def test_a_cert_that_is_not_there(tmp_path: Path, index: LocalIndex, source: str) -> None:
    missing = tmp_path / "gone" / "ca.pem"
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\ncert = {missing}\n")
    extra = ({"PIP_CERT": str(missing)} if source == "PIP_CERT"
             else {"PIP_CONFIG_FILE": str(conf)})
    recipe = recipe_at(tmp_path, index, index.simple_url)
    res = envbuild("lock", recipe, env=user_env(tmp_path, **extra))
    assert res.returncode == 2, res.stderr
    where = "PIP_CERT" if source == "PIP_CERT" else f"{conf} [global] cert"
    assert error_lines(res.stderr) == [
        f"envbuild: error: {where}: expected a CA bundle file, found no file at "
        f"{str(missing)!r}; fix or remove it (it says which CAs to trust for the index)"]
    conf.unlink()
    assert_nothing_left(recipe, tmp_path)


# --- a conflict -------------------------------------------------------------------------


@pytest.mark.parametrize("resolver", ["pip-tools", "uv"])
def test_a_resolvers_failure_fails_the_lock_where_sigchld_comes_ignored(
        tmp_path: Path, index: LocalIndex, resolver: str) -> None:
    """A parent that ignores SIGCHLD passes that on through exec, and the kernel would then
    reap the resolver unseen, its exit status read as 0: the CLI restores the default, so
    that a resolution that fails fails the lock (exit 2, as any) and writes nothing."""
    recipe = write_recipe(tmp_path / "project", index, deps=["alpha>=9"])
    res = envbuild("lock", recipe, "--resolver", resolver, env=user_env(tmp_path),
                   preexec_fn=ignore_sigchld)
    assert res.returncode == 2, res.stderr
    assert "cannot be satisfied" in res.stderr and "alpha>=9" in res.stderr, res.stderr
    assert_nothing_left(recipe, tmp_path)


def test_conflict_names_the_requirements(tmp_path: Path) -> None:
    """epsilon needs alpha>=2.0, the recipe pins alpha==1.0: nothing can satisfy both."""
    epsilon = _Dist("epsilon", "1.0", {"epsilon.py": ""}, requires=("alpha>=2.0",))
    clashing = build_index(tmp_path / "index", extra=(epsilon,))
    recipe = recipe_at(tmp_path, clashing, clashing.simple_url, deps=["alpha==1.0", "epsilon"])
    res = envbuild("lock", recipe, env=user_env(tmp_path))
    assert res.returncode == 2, res.stderr
    lines = error_lines(res.stderr)
    assert lines == [
        f"envbuild: error: {recipe}: dependencies: expected versions that agree, found a "
        "conflict between epsilon and alpha==1.0:",
        "envbuild: error:   the recipe asks for alpha==1.0",
        "envbuild: error:   epsilon 1.0 depends on alpha>=2.0",
        "envbuild: error: loosen or change one of them in dependencies, then lock again"]
    assert "Traceback" not in res.stderr
    assert_nothing_left(recipe, tmp_path)


# --- the trust lookup and the output readers, in process --------------------------------


def test_trust_precedence(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in ("env", "conf", "requests", "ssl")}
    for path in files.values():
        path.write_text("")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\ncert = {files['conf']}\n")
    env = {"PIP_CERT": str(files["env"]), "PIP_CONFIG_FILE": str(conf),
           "REQUESTS_CA_BUNDLE": str(files["requests"]), "SSL_CERT_FILE": str(files["ssl"]),
           "HOME": str(tmp_path)}
    order = [("PIP_CERT", "env"), ("PIP_CONFIG_FILE", "conf"),
             ("REQUESTS_CA_BUNDLE", "requests"), ("SSL_CERT_FILE", "ssl")]
    for variable, expected in order:
        trust = find_trust("install", env)
        assert trust.cert == str(files[expected]), variable
        assert trust.pip_args() == ["--cert", str(files[expected])]
        # without it, this machine's own /etc/pip.conf would be read
        env[variable] = os.devnull if variable == "PIP_CONFIG_FILE" else ""
    trust = find_trust("install", env)
    assert (trust.cert, trust.pip_args()) == (None, [])


def test_pip_config_files_as_pip_reads_them(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    user = home / ".config" / "pip" / "pip.conf"
    user.parent.mkdir(parents=True)
    user.write_text("[download]\ncert = user-download.pem\n[global]\ncert = user.pem\n")
    env = {"HOME": str(home), "XDG_CONFIG_DIRS": str(xdg)}
    assert config_files(env) == [str(xdg / "pip" / "pip.conf"), "/etc/pip.conf",
                                 str(home / ".pip" / "pip.conf"), str(user)]
    assert config_files({**env, "PIP_CONFIG_FILE": os.devnull}) == []
    explicit = tmp_path / "explicit.conf"
    explicit.write_text("[install]\ncert = explicit.pem\n")
    # an existing PIP_CONFIG_FILE replaces the user's files, not the global ones
    assert config_files({**env, "PIP_CONFIG_FILE": str(explicit)}) == [
        str(xdg / "pip" / "pip.conf"), "/etc/pip.conf", str(explicit)]
    for name in ("user-download.pem", "user.pem", "explicit.pem"):
        (tmp_path / name).write_text("")
    monkeypatch.chdir(tmp_path)     # relative paths are the working directory's, as in pip
    assert find_trust("download", env).cert == str(tmp_path / "user-download.pem")
    assert find_trust("install", env).cert == str(tmp_path / "user.pem")
    with_explicit = {**env, "PIP_CONFIG_FILE": str(explicit)}
    assert find_trust("install", with_explicit).cert == str(tmp_path / "explicit.pem")
    assert find_trust("install", with_explicit).source == f"{explicit} [install] cert"


def test_a_broken_pip_conf_is_passed_over(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    (tmp_path / "ca.pem").write_text("")
    conf.write_text(f"cert = no section\n[global]\ncert = {tmp_path / 'ca.pem'}\n")
    trust = find_trust("install", {"PIP_CONFIG_FILE": str(conf), "HOME": str(tmp_path)})
    assert str(conf) not in trust.source    # as if it were not there (pip would stop)


def test_missing_cert_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="REQUESTS_CA_BUNDLE: expected a CA bundle file"):
        find_trust("install", {"REQUESTS_CA_BUNDLE": str(tmp_path / "none.pem"),
                               "PIP_CONFIG_FILE": os.devnull})


def test_output_readers() -> None:
    assert redact("https://u:p@host/simple and http://tok@h:1/x") == \
        "https://host/simple and http://h:1/x"
    output = ("noise\nTraceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
              "    f()\n    ^^^\nValueError: https://u:secret@host/simple\n\n")
    assert useful_tail(output) == "noise\nValueError: https://host/simple"


def test_build_downloads_with_the_same_trust(tmp_path: Path, index: LocalIndex,
                                             https_index: str, certs: Certs) -> None:
    """The build's `pip download` is given the trust `lock` was; a REQUESTS_CA_BUNDLE
    naming another CA does not override it."""
    recipe = recipe_at(tmp_path, index, https_index, deps=["beta"])
    env = user_env(tmp_path, PIP_CERT=str(certs.ca), REQUESTS_CA_BUNDLE=str(certs.other_ca))
    res = envbuild("lock", recipe, env=env)
    assert res.returncode == 0, res.stderr
    res = envbuild("build", recipe, "--store", tmp_path / "store", "--json", env=env)
    assert res.returncode == 0, res.stderr
    origins = sorted(p.read_text() for p in (tmp_path / "store").rglob(".origin.json"))
    assert len(origins) == 2 and all(https_index.rsplit("/", 1)[0] in o for o in origins)


_SSL = ("  WARNING: Retrying (Retry(total=0)) after connection broken by 'SSLError("
        "SSLCertVerificationError(1, \"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
        "failed: {} (_ssl.c:1006)\"))': /simple/alpha/\n")


@pytest.mark.parametrize("said,found", [
    (_SSL.format("Hostname mismatch, certificate is not valid for 'pypi.internal'."),
     "found a certificate for another name (Hostname mismatch, certificate is not valid for "
     "'pypi.internal'); check the host in [index] url"),
    (_SSL.format("certificate has expired"),
     "found a certificate out of its dates (certificate has expired); check this machine's "
     "clock"),
    (_SSL.format("self-signed certificate in certificate chain"),
     "found certificate verification failed (self-signed certificate in certificate chain); "
     "give the index's CA with PIP_CERT=FILE"),
    ("  WARNING: Retrying (Retry(total=0)) after connection broken by 'ConnectTimeoutError("
     "<pip._vendor.urllib3.connection.HTTPSConnection object>, 'Connection to pypi.internal "
     "timed out. (connect timeout=15)')': /simple/alpha/\n",
     "found no answer in time (timed out); check the network"),
    ("ERROR: Could not install packages due to an OSError: HTTPSConnectionPool(host='files."
     "internal', port=443): Max retries exceeded with url: /a.whl (Caused by NewConnectionError("
     "'<...>: Failed to establish a new connection: [Errno 111] Connection refused'))\n",
     "found the connection refused (nothing listening at pypi.internal) at files.internal; "
     "check [index] url (its port)"),
])
def test_what_pip_said_in_words(said: str, found: str) -> None:
    error = unreachable(said, "https://user:pw@pypi.internal/simple", find_trust("install", {}))
    assert error is not None
    assert str(error).startswith("index https://pypi.internal/simple: expected a package "
                                 f"index, {found}"), str(error)


def test_a_dead_index_with_an_empty_conflict_is_not_a_conflict(tmp_path: Path,
                                                               index: LocalIndex) -> None:
    """pip says "Cannot install ... conflicting dependencies" with no cause listed when an
    index could not be read at all: that is not a conflict to report."""
    said = ("  ERROR: Cannot install alpha because these package versions have conflicting "
            "dependencies.\n  \n  The conflict is caused by:\n  \n  To fix this you could "
            "try to:\n")
    recipe = load_recipe(write_recipe(tmp_path, index, deps=["alpha"]))
    assert conflict(said, recipe) is None
