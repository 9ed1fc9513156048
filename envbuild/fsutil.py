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


# ext2/3/4's "top of directory hierarchies" flag (`chattr +T`), through FS_IOC_GETFLAGS and
# FS_IOC_SETFLAGS (which pass an int, whatever their names say)
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def spread_below(directory: str) -> None:
    """Tell the file system that each dir made in `directory` (one of the store's where
    envs, and trees and venvs before they are renamed into place, are made) tops a
    hierarchy of its own, where it takes the hint: ext2/3/4 (`chattr +T`). Its allocator
    then starts each such dir in a block group of its own choosing, where it would
    otherwise put it beside `directory`, among the inodes of what was removed there before.
    Without a journal, ext4 passes over each inode freed in the last minute or more, at a
    cost for each, so a build after a removal of thousands of files spent most of its time
    finding inodes. Elsewhere, or if `directory` is not this user's, nothing happens."""
    import fcntl
    import struct

    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\0" * 4))[0]
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_TOPDIR_FL))
    except OSError:
        pass
    finally:
        os.close(fd)


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
