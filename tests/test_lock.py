"""`envbuild lock`: real pip-tools against the local index, pip-compatible hashed output,
a header that records its inputs (never credentials), --check, pins, ambient pip config."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, envbuild, write_recipe
from pkgindex import LocalIndex, build_index, clean_pip_env, write_wheel

from envbuild.lock import redact_url
from envbuild.recipe import meaning_digest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


# --- reading a lock, independently of envbuild.lock ---------------------------------------


def header(text: str) -> dict[str, str]:
    lines = text.splitlines()
    assert lines[0] == "# envbuild.lock/1", lines[0]
    out: dict[str, str] = {}
    for line in lines[1:]:
        if not line.startswith("# ") or ": " not in line:
            break
        key, _, value = line[2:].partition(": ")
        out[key] = value
    return out


def requirement_lines(text: str) -> list[str]:
    """Logical requirement lines (continuations joined, comments dropped)."""
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        line = raw.split(" #", 1)[0].rstrip()
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        buf += line.strip()
        if buf:
            out.append(buf)
        buf = ""
    return out


def pins(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in requirement_lines(text):
        m = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", line)
        assert m, line
        out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def lock(recipe: Path, *args: str) -> str:
    res = cli("lock", recipe, *args)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    path = recipe.with_suffix(".lock")
    assert res.stdout.strip().splitlines()[-1] == str(path)
    return path.read_text()


def pip_install_dry_run(lock_path: Path, find_links: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
         "--require-hashes", "--no-deps", "--no-index", "--find-links", str(find_links),
         "-r", str(lock_path)],
        env=clean_pip_env(), capture_output=True, text=True, timeout=300)


# --- the lock itself ----------------------------------------------------------------------


def test_lock_beside_recipe_pip_accepts_it(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path / "proj", index, name="demo")
    text = lock(recipe)
    lock_path = tmp_path / "proj" / "demo.lock"
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["demo.lock", "demo.toml"]
    assert pins(text) == {"alpha": "2.0", "beta": "1.0", "gamma": "1.1", "delta": "1.0",
                          "pthpkg": "1.0", "sdistonly": "1.0"}

    res = pip_install_dry_run(lock_path, index.find_links)
    assert res.returncode == 0, res.stdout + res.stderr
    would = re.search(r"Would install (.*)", res.stdout)
    assert would, res.stdout
    assert set(would.group(1).split()) == {"alpha-2.0", "beta-1.0", "gamma-1.1", "delta-1.0",
                                           "pthpkg-1.0", "sdistonly-1.0"}

    # The control: pip really checks those hashes (one wrong digest and it refuses).
    good = hashlib.sha256(index.wheel("alpha-2.0-py3-none-any.whl").read_bytes()).hexdigest()
    assert f"--hash=sha256:{good}" in text
    tampered = tmp_path / "tampered.lock"
    tampered.write_text(text.replace(good, "0" * 64))
    bad = pip_install_dry_run(tampered, index.find_links)
    assert bad.returncode != 0
    assert "hash" in (bad.stdout + bad.stderr).lower()


def test_every_requirement_is_pinned_and_hashed(tmp_path: Path, index: LocalIndex) -> None:
    text = lock(write_recipe(tmp_path, index))
    lines = requirement_lines(text)
    assert len(lines) == 6
    for line in lines:
        assert "==" in line, line
        hashes = re.findall(r"--hash=(\S+)", line)
        assert hashes, line
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), line
    # and the hashes are those of the index's files
    for name in ("alpha-2.0-py3-none-any.whl", "sdistonly-1.0.tar.gz",
                 "gamma-1.1-py3-none-any.whl"):
        digest = hashlib.sha256(index.wheel(name).read_bytes()).hexdigest()
        assert f"--hash=sha256:{digest}" in text, name


def test_header_records_inputs(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    h = header(lock(recipe))
    assert h["recipe"] == meaning_digest(tomllib.loads(recipe.read_text()))
    assert h["resolver"] == f"pip-tools {dist_version('pip-tools')}"
    assert h["python"].split()[0] == PY == "3.11"
    assert h["index-url"] == index.simple_url


def test_header_records_find_links(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"])  # [index] is its last table
    recipe.write_text(recipe.read_text() + f'find-links = ["{index.find_links}"]\n')
    text = lock(recipe)
    assert str(index.find_links) in header(text)["find-links"]


def test_lock_refuses_when_running_python_is_outside_requires_python(
        tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    recipe.write_text(recipe.read_text().replace('">=3.9"', '"<3"'))
    res = cli("lock", recipe)
    assert res.exit_code == 2
    assert "requires-python" in res.stderr and "<3" in res.stderr
    assert not recipe.with_suffix(".lock").exists()


def test_failed_resolution_keeps_the_old_lock(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    before = lock(recipe)
    recipe.write_text(recipe.read_text().replace('"alpha"', '"alpha>=9"'))
    res = cli("lock", recipe)
    assert res.exit_code == 2, "nothing on the index satisfies it: bad input"
    assert f"{recipe}: dependencies: cannot be satisfied" in res.stderr
    assert "alpha>=9" in res.stderr
    assert recipe.with_suffix(".lock").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.lock", "demo.toml"]


# --- credentials ------------------------------------------------------------------------


@pytest.mark.parametrize("url,expected", [
    ("https://user:secret@host/simple", "https://host/simple"),
    ("https://user:secret@host:8443/simple/", "https://host:8443/simple/"),
    ("https://__token__:pypi-AgEIcHlwaS5vcmc@upload.example/simple",
     "https://upload.example/simple"),
    ("https://onlytoken@host/simple", "https://host/simple"),
    ("https://user:p%40ss%3Aw0rd@host/simple?x=1", "https://host/simple?x=1"),
    ("http://u:p@[::1]:8080/simple", "http://[::1]:8080/simple"),
    ("https://pypi.org/simple", "https://pypi.org/simple"),
    ("file:///srv/index/simple", "file:///srv/index/simple"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    for secret in ("secret", "pypi-AgEIcHlwaS5vcmc", "onlytoken", "p%40ss"):
        assert secret not in redact_url(url)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """A private index: the local index's files, only with the right basic-auth header."""

    expected_auth = ""
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth)
        if auth != self.expected_auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def private_index(index: LocalIndex) -> Iterator[tuple[str, type[_Handler]]]:
    user, password = "ci-bot", "s3cr3t-T0KEN"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    handler = type("H", (_Handler,), {"expected_auth": f"Basic {token}", "seen": []})

    def make(*args: Any, **kwargs: Any) -> _Handler:
        made: _Handler = handler(*args, directory=str(index.root), **kwargs)
        return made

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{user}:{password}@127.0.0.1:{server.server_address[1]}/simple", handler
    finally:
        server.shutdown()
        server.server_close()


def test_credentials_never_reach_the_lock(tmp_path: Path, index: LocalIndex,
                                          private_index: tuple[str, type[_Handler]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url, handler = private_index
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    recipe = write_recipe(tmp_path, index, deps=["beta[fast]"])
    recipe.write_text(recipe.read_text().replace(index.simple_url, url))
    res = cli("lock", recipe)
    assert res.exit_code == 0, res.stderr
    # the credentials were really used: the index refuses requests without them
    assert handler.expected_auth in handler.seen
    text = recipe.with_suffix(".lock").read_text()
    assert pins(text) == {"alpha": "2.0", "beta": "1.0", "gamma": "1.1"}
    assert header(text)["index-url"] == redact_url(url) == url.replace("ci-bot:s3cr3t-T0KEN@", "")
    for secret in ("s3cr3t", "T0KEN", "ci-bot"):
        assert secret not in text


def test_credentials_never_reach_the_output(tmp_path: Path, index: LocalIndex,
                                            private_index: tuple[str, type[_Handler]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """CI logs are as shared as the lock: `envbuild lock` must not print the password."""
    url, _ = private_index
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    recipe.write_text(recipe.read_text().replace(index.simple_url, url))
    res = cli("lock", recipe)
    assert res.exit_code == 0, res.stderr
    assert "s3cr3t" not in res.stdout + res.stderr, res.stderr


# --- --check ----------------------------------------------------------------------------


def test_check_fresh_stale_missing(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    res = cli("lock", "--check", recipe)
    assert res.exit_code == 1
    assert "no lock" in res.stderr
    assert not recipe.with_suffix(".lock").exists()

    text = lock(recipe)
    assert cli("lock", "--check", recipe).exit_code == 0

    recipe.write_text(recipe.read_text().replace('"alpha"', '"alpha", "gamma"'))
    res = cli("lock", "--check", recipe)
    assert res.exit_code == 1
    assert "stale" in res.stderr
    assert recipe.with_suffix(".lock").read_text() == text  # --check writes nothing

    lock(recipe)
    assert cli("lock", "--check", recipe).exit_code == 0


def test_check_ignores_comments_and_key_order(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    lock(recipe)
    lines = recipe.read_text().splitlines()
    recipe.write_text("# reordered, commented\n" + "\n".join([lines[1], lines[0], *lines[2:]])
                      + "\n# the end\n")
    assert cli("lock", "--check", recipe).exit_code == 0


def test_check_accepts_a_lock_stamped_with_the_bytes_digest(tmp_path: Path,
                                                            index: LocalIndex) -> None:
    """Locks made before the digest was taken by meaning record the file's bytes' digest:
    still fresh while the bytes are the same, stale (re-lock) once they change."""
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    text = lock(recipe)
    by_meaning = header(text)["recipe"]
    by_bytes = "sha256:" + hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert by_meaning != by_bytes
    recipe.with_suffix(".lock").write_text(text.replace(by_meaning, by_bytes))
    assert cli("lock", "--check", recipe).exit_code == 0
    recipe.write_text(recipe.read_text() + "# a comment\n")
    res = cli("lock", "--check", recipe)
    assert res.exit_code == 1
    assert "stale" in res.stderr


def test_check_resolves_nothing(tmp_path: Path) -> None:
    """With the index gone, --check still answers; a real lock would need the index."""
    own = build_index(tmp_path / "idx")
    recipe = write_recipe(tmp_path / "proj", own, deps=["beta[fast]"])
    lock(recipe)
    (tmp_path / "idx").rename(tmp_path / "idx-gone")
    assert cli("lock", "--check", recipe).exit_code == 0
    # the control: resolving really does need the index that is gone
    recipe.write_text(recipe.read_text().replace("beta[fast]", "beta"))
    assert cli("lock", "--check", recipe).exit_code == 1
    assert cli("lock", recipe).exit_code != 0


# --- pins -------------------------------------------------------------------------------


def test_pins_are_kept_on_relock_until_upgrade(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha<2"])
    assert pins(lock(recipe)) == {"alpha": "1.0"}
    write_recipe(tmp_path, index, deps=["alpha"])
    assert cli("lock", "--check", recipe).exit_code == 1
    assert pins(lock(recipe)) == {"alpha": "1.0"}
    assert cli("lock", "--check", recipe).exit_code == 0
    assert pins(lock(recipe, "--upgrade")) == {"alpha": "2.0"}


def test_upgrade_package_upgrades_only_that_one(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha<2", "gamma<1.1"])
    assert pins(lock(recipe)) == {"alpha": "1.0", "gamma": "1.0"}
    write_recipe(tmp_path, index, deps=["alpha", "gamma"])
    assert pins(lock(recipe, "--upgrade-package", "alpha")) == {"alpha": "2.0", "gamma": "1.0"}
    assert pins(lock(recipe, "-P", "gamma")) == {"alpha": "2.0", "gamma": "1.1"}


# --- ambient pip configuration ------------------------------------------------------------


def _rogue_index(root: Path, version: str) -> tuple[Path, str]:
    """A second index offering a newer alpha: if it is consulted, the lock shows it."""
    files, simple = root / "files", root / "simple" / "alpha"
    files.mkdir(parents=True)
    simple.mkdir(parents=True)
    name = write_wheel(str(files), "alpha", version, f"Metadata-Version: 2.1\nName: alpha\n"
                       f"Version: {version}\n", {"alpha/__init__.py": ""}, "")
    digest = hashlib.sha256((files / name).read_bytes()).hexdigest()
    (simple / "index.html").write_text(
        f'<html><body><a href="../../files/{name}#sha256={digest}">{name}</a></body></html>\n')
    return files, (root / "simple").as_uri()


def test_ambient_pip_config_is_ignored(tmp_path: Path, index: LocalIndex) -> None:
    """Each rogue source offers an alpha newer than the index's 2.0; PIP_ONLY_BINARY would
    make the sdist-only package unresolvable. (pip-compile itself does not apply pip's
    `constraint` settings, so the constraint files are here for the no-leak check.)"""
    extra_links, extra_url = _rogue_index(tmp_path / "rogue-extra", "3.0")
    conf_links, conf_url = _rogue_index(tmp_path / "rogue-conf", "4.0")
    find_links, _ = _rogue_index(tmp_path / "rogue-links", "5.0")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("alpha==1.0\n")
    conf_constraints = tmp_path / "conf-constraints.txt"
    conf_constraints.write_text("gamma==1.0\n")
    pip_conf = tmp_path / "pip.conf"
    pip_conf.write_text(f"[global]\nconstraint = {conf_constraints}\n"
                        f"extra-index-url = {conf_url}\nfind-links = {conf_links}\n"
                        )
    ambient = dict(os.environ)
    ambient.update({
        "PIP_CONSTRAINT": str(constraints),
        "PIP_EXTRA_INDEX_URL": extra_url,
        "PIP_FIND_LINKS": str(find_links),
        "PIP_INDEX_URL": "http://127.0.0.1:9/bogus/simple",
        "PIP_CONFIG_FILE": str(pip_conf),
        "PIP_ONLY_BINARY": ":all:",  # would make the sdist-only package unresolvable
    })
    deps = ["beta[fast]", "sdistonly"]
    with_ambient = write_recipe(tmp_path / "ambient", index, deps=deps)
    res = envbuild("lock", with_ambient, env=ambient)
    assert res.returncode == 0, res.stderr
    clean = write_recipe(tmp_path / "clean", index, deps=deps)
    res = envbuild("lock", clean, env=clean_pip_env())
    assert res.returncode == 0, res.stderr

    text = with_ambient.with_suffix(".lock").read_text()
    assert text == clean.with_suffix(".lock").read_text()
    assert pins(text) == {"alpha": "2.0", "beta": "1.0", "gamma": "1.1", "sdistonly": "1.0"}
    for leaked in (str(tmp_path), "rogue", extra_url, conf_url, "127.0.0.1:9", "bogus",
                   "constraints", "/opt/wheels", "/opt/pypi"):
        assert leaked not in text, leaked


# --- real PyPI --------------------------------------------------------------------------

SIX_1_16_0 = {  # PyPI's published digests of six 1.16.0 (wheel and sdist)
    "sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254",
    "sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926",
}


@pytest.mark.slow
@pytest.mark.network
def test_lock_build_run_from_pypi(tmp_path: Path) -> None:
    recipe = tmp_path / "web.toml"
    recipe.write_text('name = "web"\nrequires-python = ">=3.9"\n'
                      'dependencies = ["six==1.16.0", "requests[socks]>=2.31"]\n')
    # as a user would run it: with this machine's ambient pip config in place
    res = envbuild("lock", recipe)
    assert res.returncode == 0, res.stderr
    text = recipe.with_suffix(".lock").read_text()
    assert header(text)["index-url"] == "https://pypi.org/simple"
    locked = pins(text)
    assert locked["six"] == "1.16.0"
    assert {"requests", "pysocks", "urllib3", "idna", "certifi", "charset-normalizer"} <= set(
        locked)
    for line in requirement_lines(text):
        assert "--hash=sha256:" in line, line
    six_line = next(ln for ln in requirement_lines(text) if ln.startswith("six=="))
    assert set(re.findall(r"--hash=(\S+)", six_line)) == SIX_1_16_0
    for leaked in ("/opt/wheels", "file:///opt/pypi", "/opt/pypi", "file://"):
        assert leaked not in text, leaked

    store = tmp_path / "store"
    res = envbuild("build", recipe, "--store", store)
    assert res.returncode == 0, res.stderr
    env = Path(res.stdout.strip().splitlines()[-1])
    assert env.is_dir() and store in env.parents
    res = envbuild("run", env, "--", "python", "-c",
                   "import requests, socks, six, sys; print(requests.__version__, sys.prefix)")
    assert res.returncode == 0, res.stderr
    version, prefix = res.stdout.split()
    assert version == locked["requests"]
    assert Path(prefix).resolve() == env.resolve()


def test_header_records_find_links_as_the_recipe_writes_them(tmp_path: Path,
                                                             index: LocalIndex) -> None:
    """A committed lock must not carry this machine's absolute paths."""
    import shutil

    project = tmp_path / "proj"
    shutil.copytree(index.find_links, project / "wheels")
    recipe = project / "local.toml"
    recipe.write_text('name = "local"\ndependencies = ["gamma"]\n\n[index]\n'
                      f'url = "{index.simple_url}"\nfind-links = ["wheels/"]\n')
    assert cli("lock", recipe).exit_code == 0
    text = (project / "local.lock").read_text()
    assert "# find-links: wheels/\n" in text
    assert str(tmp_path) not in text


# ---- reading a lock ----------------------------------------------------------------------------

LOCK_LINES = [
    "requests==2.34.2", "Typing_Extensions==4.16.0", "zope.interface==7.2",
    "a==1.0a1", "b==2.0rc3", "c==3.0.post2", "d==4.0.dev5", "e==1.0+local.7", "f==1!2.0",
    "g==1.0.0b1.post2.dev3", "h[extra]==1.0", 'i==1.0 ; python_version < "3.11"',
    "j==1.0;sys_platform=='linux'", "K.L_m==0.0.1", "n==1.*",
]


def test_lock_lines_read_as_packaging_reads_them(tmp_path: Path) -> None:
    """A plain pin is read without packaging, to the name, version and marker packaging
    gives; every other line is packaging's to read."""
    from envbuild.lock import _entries, _requirement

    digest = " --hash=sha256:" + "0" * 64
    text = "".join(f"{line}{digest}\n" for line in LOCK_LINES)
    read = _entries(text, tmp_path / "x.lock")
    assert len(read) == len(LOCK_LINES)
    for line, entry in zip(LOCK_LINES, read):
        parts = (line + digest).split(" --hash=")
        name, version, marker = _requirement(line, parts, "here")
        assert (entry.name, entry.version, str(entry.marker)) == (name, version, str(marker))
        assert entry.hashes == ("sha256:" + "0" * 64,)


def test_a_lock_of_plain_pins_is_read_without_packagings_parser(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    plain = LOCK_LINES[:8] + LOCK_LINES[9:10]
    lock.write_text("".join(f"{line} --hash=sha256:{'1' * 64}\n" for line in plain))
    code = ("import sys\nfrom pathlib import Path\nfrom envbuild.lock import _entries\n"
            f"assert len(_entries(Path({str(lock)!r}).read_text(), Path('x'))) == 9\n"
            "assert 'packaging.requirements' not in sys.modules, 'imported'\n")
    subprocess.run([sys.executable, "-I", "-c", code], check=True)
