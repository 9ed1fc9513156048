"""`envbuild image` end to end: a real dockerd, a debootstrapped Debian base with its own
python3, the demo recipe from the local index; then the image run, tampered, verified
through `docker://`, and built again on a second engine."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import cli, envbuild, write_recipe
from containers import (  # noqa: F401
    DockerEngine,
    base_image,
    bookworm_image_fixture,
    docker_engine_fixture,
    start_engine,
    trixie_image_fixture,
)
from pkgindex import LocalIndex

from envbuild.containerio import run_output

pytestmark = [pytest.mark.slow, pytest.mark.network]   # the builder's tools come from PyPI

TAG = "localhost/demo:1"


@dataclass(frozen=True)
class Image:
    recipe: Path
    store: Path
    info: dict[str, object]
    env: dict[str, str]


def _image_env(engine: DockerEngine, store: Path) -> dict[str, str]:
    return {**engine.env(), "ENVBUILD_STORE": str(store)}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex,
          docker_engine: DockerEngine, bookworm_image: str) -> Image:
    work = tmp_path_factory.mktemp("image")
    recipe = write_recipe(work, index, extra=(
        f'[image]\nbase = "{bookworm_image}"\nentrypoint = ["python", "-c", '
        '"import alpha, beta; print(\'demo ok\')"]\n'))
    assert cli("lock", recipe).exit_code == 0
    env = _image_env(docker_engine, work / "store")
    proc = envbuild("image", recipe, "--tag", TAG, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return Image(recipe, work / "store", json.loads(proc.stdout), env)


def _run(engine: DockerEngine, tag: str, *cmd: str, user: str | None = None) -> tuple[int, str]:
    """The image's entrypoint run with `cmd`; its status and output, read from a stream
    attached before it starts (the engine's logs can miss the tail of a fast exit)."""
    with closing(engine.client()) as client:
        config = client.images.get(tag).attrs["Config"]
        entrypoint = config["Entrypoint"]
        status, out, err = run_output(client, tag, [*entrypoint[1:], *(cmd or config["Cmd"])],
                                      entrypoint=entrypoint[0], user=user)
        return status, (out + err).decode()


def test_image_runs_its_packages_offline_as_non_root(image: Image,
                                                     docker_engine: DockerEngine) -> None:
    status, out = _run(docker_engine, TAG)                  # CMD: the recipe's entrypoint
    assert (status, out.strip()) == (0, "demo ok")
    status, out = _run(docker_engine, TAG, "python", "-c",
                       "import alpha, beta, delta, gamma, sdistonly; import sys; "
                       "print(sys.prefix)")
    assert (status, out.strip()) == (0, "/opt/envbuild/demo"), out
    status, out = _run(docker_engine, TAG, "id", "-u")
    assert status == 0 and out.strip() != "0" and out.strip().isdigit(), out
    status, _ = _run(docker_engine, TAG, "sh", "-c", "exit 7")
    assert status == 7


def test_config_names_the_manifest_and_the_id_is_its_digest(image: Image,
                                                            docker_engine: DockerEngine) -> None:
    with closing(docker_engine.client()) as client:
        found = client.images.get(TAG)
        raw = client.images.get(TAG).attrs
    assert found.id == image.info["image_id"]
    labels = raw["Config"]["Labels"]
    assert labels["io.envbuild.manifest"] == image.info["manifest_digest"]
    assert labels["io.envbuild.env"] == "/opt/envbuild/demo"
    assert raw["Config"]["Entrypoint"] == ["/opt/envbuild/demo/bin/envbuild-guard"]
    assert raw["Created"].startswith("1980-01-01T00:00:00")
    status, out = _run(docker_engine, TAG, "cat",
                       "/opt/envbuild/demo/.envbuild/provenance.json")
    provenance = json.loads(out)
    assert provenance["built_utc"] == "1980-01-01T00:00:00Z"
    assert "host" not in provenance and "user" not in provenance


def test_tampered_container_refuses(image: Image, docker_engine: DockerEngine) -> None:
    site = "/opt/envbuild/demo/lib/python3.11/site-packages"
    with closing(docker_engine.client()) as client:
        container = client.containers.run(
            TAG, ["-c", f"chmod u+w {site} && echo 'import os' > {site}/zz-planted.pth"],
            entrypoint=["/bin/sh"], user="0", network_mode="none", detach=True)
        assert container.wait()["StatusCode"] == 0
        original = client.images.get(TAG).attrs["Config"]
        container.commit("localhost/demo", "tampered", changes=[
            f"ENTRYPOINT {json.dumps(original['Entrypoint'])}", f"USER {original['User']}",
            f"CMD {json.dumps(original['Cmd'])}"])
        container.remove(force=True)
    status, out = _run(docker_engine, "localhost/demo:tampered", "python", "-c", "print(1)")
    assert status == 125, out
    assert "added: lib/python3.11/site-packages/zz-planted.pth" in out
    proc = envbuild("verify", "docker://localhost/demo:tampered", env=image.env)
    assert proc.returncode == 1
    assert "added: lib/python3.11/site-packages/zz-planted.pth" in proc.stdout


def test_verify_and_run_through_docker_refs(image: Image) -> None:
    proc = envbuild("verify", f"docker://{TAG}", "--level", "full", "--expect",
                    str(image.info["manifest_digest"]), "--json", env=image.env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["level"] == "full"
    assert report["manifest_digest"] == image.info["manifest_digest"]
    proc = envbuild("run", f"docker://{TAG}", "--", "python", "-c",
                    "import sys; print('in', sys.prefix); sys.exit(3)", env=image.env)
    assert (proc.returncode, proc.stdout.strip()) == (3, "in /opt/envbuild/demo")
    other = "sha256:" + "0" * 64
    proc = envbuild("run", f"docker://{TAG}", "--expect", other, "--", "true", env=image.env)
    assert proc.returncode == 125 and "manifest" in proc.stderr
    proc = envbuild("verify", "docker://localhost/absent:1", env=image.env)
    assert proc.returncode == 2 and "docker://localhost/absent:1" in proc.stderr


def test_bad_input_is_refused_before_the_engine_works(image: Image, tmp_path: Path) -> None:
    proc = envbuild("image", image.recipe, "--tag", "localhost/x:1", "--base",
                    "localhost/absent:1", env=image.env)
    assert proc.returncode == 2 and "localhost/absent:1" in proc.stderr
    proc = envbuild("image", image.recipe, "--tag", "localhost/x:1",
                    env={**image.env, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert proc.returncode == 1 and "docker engine" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_base_without_python3_is_refused_naming_it(image: Image,
                                                     docker_engine: DockerEngine) -> None:
    """The probe runs the base's own python3; a base without one is bad input (exit 2)."""
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:
        member = tarfile.TarInfo("etc/os-release")
        text = b'ID=none\n'
        member.size = len(text)
        archive.addfile(member, io.BytesIO(text))
    with closing(docker_engine.client()) as client:
        client.api.import_image_from_data(data.getvalue(), repository="localhost/nopython",
                                          tag="1")
    proc = envbuild("image", image.recipe, "--tag", "localhost/x:2", "--base",
                    "localhost/nopython:1", env=image.env)
    assert proc.returncode == 2, proc.stderr
    assert "localhost/nopython:1" in proc.stderr and "python3" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture()
def second_engine(bookworm_image: str) -> Iterator[DockerEngine]:
    where = Path(tempfile.mkdtemp(prefix="ebd2-"))
    with start_engine(where) as engine:
        base_image(engine, "bookworm")
        yield engine


def test_same_lock_and_base_give_one_image_id_on_two_engines(
        image: Image, second_engine: DockerEngine, tmp_path: Path) -> None:
    """A second engine with its own data root, and a store of its own (the wheels fetched
    again): the same image ID, and pushed, the same digest."""
    from registryserver import start_registry, stop_registry

    registry = start_registry(tmp_path / "registry")
    try:
        pushed: list[str] = []
        for engine, store in ((second_engine, tmp_path / "store"), (None, image.store)):
            env = _image_env(engine, store) if engine else image.env
            tag = f"{registry.host}/demo:{len(pushed)}"
            proc = envbuild("image", image.recipe, "--tag", tag, "--push", "--json", env=env)
            assert proc.returncode == 0, proc.stderr
            info = json.loads(proc.stdout)
            assert info["image_id"] == image.info["image_id"]
            pushed.append(info["pushed_digest"])
    finally:
        stop_registry(registry)
    assert pushed[0] == pushed[1]       # compressed by each store anew: the same blobs
    assert os.path.isdir(tmp_path / "store" / "wheels")


def _big_wheels(where: Path) -> Path:
    """`bigpkg` 1.0 and 1.1, each over a MiB installed (a layer of its own), for find-links."""
    import random

    from pkgindex import write_wheel

    where.mkdir()
    for version in ("1.0", "1.1"):
        rng = random.Random(version)
        payload = "".join(rng.choice("0123456789abcdef") for _ in range(1_300_000))
        write_wheel(str(where), "bigpkg", version,
                    f"Metadata-Version: 2.1\nName: bigpkg\nVersion: {version}\n",
                    {"bigpkg/__init__.py": f"VERSION = {version!r}\n",
                     "bigpkg/data.txt": payload}, "")
    return where


def test_push_then_one_package_upgrade_sends_only_its_layer(
        image: Image, index: LocalIndex, tmp_path: Path) -> None:
    """The pushed digest is the registry's and the one computed; after upgrading one
    package, the re-push sends that package's layer, the manifest layer and the config."""
    from registryserver import start_registry, stop_registry

    wheels = _big_wheels(tmp_path / "wheels")
    registry = start_registry(tmp_path / "registry")
    try:
        tag = f"{registry.host}/demo-big:1"
        digests, jsons = [], []
        for version in ("1.0", "1.1"):
            recipe = write_recipe(tmp_path / "recipe", index, deps=["alpha", f"bigpkg=={version}"],
                                  name="big", extra=(
                                      '[image]\nbase = "localhost/debian-python:bookworm"\n'))
            text = recipe.read_text().replace("[index]\n", f'[index]\nfind-links = ["{wheels}"]\n')
            recipe.write_text(text)
            assert cli("lock", recipe).exit_code == 0
            proc = envbuild("image", recipe, "--tag", tag, "--push", "--json", env=image.env)
            assert proc.returncode == 0, proc.stderr
            info = json.loads(proc.stdout)
            jsons.append(info)
            raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                  f"docker://{tag}"], capture_output=True, check=True).stdout
            digests.append("sha256:" + hashlib.sha256(raw).hexdigest())
            assert info["pushed_digest"] == digests[-1]
            assert info["pushed"] == f"{tag.rsplit(':', 1)[0]}@{digests[-1]}"
        first, second = jsons
        changed = [d for d in second["diff_ids"] if d not in first["diff_ids"]]
        assert len(changed) == 2, (first["diff_ids"], second["diff_ids"])
        assert second["pushed_blobs"] == 3            # those two layers and the config
        assert second["pushed_bytes"] < first["pushed_bytes"] / 10
    finally:
        stop_registry(registry)


def test_a_base_with_another_python(image: Image, index: LocalIndex, tmp_path: Path,
                                    trixie_image: str, docker_engine: DockerEngine) -> None:
    """trixie's Python 3.13 while envbuild runs on 3.11: the lock is made for 3.13, the
    wheels fetched for the base's tags, the env built there by its own interpreter."""
    recipe = write_recipe(tmp_path, index, name="demo313", extra=(
        f'[image]\nbase = "{trixie_image}"\n'))
    proc = envbuild("lock", recipe, "--python", "3.13", env=image.env)
    assert proc.returncode == 0, proc.stderr
    assert "# python: 3.13 (cpython)" in recipe.with_suffix(".lock").read_text()
    tag = "localhost/demo313:1"
    proc = envbuild("image", recipe, "--tag", tag, "--json", env=image.env)
    assert proc.returncode == 0, proc.stderr
    status, out = _run(docker_engine, tag, "python", "-c",
                       "import sys, alpha, sdistonly; print(sys.version_info[:2], sys.prefix)")
    assert (status, out.strip()) == (0, "(3, 13) /opt/envbuild/demo313"), out
    proc = envbuild("verify", f"docker://{tag}", "--level", "full", env=image.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = envbuild("image", image.recipe, "--tag", "localhost/x:1", "--base", trixie_image,
                    env=image.env)                      # a 3.11 lock on a 3.13 base
    assert proc.returncode == 2 and "locked for Python 3.11" in proc.stderr, proc.stderr


_NEEDS_CC_BACKEND = '''\
import os, subprocess

def _metadata():
    return "Metadata-Version: 2.1\\nName: needscc\\nVersion: 1.0\\n"

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    dist_info = os.path.join(metadata_directory, "needscc-1.0.dist-info")
    os.makedirs(dist_info)
    with open(os.path.join(dist_info, "METADATA"), "w") as fh:
        fh.write(_metadata())
    return "needscc-1.0.dist-info"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    subprocess.run(["cc", "--version"], check=True)   # a C extension would need it
    raise RuntimeError("not reached in a base without a compiler")
'''


def test_an_sdist_the_base_cannot_build_names_the_package(
        image: Image, index: LocalIndex, tmp_path: Path) -> None:
    from pkgindex import write_sdist

    links = tmp_path / "links"
    links.mkdir()
    write_sdist(str(links), "needscc", "1.0", {
        "PKG-INFO": "Metadata-Version: 2.1\nName: needscc\nVersion: 1.0\n",
        "backend.py": _NEEDS_CC_BACKEND,
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                          'backend-path = ["."]\n'})
    recipe = write_recipe(tmp_path, index, deps=["alpha", "needscc"], name="needscc",
                          extra='[image]\nbase = "localhost/debian-python:bookworm"\n')
    recipe.write_text(recipe.read_text().replace("[index]\n",
                                                 f'[index]\nfind-links = ["{links}"]\n'))
    assert cli("lock", recipe).exit_code == 0
    proc = envbuild("image", recipe, "--tag", "localhost/needscc:1", env=image.env)
    assert proc.returncode == 1, proc.stderr
    assert "needscc-1.0.tar.gz: expected to build a wheel" in proc.stderr, proc.stderr
    assert "'cc'" in proc.stderr, proc.stderr
    assert "Traceback (most recent call last)" not in proc.stderr.split("found pip")[0]


def test_the_same_inputs_reuse_the_env_layers_checked(image: Image) -> None:
    """A second build of the same lock and base reuses the env's layers kept in the store
    (the builder stage does not run), and gives the same image; a damaged kept layer is
    noticed and the layers are built again; --force builds them again anyway."""
    again = "localhost/demo:again"
    proc = envbuild("image", image.recipe, "--tag", again, "--json", env=image.env)
    assert proc.returncode == 0, proc.stderr
    assert "reusing the env's layers" in proc.stderr
    assert json.loads(proc.stdout)["image_id"] == image.info["image_id"]
    [kept] = [d for d in (image.store / "images").iterdir()
              if "sha256:" + hashlib.sha256((d / "envbuild-manifest.json").read_bytes())
              .hexdigest() == image.info["manifest_digest"]]
    victim = next(p for p in kept.glob("*.tar"))
    victim.write_bytes(victim.read_bytes()[:-1024] + b"\0" * 1024 + b"x")
    for extra in ((), ("--force",)):
        proc = envbuild("image", image.recipe, "--tag", again, *extra, "--json",
                        env=image.env)
        assert proc.returncode == 0, proc.stderr
        assert "reusing the env's layers" not in proc.stderr
        assert json.loads(proc.stdout)["image_id"] == image.info["image_id"]


def test_diff_and_export_read_the_env_inside_an_image(image: Image, tmp_path: Path) -> None:
    """`diff` and `export` take `docker://IMAGE`: the manifest read inside the image."""
    for files in ((), ("--files",)):                   # --files reads the sidecar, 100s of kB
        proc = envbuild("diff", f"docker://{TAG}", f"docker://{TAG}", *files, env=image.env)
        assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    here = cli("build", image.recipe, "--store", tmp_path / "store", "--json")
    assert here.exit_code == 0, here.stderr
    local = json.loads(here.stdout)["path"]
    proc = envbuild("diff", f"docker://{TAG}", local, "--json", env=image.env)
    assert proc.returncode == 1, proc.stderr
    kinds = {d["kind"] for d in json.loads(proc.stdout)}
    assert "interpreter" in kinds                       # the base's Python against the host's
    assert not kinds & {"version", "added", "missing"}, proc.stdout   # the same distributions
    proc = envbuild("export", f"docker://{TAG}", "--format", "requirements", env=image.env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(Path(local, "envbuild-manifest.json").read_text())
    pins = sorted(line.split(" ")[0] for line in proc.stdout.splitlines()
                  if "==" in line and not line.startswith("#"))
    assert pins == sorted(f"{d['name']}=={d['version']}" for d in manifest["distributions"])
    out = tmp_path / "pylock.toml"
    proc = envbuild("export", f"docker://{TAG}", "--format", "pylock", "-o", out,
                    env=image.env)
    assert proc.returncode == 0, proc.stderr
    import tomllib

    lock = tomllib.loads(out.read_text())
    assert sorted(p["name"] for p in lock["packages"]) == sorted(
        d["name"] for d in manifest["distributions"])
    assert lock["requires-python"] and "3.11" in str(lock.get("environments", ""))
