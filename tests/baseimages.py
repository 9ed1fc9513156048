"""Debian base images with Python (bookworm: 3.11, trixie: 3.13) for the image tests.

Each is one layer: a root file system made by ``debootstrap --variant=minbase
--include=python3,python3-venv SUITE`` from this machine's Debian mirror (read from APT's
sources, as for rootfs.py's bullseye), with APT's caches and lists, logs and the host's
resolv.conf, hostname and machine-id emptied, packed by ``tar --sort=name
--numeric-owner``. It is kept in the test cache (rootfs.py's: ``$ENVBUILD_TEST_CACHE``,
else ``/var/cache/envbuild-tests``) as a ``docker save`` archive whose image config this
module writes itself (fixed ``created``, ``Env`` and ``Cmd`` below), made in a temporary dir
and renamed into place under the cache lock. Loading that archive (``images.load``) into
any engine gives the same image ID, so two engines can be compared image for image.

bookworm's debootstrap bootstraps trixie through its ``sid`` script; trixie's Release is
signed by the bookworm archive key too, and bookworm's ``debian-archive-keyring`` (since
2023.3+deb12u1) carries trixie's own keys, which tests/run installs when missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from rootfs import (
    DEBOOTSTRAP_ARGS,
    RootfsError,
    cache_dir,
    cache_lock,
    check_run,
    clear_leftovers,
    debian_mirror,
    debootstrap,
    digest,
    mounts_under,
    remove_tree,
    umount,
)

REPOSITORY = "localhost/debian-python"
PYTHONS = {"bookworm": "3.11", "trixie": "3.13"}   # each suite's python3
IMAGE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG=C.UTF-8"]
IMAGE_CMD = ["/bin/bash"]
CREATED = "1970-01-01T00:00:00Z"     # fixed: the image ID depends on the layer alone
# Emptied: what debootstrap leaves from this host or from its own run.
EMPTIED_DIRS = ("var/cache/apt", "var/lib/apt/lists", "var/log")
TRUNCATED = ("etc/resolv.conf", "etc/hostname", "etc/machine-id")
TAR_ARGS = ("--sort=name", "--numeric-owner", "--format=gnu")
# Bump when how the archive is made changes, so the cache makes a new entry.
RECIPE_VERSION = 1


def image_tag(suite: str) -> str:
    """The tag a suite's base image carries, e.g. ``localhost/debian-python:bookworm``."""
    return f"{REPOSITORY}:{suite}"


def debian_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def archive_path(suite: str) -> Path:
    recipe = (suite, DEBOOTSTRAP_ARGS, EMPTIED_DIRS, TRUNCATED, TAR_ARGS, IMAGE_ENV,
              IMAGE_CMD, CREATED, debian_arch(), RECIPE_VERSION)
    return cache_dir() / f"debian-python-{suite}-{digest(*recipe)}.docker.tar"


def cached_archive(suite: str) -> Path:
    """The suite's base image as a ``docker save`` archive, made now if the cache has none."""
    if suite not in PYTHONS:
        raise RootfsError(f"base image suite: expected one of {sorted(PYTHONS)}, found {suite!r}")
    final = archive_path(suite)
    with cache_lock(final.parent) as lock:
        if final.is_file():
            return final
        clear_leftovers(final.parent)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{suite}-", dir=final.parent))
        try:
            layer = _make_layer(suite, work, lock)
            archive = work / "image.tar"
            _write_archive(layer, archive, suite)
            with open(archive, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(archive, final)
        finally:
            for mount in mounts_under(work):
                umount(mount)
            remove_tree(work)
        return final


def _make_layer(suite: str, work: Path, lock: int) -> Path:
    """The debootstrapped, cleaned rootfs packed as one layer tarball."""
    target = work / "root"
    debootstrap(suite, target, debian_mirror(), lock)
    for mount in mounts_under(target):    # debootstrap unmounts its own; be sure
        umount(mount)
    for name in EMPTIED_DIRS:
        _empty_dir(target / name)
    for name in TRUNCATED:
        path = target / name
        if path.is_file() and not path.is_symlink():
            path.write_bytes(b"")
    layer = work / "layer.tar"
    check_run(["tar", *TAR_ARGS, "-C", str(target), "-cf", str(layer), "."],
              f"tar of the {suite} rootfs", 300, keep=lock)
    remove_tree(target)
    return layer


def _empty_dir(path: Path) -> None:
    """Remove what a dir holds, keeping its subdirs (APT and dpkg expect them) empty."""
    if not path.is_dir():
        return
    for entry in sorted(path.iterdir(), reverse=True):
        if entry.is_dir() and not entry.is_symlink():
            _empty_dir(entry)
        else:
            entry.unlink()


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def image_config(diff_id: str, suite: str) -> bytes:
    """The image config, serialized once: its sha256 is the image ID."""
    config = {
        "architecture": debian_arch(),
        "os": "linux",
        "created": CREATED,
        "config": {"Env": IMAGE_ENV, "Cmd": IMAGE_CMD},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": CREATED, "created_by": " ".join(
            ["debootstrap", *DEBOOTSTRAP_ARGS, suite])}],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _write_archive(layer: Path, out: Path, suite: str) -> None:
    diff_id = _sha256(layer)
    config = image_config(diff_id, suite)
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    layer_name = f"{diff_id}/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [image_tag(suite)],
                            "Layers": [layer_name]}]).encode()
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("manifest.json", manifest), (config_name, config)):
            _add_bytes(tar, name, data)
        info = tarfile.TarInfo(diff_id)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        info = tarfile.TarInfo(layer_name)
        info.size, info.mode = layer.stat().st_size, 0o644
        with open(layer, "rb") as fh:
            tar.addfile(info, fh)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def archive_image_id(archive: Path) -> str:
    """``sha256:...`` of the config inside an archive: the ID an engine gives it on load."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (entry,) = json.load(member)
    return "sha256:" + str(entry["Config"]).removesuffix(".json")
