"""One packed archive per staged version: a pax tar with sorted entries, a fixed mtime,
uid/gid 0 and no names, so the same env gives the same bytes; and its safe unpacking."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import BinaryIO

from .errors import EnvbuildError
from .fsutil import atomic_write_from
from .hashing import file_digest

FIXED_EPOCH = 315532800          # 1980-01-01


def pack(src: Path, directory: Path, name: str, epoch: int = FIXED_EPOCH) -> str:
    """`directory/name`: the tree at `src` under its top dir `name` minus `.tar`; returns
    the archive's sha256 (written beside it as `name.sha256`)."""
    top = name[:-len(".tar")] if name.endswith(".tar") else name

    def fill(fh: BinaryIO) -> str:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for rel in _walk(src):
                _add(tf, src, rel, f"{top}/{rel}" if rel else top, epoch)
        return name

    path = atomic_write_from(directory, fill, mode=0o444)
    digest = file_sha256(path)
    def fill_digest(fh: BinaryIO) -> str:
        fh.write(f"{digest}\n".encode())
        return f"{name}.sha256"

    atomic_write_from(directory, fill_digest, mode=0o444)
    return digest


def _walk(root: Path) -> list[str]:
    """Every path under `root`, relative, parents before children, siblings sorted."""
    out = [""]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel + "/"
        out += [prefix + n for n in sorted(filenames)]
        out += [prefix + d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
    return sorted(out, key=lambda p: p.split("/") if p else [])


def _add(tf: tarfile.TarFile, root: Path, rel: str, arcname: str, epoch: int) -> None:
    path = root / rel if rel else root
    st = os.lstat(path)
    info = tarfile.TarInfo(arcname)
    info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
    info.mode = st.st_mode & 0o7777
    if os.path.islink(path):
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
        tf.addfile(info)
    elif path.is_dir():
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
    else:
        info.size = st.st_size
        with open(path, "rb") as fh:
            tf.addfile(info, fh)


def file_sha256(path: Path) -> str:
    return file_digest(str(path))


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack into `dest` (which must exist); every member must stay inside it and be a
    file, dir or symlink. Returns the archive's top dir inside `dest`."""
    tops = set()
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            parts = m.name.split("/")
            if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()
                                                                or m.issym()):
                raise EnvbuildError(f"{archive}: expected files, dirs and symlinks inside "
                                    f"it, found {m.name!r}")
            tops.add(parts[0])
        if len(tops) != 1:
            raise EnvbuildError(f"{archive}: expected one top dir, found {sorted(tops)}")
        if hasattr(tarfile, "tar_filter"):
            tf.extractall(dest, members=members, filter="tar")
        else:  # pragma: no cover - Pythons before the extraction filters: checked above
            tf.extractall(dest, members=members)
    return dest / tops.pop()
