"""The bytes of an image, written by envbuild: the base's layers verbatim, the env in a few
deterministic layers, and a config serialized here, so the image ID (the config's sha256)
is known before the engine sees it and is the same on any engine with the classic store.

Layers: entries sorted, parent dirs explicit, mtime fixed, uid/gid 0, no names, no xattrs.
The env is split by distribution (RECORD says which files are whose; a pyc follows its
source): each of the largest ones in a layer of its own, the rest with the venv's own
files in one, and the manifest, sidecars and guard in a small last one, so upgrading one
package changes one of the distribution layers and the last one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from .errors import BuildError
from .hashing import file_digest
from .layout import GUARD, LAUNCH_DIR, MANIFEST, META

MAX_DIST_LAYERS = 7          # + the shared layer + the launch layer: 9 at most
MIN_OWN_LAYER = 1 << 20      # a distribution smaller than this shares a layer
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Layer:
    diff_id: str             # sha256: of the uncompressed tar
    path: Path
    created_by: str


@dataclass(frozen=True)
class BaseImage:
    config: dict[str, Any]
    layers: list[Layer]


@dataclass(frozen=True)
class ImageConfig:
    name: str
    env_dir: str
    epoch: int
    manifest_digest: str
    user: str
    cmd: list[str]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WrittenConfig:
    image_id: str
    path: Path
    diff_ids: tuple[str, ...]
    layers: tuple[Path, ...]


def read_saved(saved: Path, parts: Path) -> BaseImage:
    """The base image from a `docker save` tarball: its config (kept as `config.json`), and
    its layers copied into `parts`, each checked against the config's diff_ids."""
    with tarfile.open(saved) as tf:
        index = json.load(_member(tf, "manifest.json"))[0]
        raw = _member(tf, index["Config"]).read()
        (parts / "config.json").write_bytes(raw)
        config = json.loads(raw)
        diff_ids = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(index["Layers"]):
            raise BuildError(f"{saved}: expected {len(diff_ids)} layers, found "
                             f"{len(index['Layers'])}")
        layers = []
        for name, diff_id in zip(index["Layers"], diff_ids):
            out = parts / f"{diff_id[7:]}.tar"
            digest = _copy(_member(tf, name), out)
            if digest != diff_id:
                raise BuildError(f"base layer {name}: expected {diff_id}, found {digest}")
            layers.append(Layer(diff_id, out, "base"))
    return BaseImage(config, layers)


def read_base(parts: Path) -> BaseImage:
    """A base image `read_saved` kept in `parts` before."""
    config = json.loads((parts / "config.json").read_bytes())
    return BaseImage(config, [Layer(d, parts / f"{d[7:]}.tar", "base")
                              for d in config["rootfs"]["diff_ids"]])


def _member(tf: tarfile.TarFile, name: str) -> Any:
    fh = tf.extractfile(name)
    if fh is None:
        raise BuildError(f"{tf.name!r}: expected a file {name}, found none")
    return fh


def _copy(src: Any, out: Path) -> str:
    h = hashlib.sha256()
    with open(out, "wb") as fh:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            fh.write(chunk)
    return "sha256:" + h.hexdigest()


def _owners(tf: tarfile.TarFile, members: list[tarfile.TarInfo]) -> dict[str, str]:
    """Env-relative path -> distribution, from every RECORD (pycs follow their source)."""
    owners: dict[str, str] = {}
    for m in members:
        rel = _rel(m.name)
        if not rel.endswith(".dist-info/RECORD") or "/site-packages/" not in rel:
            continue
        distinfo = os.path.dirname(rel)
        site = os.path.dirname(distinfo)
        dist = canonicalize_name(os.path.basename(distinfo).split("-")[0])
        text = _member(tf, m.name).read().decode("utf-8")
        for row in csv.reader(io.StringIO(text)):
            if row:
                owners[os.path.normpath(os.path.join(site, row[0]))] = dist
    for m in members:
        rel = _rel(m.name)
        if rel.endswith(".pyc") and "/__pycache__/" in rel:
            folder, pyc = rel.rsplit("/__pycache__/", 1)
            source = f"{folder}/{pyc.split('.')[0]}.py"
            if source in owners:
                owners[rel] = owners[source]
    return owners


def _rel(name: str) -> str:
    """A member's path inside the env (the archive's first component is the env's dir)."""
    return name.partition("/")[2]


def _group(rel: str, owners: dict[str, str]) -> str:
    if rel in (MANIFEST, GUARD) or rel.startswith((META + "/", LAUNCH_DIR + "/")) \
            or rel == META or rel == LAUNCH_DIR or rel.endswith("/000-envbuild-hook.pth"):
        return "\0launch"
    return owners.get(rel, "")


def env_layers(env_tar: Path, env_dir: str, parts: Path, epoch: int
               ) -> tuple[list[Layer], bytes]:
    """The env (an archive of its dir, as the engine exports it) in deterministic layers
    under `env_dir`; and the env's manifest bytes."""
    with tarfile.open(env_tar) as tf:
        members = tf.getmembers()
        owners = _owners(tf, members)
        by_rel = {_rel(m.name): m for m in members}
        groups: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        for rel, m in by_rel.items():
            if rel and not m.isdir():
                g = _group(rel, owners)
                groups.setdefault(g, []).append(rel)
                sizes[g] = sizes.get(g, 0) + m.size
        parents = {rel.rpartition("/")[0] for rel in by_rel if rel}
        empty_dirs = [rel for rel, m in by_rel.items()
                      if rel and m.isdir() and rel not in parents]
        big = [g for g in sizes if g not in ("", "\0launch") and sizes[g] >= MIN_OWN_LAYER]
        own = sorted(sorted(big, key=lambda g: (-sizes[g], g))[:MAX_DIST_LAYERS])
        shared = [rel for g, rels in groups.items() if g not in own and g != "\0launch"
                  for rel in rels] + empty_dirs
        plan = [("env: venv and small distributions", shared)]
        plan += [(f"env: {g}", groups[g]) for g in own]
        plan += [("env: manifest, sidecars and guard", groups.get("\0launch", []))]
        manifest = _member(tf, by_rel[MANIFEST].name).read()
        layers = [_write_layer(tf, by_rel, rels, env_dir, epoch, parts / f".layer-{n}.tar",
                               why) for n, (why, rels) in enumerate(plan)]
    return layers, manifest


def _write_layer(tf: tarfile.TarFile, by_rel: dict[str, tarfile.TarInfo], rels: list[str],
                 env_dir: str, epoch: int, tmp: Path, why: str) -> Layer:
    names: dict[str, tarfile.TarInfo | None] = {}
    top = env_dir.strip("/").split("/")
    for i in range(1, len(top)):
        names["/".join(top[:i])] = None          # /opt, /opt/envbuild: plain dirs
    if rels:
        names["/".join(top)] = by_rel[""]
    for rel in rels:
        parts_of = rel.split("/")
        for i in range(1, len(parts_of)):
            names["/".join([*top, *parts_of[:i]])] = by_rel["/".join(parts_of[:i])]
        names["/".join([*top, rel])] = by_rel[rel]
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        for name in sorted(names, key=lambda n: n.split("/")):
            _add(out, tf, name, names[name], epoch)
    digest = file_digest(str(tmp))
    final = tmp.with_name(f"{digest[7:]}.tar")
    os.replace(tmp, final)
    return Layer(digest, final, why)


def _add(out: tarfile.TarFile, tf: tarfile.TarFile, name: str, src: tarfile.TarInfo | None,
         epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
    if src is None or src.isdir():
        info.type, info.mode = tarfile.DIRTYPE, (src.mode & 0o7777) if src else 0o755
        out.addfile(info)
    elif src.issym():
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, src.linkname
        out.addfile(info)
    elif src.isfile() or src.islnk():
        data = tf.extractfile(src)
        info.type, info.mode = tarfile.REGTYPE, src.mode & 0o7777
        info.size = src.size if src.isfile() else tf.getmember(src.linkname).size
        out.addfile(info, data)
    else:
        raise BuildError(f"{name}: expected a file, dir or symlink in the env, found "
                         f"type {src.type!r}")


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def write_config(parts: Path, base: BaseImage, layers: list[Layer], spec: ImageConfig
                 ) -> WrittenConfig:
    """The image config, serialized canonically; its sha256 is the image ID."""
    base_cfg = base.config.get("config") or {}
    env = [e for e in base_cfg.get("Env") or [] if not e.startswith("PATH=")]
    base_path = next((e[5:] for e in base_cfg.get("Env") or [] if e.startswith("PATH=")),
                     "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    labels = {**(base_cfg.get("Labels") or {}), **spec.labels,
              "io.envbuild.manifest": spec.manifest_digest, "io.envbuild.env": spec.env_dir,
              "org.opencontainers.image.created": iso(spec.epoch),
              "org.opencontainers.image.title": spec.name}
    all_layers = [*base.layers, *layers]
    config = {
        "architecture": base.config.get("architecture", "amd64"),
        "os": base.config.get("os", "linux"),
        "created": iso(spec.epoch),
        "config": {
            "User": spec.user,
            # run records in the container's /tmp: mount a volume and point
            # ENVBUILD_RUNLOG there to keep them
            "Env": [f"PATH={spec.env_dir}/bin:{base_path}", *env,
                    "ENVBUILD_RUNLOG=/tmp/envbuild-runs.jsonl"],
            "Entrypoint": [f"{spec.env_dir}/bin/envbuild-guard"],
            "Cmd": spec.cmd,
            "WorkingDir": base_cfg.get("WorkingDir") or "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in all_layers]},
        "history": [*(base.config.get("history") or []),
                    *({"created": iso(spec.epoch), "created_by": layer.created_by}
                      for layer in layers)],
    }
    data = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    image_id = "sha256:" + hashlib.sha256(data).hexdigest()
    path = parts / f"{image_id[7:]}.json"
    path.write_bytes(data)
    return WrittenConfig(image_id, path, tuple(layer.diff_id for layer in all_layers),
                         tuple(layer.path for layer in all_layers))


def write_loadable(parts: Path, config: WrittenConfig, out: Path, tag: str,
                   present: tuple[str, ...] = ()) -> Path:
    """A `docker save`-format tarball of the image, for `images.load`. The layers of
    `present` (the first ones, which the engine has: the base's) are named but left out:
    the engine takes a layer it has by its chain and never opens the file."""
    index = [{"Config": config.path.name, "RepoTags": [tag],
              "Layers": [f"{d[7:]}/layer.tar" for d in config.diff_ids]}]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(config.path, arcname=config.path.name)
        done: set[str] = set(config.diff_ids[:len(present)]) \
            if config.diff_ids[:len(present)] == present else set()
        for diff_id, path in zip(config.diff_ids, config.layers):
            if diff_id not in done:
                done.add(diff_id)
                tf.add(path, arcname=f"{diff_id[7:]}/layer.tar")
        data = json.dumps(index).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return out
