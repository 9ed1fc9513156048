"""Atomic writes and directory publishing: the only code that puts results on disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish_dir(tmp_dir: Path, final: Path) -> bool:
    """Rename a finished directory into place; False if another process got there first."""
    try:
        os.rename(tmp_dir, final)
    except OSError:
        if final.is_dir():
            return False
        raise
    return True


def make_writable(root: Path) -> None:
    """Give the owner write permission on a read-only tree so it can be removed."""
    if root.is_symlink() or not root.exists():
        return
    os.chmod(root, stat.S_IMODE(os.lstat(root).st_mode) | stat.S_IRWXU)
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | stat.S_IRWXU)


def remove_tree(root: Path) -> None:
    """Remove a tree, read-only ones included; a missing tree is not an error."""
    make_writable(root)
    shutil.rmtree(root, ignore_errors=True)



def atomic_write_from(directory: Path, fill: Callable[[BinaryIO], str],
                      mode: int = 0o644) -> Path:
    """A new file in `directory` written by `fill`, which returns the file's name (it may
    depend on what was written): published by `os.replace` once synced, removed on failure."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".new-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            name = fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        final = directory / name
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return final


def shares_by_size(items: list[T], size: Callable[[T], int], count: int) -> list[list[T]]:
    """`items` in up to `count` shares (none empty) of about equal total size, the biggest
    items first: for workers that take one share each."""
    sized = sorted(((size(item), item) for item in items), key=lambda pair: pair[0],
                   reverse=True)
    shares: list[list[T]] = [[] for _ in range(min(count, len(sized)))]
    totals = [0] * len(shares)
    for bytes_, item in sized:
        lightest = totals.index(min(totals))
        shares[lightest].append(item)
        totals[lightest] += bytes_
    return shares
