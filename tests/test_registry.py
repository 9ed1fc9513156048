"""Pushing to a real registry (Debian's docker-registry), read back with skopeo.

The images are made here: small deterministic layer tars and a hand-written config, so no
docker engine is needed."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from registryserver import (
    Registry,
    Tls,
    free_port,
    make_htpasswd,
    make_tls,
    need,
    start_digest_proxy,
    start_registry,
    start_token_server,
    stop_process,
    stop_registry,
)

from envbuild import errors
from envbuild.errors import BuildError, InputError, RegistryError
from envbuild.registry import (
    ImageParts,
    PushResult,
    compressed_layer,
    push,
)
from envbuild.registryclient import parse_reference

USER, PASSWORD = "alice", "s3cret-pass"


# ---- images made by the test -------------------------------------------------------------

def make_layer(path: Path, files: dict[str, bytes]) -> str:
    """A layer tar as an image writer makes it (sorted, fixed mtime, root-owned); its diff_id."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 315532800, 0o644
            tar.addfile(info, io.BytesIO(data))
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def make_parts(directory: Path, layers: list[dict[str, bytes]]) -> ImageParts:
    directory.mkdir(parents=True, exist_ok=True)
    paths, diff_ids = [], []
    for i, files in enumerate(layers):
        path = directory / f"layer{i}.tar"
        diff_ids.append(make_layer(path, files))
        paths.append(path)
    config = {"architecture": "amd64", "os": "linux", "created": "1980-01-01T00:00:00Z",
              "config": {"Cmd": ["/bin/true"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return ImageParts(raw, tuple(paths), tuple(diff_ids))


def three_layers(directory: Path, app: bytes = b"print('v1')\n") -> ImageParts:
    return make_parts(directory, [
        {"etc/os": b"test\n", "usr/lib/base.txt": b"base " * 3000},
        {"opt/env/lib/pkg/__init__.py": app},
        {"opt/env/manifest.json": b'{"x": 1}\n'},
    ])


# ---- registries ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    stop_registry(reg)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("auth-registry")
    reg = start_registry(root, htpasswd=make_htpasswd(root / "htpasswd", USER, PASSWORD))
    yield reg
    stop_registry(reg)


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DOCKER_CONFIG dir of this test's own (never the host's)."""
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    return directory


def skopeo(*args: str) -> bytes:
    return subprocess.run([need("skopeo"), *args], check=True, capture_output=True).stdout


def blob(reg: Registry, repo: str, digest: str) -> bytes:
    resp = requests.get(f"http://{reg.host}/v2/{repo}/blobs/{digest}", timeout=30)
    resp.raise_for_status()
    return resp.content


def pushed(parts: ImageParts, tag: str, cache: Path,
           ca: Path | None = None) -> tuple[PushResult, list[str]]:
    """push(), with the progress messages it gave."""
    said: list[str] = []
    return push(parts, tag, cache, ca=ca, progress=said.append), said


# ---- the push, read back -------------------------------------------------------------------

def test_pushed_digest_is_the_computed_one_and_the_registry_s(
        registry: Registry, tmp_path: Path, docker_config: Path) -> None:
    parts = three_layers(tmp_path / "img")
    result, said = pushed(parts, f"{registry.host}/demo:1", tmp_path / "cache")
    assert result.reference == f"{registry.host}/demo@{result.manifest_digest}"
    assert result.blobs_sent == 4
    ref = f"docker://{registry.host}/demo:1"
    raw = skopeo("inspect", "--raw", "--tls-verify=false", ref)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == result.manifest_digest
    manifest = json.loads(raw)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    info = json.loads(skopeo("inspect", "--tls-verify=false", ref))
    assert info["Digest"] == result.manifest_digest
    assert info["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    # each layer blob unpacks to its diff_id; the config blob is the config as written
    for layer, diff_id in zip(manifest["layers"], parts.diff_ids):
        data = blob(registry, "demo", layer["digest"])
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == diff_id
        assert len(data) == layer["size"]
    assert blob(registry, "demo", manifest["config"]["digest"]) == parts.config
    assert result.bytes_sent == sum(x["size"] for x in manifest["layers"]) + len(parts.config)
    sizes = [x["size"] / 1e3 for x in manifest["layers"]] + [len(parts.config) / 1e3]
    assert said == [*(f"compressing layer {i}/3" for i in (1, 2, 3)),
                    *(f"pushing layer {i}/3 ({sizes[i - 1]:.1f} kB)" for i in (1, 2, 3)),
                    f"pushing config ({sizes[3]:.1f} kB)",
                    f"pushing manifest {registry.host}/demo:1"]


def test_a_second_push_sends_nothing(registry: Registry, tmp_path: Path,
                                     docker_config: Path) -> None:
    parts = three_layers(tmp_path / "img")
    first, _ = pushed(parts, f"{registry.host}/again:1", tmp_path / "cache")
    second, said = pushed(parts, f"{registry.host}/again:1", tmp_path / "cache")
    assert (second.blobs_sent, second.bytes_sent) == (0, 0)
    assert second.manifest_digest == first.manifest_digest
    assert "layer 3/3 already in the registry" in said
    assert "config already in the registry" in said


def test_one_changed_layer_sends_that_layer_and_the_config(
        registry: Registry, tmp_path: Path, docker_config: Path) -> None:
    cache = tmp_path / "cache"
    first, _ = pushed(three_layers(tmp_path / "v1"), f"{registry.host}/upgrade:1", cache)
    parts = three_layers(tmp_path / "v2", app=b"print('v2')\n")
    second, said = pushed(parts, f"{registry.host}/upgrade:2", cache)
    assert second.blobs_sent == 2
    assert second.manifest_digest != first.manifest_digest
    changed = next(cache.glob(parts.diff_ids[1].split(":")[1] + "-*.tar.gz"))
    assert second.bytes_sent == changed.stat().st_size + len(parts.config)
    assert [m for m in said if m.startswith("pushing layer")] == [
        f"pushing layer 2/3 ({changed.stat().st_size / 1e3:.1f} kB)"]


def test_compressed_blobs_are_identical_from_two_cache_dirs(
        registry: Registry, tmp_path: Path, docker_config: Path) -> None:
    parts = three_layers(tmp_path / "img")
    a, _ = pushed(parts, f"{registry.host}/det-a:1", tmp_path / "cache-a")
    b, _ = pushed(parts, f"{registry.host}/det-b:1", tmp_path / "cache-b")
    assert a.manifest_digest == b.manifest_digest
    files_a = sorted(p.name for p in (tmp_path / "cache-a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "cache-b").iterdir())
    assert len(files_a) == 3
    for name in files_a:
        data = (tmp_path / "cache-a" / name).read_bytes()
        assert data == (tmp_path / "cache-b" / name).read_bytes()
        # gzip header: deflate, no flags (no file name), mtime 0
        assert data[:8] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00"


def test_a_damaged_cached_blob_is_compressed_again(tmp_path: Path) -> None:
    parts = three_layers(tmp_path / "img")
    first = compressed_layer(parts.layers[0], parts.diff_ids[0], tmp_path / "cache")
    assert first.path is not None
    os.chmod(first.path, stat.S_IRUSR | stat.S_IWUSR)
    first.path.write_bytes(first.path.read_bytes()[:-1] + b"\0")
    again = compressed_layer(parts.layers[0], parts.diff_ids[0], tmp_path / "cache")
    assert again.digest == first.digest
    assert again.path is not None
    assert "sha256:" + hashlib.sha256(again.path.read_bytes()).hexdigest() == first.digest


def test_a_layer_that_is_not_its_diff_id_is_refused(tmp_path: Path) -> None:
    parts = three_layers(tmp_path / "img")
    with pytest.raises(BuildError, match="not the diff_id given"):
        compressed_layer(parts.layers[0], parts.diff_ids[1], tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# ---- references --------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["demo:1", "team/demo", "docker.io/library/demo:1",
                                 "registry-1.docker.io/team/demo", "127.0.0.1:5000/Demo",
                                 "127.0.0.1:5000/demo@sha256:" + "0" * 64, "localhost",
                                 "127.0.0.1:5000/" + "a" * 120 + "/" + "b" * 120])
def test_a_tag_push_cannot_take_is_refused_before_any_work(tag: str, tmp_path: Path) -> None:
    parts = three_layers(tmp_path / "img")
    with pytest.raises(InputError) as caught:
        push(parts, tag, tmp_path / "cache")
    assert errors.exit_status(caught.value) == 2
    assert tag in str(caught.value)
    assert not (tmp_path / "cache").exists()


def test_references_split() -> None:
    ref = parse_reference("127.0.0.1:5000/team/demo:1.0")
    assert (ref.host, ref.repo, ref.tag, ref.base_url) == (
        "127.0.0.1:5000", "team/demo", "1.0", "http://127.0.0.1:5000")
    assert parse_reference("localhost:5000/demo").tag == "latest"
    assert parse_reference("localhost/demo").base_url == "http://localhost"
    assert parse_reference("[::1]:5000/demo").base_url == "http://[::1]:5000"
    assert parse_reference("127.8.0.1:5000/demo").loopback
    assert parse_reference("registry.example.com/demo:2").base_url == \
        "https://registry.example.com"
    assert parse_reference("10.0.0.1:5000/demo").base_url == "https://10.0.0.1:5000"


# ---- errors --------------------------------------------------------------------------------

def test_connection_refused_names_the_url(tmp_path: Path, docker_config: Path) -> None:
    port = free_port()
    with pytest.raises(RegistryError) as caught:
        push(three_layers(tmp_path / "img"), f"127.0.0.1:{port}/demo:1", tmp_path / "cache")
    assert f"cannot connect to http://127.0.0.1:{port}/v2/: connection refused" == \
        str(caught.value)
    assert errors.exit_status(caught.value) == 1


def test_the_registry_s_own_error_is_shown(tmp_path: Path, docker_config: Path) -> None:
    reg = start_registry(tmp_path / "readonly", readonly=True)
    try:
        with pytest.raises(RegistryError) as caught:
            push(three_layers(tmp_path / "img"), f"{reg.host}/demo:1", tmp_path / "cache")
    finally:
        stop_registry(reg)
    message = str(caught.value)
    assert f"registry {reg.host} refused starting the upload of layer 1/3 for demo" in message
    assert "405 Method Not Allowed (Method not allowed)" in message


def test_a_registry_that_rewrites_the_manifest_is_refused(
        registry: Registry, tmp_path: Path, docker_config: Path) -> None:
    host, proxy = start_digest_proxy(tmp_path / "proxy", registry)
    try:
        with pytest.raises(RegistryError) as caught:
            push(three_layers(tmp_path / "img"), f"{host}/rewritten:1", tmp_path / "cache")
    finally:
        stop_process(proxy)
    message = str(caught.value)
    assert f"registry {host} stored the manifest of rewritten:1 as sha256:" in message
    assert "not as its sha256 sha256:" in message


# ---- credentials -----------------------------------------------------------------------

def write_docker_config(directory: Path, content: dict[str, object]) -> None:
    (directory / "config.json").write_text(json.dumps(content))


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_from_auths(auth_registry: Registry, tmp_path: Path,
                                docker_config: Path) -> None:
    write_docker_config(docker_config, {"auths": {
        f"https://{auth_registry.host}/v1/": {"auth": basic(USER, PASSWORD)}}})
    result, _ = pushed(three_layers(tmp_path / "img"), f"{auth_registry.host}/private:1",
                       tmp_path / "cache")
    assert result.blobs_sent == 4
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}",
                 f"docker://{auth_registry.host}/private:1")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == result.manifest_digest


def test_credentials_from_a_helper(auth_registry: Registry, tmp_path: Path,
                                   docker_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A credential helper, a real program on PATH, answers for this registry only."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-envtest"
    answer = json.dumps({"ServerURL": auth_registry.host, "Username": USER, "Secret": PASSWORD})
    helper.write_text("#!/bin/sh\n"
                      f'[ "$1" = get ] && [ "$(cat)" = "{auth_registry.host}" ] || exit 3\n'
                      f"echo '{answer}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    write_docker_config(docker_config, {"credHelpers": {auth_registry.host: "envtest"},
                                        "auths": {auth_registry.host: {"auth": basic("x", "y")}}})
    result, _ = pushed(three_layers(tmp_path / "img"), f"{auth_registry.host}/helped:1",
                       tmp_path / "cache")
    assert result.manifest_digest.startswith("sha256:")


@pytest.mark.parametrize("config", ["none", "wrong password"])
def test_refused_credentials_name_the_registry(auth_registry: Registry, tmp_path: Path,
                                               docker_config: Path, config: str) -> None:
    if config == "wrong password":
        write_docker_config(docker_config, {"auths": {
            auth_registry.host: {"auth": basic(USER, "not-it")}}})
    with pytest.raises(RegistryError) as caught:
        push(three_layers(tmp_path / "img"), f"{auth_registry.host}/private:1",
             tmp_path / "cache")
    message = str(caught.value)
    assert errors.exit_status(caught.value) == 1
    assert f"registry {auth_registry.host} refused " in message
    assert "401 Unauthorized (UNAUTHORIZED: authentication required)" in message
    assert f"DOCKER_CONFIG ({docker_config / 'config.json'})" in message
    assert ("credentials of alice" if config != "none" else "no credentials found") in message


# ---- TLS, for a registry that is not on loopback ---------------------------------------

def this_host_address() -> str:
    """This machine's own non-loopback IPv4 address (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))
        address: str = sock.getsockname()[0]
    if address.startswith("127."):
        pytest.fail("this machine has no non-loopback IPv4 address for the TLS registry")
    return address


@pytest.fixture(autouse=True)
def _no_proxy_to_this_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry on this host's own address is reached directly, whatever proxy is set."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name),
                                                         this_host_address()])))


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Tls]]:
    root = tmp_path_factory.mktemp("tls-registry")
    address = this_host_address()
    tls = make_tls(root / "tls", address)
    reg = start_registry(root, address=address, tls=tls)
    yield reg, tls
    stop_registry(reg)


def test_tls_with_the_ca_given(tls_registry: tuple[Registry, Tls], tmp_path: Path,
                               docker_config: Path) -> None:
    reg, tls = tls_registry
    parts = three_layers(tmp_path / "img")
    result, _ = pushed(parts, f"{reg.host}/secure:1", tmp_path / "cache", ca=tls.ca)
    raw = skopeo("inspect", "--raw", "--cert-dir", str(tls.ca.parent),
                 f"docker://{reg.host}/secure:1")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == result.manifest_digest


def test_tls_failure_names_the_host_and_suggests_ca(tls_registry: tuple[Registry, Tls],
                                                    tmp_path: Path, docker_config: Path) -> None:
    reg, _ = tls_registry
    with pytest.raises(RegistryError) as caught:
        push(three_layers(tmp_path / "img"), f"{reg.host}/secure:1", tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith(f"TLS failure talking to {reg.host}: certificate verify failed")
    assert "--ca FILE" in message


# ---- bearer tokens, from a token service of the registry's ---------------------------------

IDENTITY_TOKEN = "envbuild-identity-token"


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("token-registry")
    tokens = start_token_server(root / "tokens", USER, PASSWORD, IDENTITY_TOKEN)
    try:
        reg = start_registry(root, token=tokens)
        yield reg
        stop_registry(reg)
    finally:
        stop_process(tokens.proc)


@pytest.mark.parametrize("entry", ["auth", "identitytoken"])
def test_bearer_token_from_the_realm(token_registry: Registry, tmp_path: Path,
                                     docker_config: Path, entry: str) -> None:
    secret = basic(USER, PASSWORD) if entry == "auth" else IDENTITY_TOKEN
    write_docker_config(docker_config, {"auths": {token_registry.host: {entry: secret}}})
    result, _ = pushed(three_layers(tmp_path / "img"), f"{token_registry.host}/tok-{entry}:1",
                       tmp_path / "cache")
    assert result.blobs_sent == 4
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}",
                 f"docker://{token_registry.host}/tok-{entry}:1")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == result.manifest_digest


def test_a_refused_token_names_the_registry(token_registry: Registry, tmp_path: Path,
                                            docker_config: Path) -> None:
    write_docker_config(docker_config, {"auths": {
        token_registry.host: {"auth": basic(USER, "not-it")}}})
    with pytest.raises(RegistryError) as caught:
        push(three_layers(tmp_path / "img"), f"{token_registry.host}/tok:1", tmp_path / "cache")
    assert f"registry {token_registry.host} refused the credentials of alice" in str(caught.value)


def helper_script(bindir: Path, name: str, body: str) -> None:
    bindir.mkdir(exist_ok=True)
    helper = bindir / f"docker-credential-{name}"
    helper.write_text("#!/bin/sh\n" + body)
    helper.chmod(0o755)


def test_a_creds_store_without_an_entry_is_anonymous(
        auth_registry: Registry, tmp_path: Path, docker_config: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`credsStore` serves every registry; its "not found" means anonymous, as for docker."""
    helper_script(tmp_path / "bin", "none",
                  "echo 'credentials not found in native keychain'; exit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    write_docker_config(docker_config, {"credsStore": "none"})
    with pytest.raises(RegistryError, match="refused anonymous access"):
        push(three_layers(tmp_path / "img"), f"{auth_registry.host}/anon:1", tmp_path / "cache")


def test_a_missing_or_failing_helper_is_named(auth_registry: Registry, tmp_path: Path,
                                              docker_config: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    helper_script(tmp_path / "bin", "broken", "echo 'keyring locked' >&2; exit 4\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for name, expected in [("absent-helper", "docker-credential-absent-helper (named in "),
                           ("broken", "docker-credential-broken failed for ")]:
        write_docker_config(docker_config, {"credHelpers": {auth_registry.host: name}})
        with pytest.raises(RegistryError) as caught:
            push(three_layers(tmp_path / "img"), f"{auth_registry.host}/h:1", tmp_path / "cache")
        assert expected in str(caught.value)
    assert "keyring locked" in str(caught.value)
