"""The loop-mounted XFS of xfsmount.py clones files: FICLONE gives a copy that shares the
source's blocks until either is written, while across file systems, and on a tmp dir whose
file system cannot clone, the same call fails."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest
from xfsmount import FICLONE, fs_type

NO_CLONE = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL}
# file systems without FICLONE (xfs and btrfs may clone, depending on how they were made)
CANNOT_CLONE = {"ext2", "ext3", "ext4", "tmpfs", "overlay", "vfat", "fuse.sshfs", "nfs", "nfs4"}
MIB = 1 << 20


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def clone(src: Path, dst: Path) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        os.fsync(d.fileno())


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def test_the_dir_is_on_xfs(xfs_dir: Path, xfs_tmp_path: Path) -> None:
    assert fs_type(xfs_dir) == "xfs"
    assert xfs_tmp_path.parent == xfs_dir and not any(xfs_tmp_path.iterdir())


def test_a_clone_shares_blocks_until_written(xfs_tmp_path: Path) -> None:
    data = os.urandom(32 * MIB)
    src, dst = xfs_tmp_path / "src", xfs_tmp_path / "dst"
    write(src, data)
    before = free_bytes(xfs_tmp_path)
    clone(src, dst)
    # a copy would take 32 MiB; the clone takes at most a little metadata
    assert before - free_bytes(xfs_tmp_path) < MIB
    assert dst.read_bytes() == data
    assert os.stat(src).st_ino != os.stat(dst).st_ino and os.stat(dst).st_nlink == 1

    with open(dst, "r+b") as fh:
        fh.write(b"changed in the clone")
    assert src.read_bytes() == data
    with open(src, "r+b") as fh:
        fh.seek(MIB)
        fh.write(b"changed in the source")
    clone_now = dst.read_bytes()
    assert clone_now[:20] == b"changed in the clone" and clone_now[20:] == data[20:]


def test_clone_fails_across_file_systems_and_on_tmp(xfs_tmp_path: Path, tmp_path: Path
                                                    ) -> None:
    on_tmp = tmp_path / "src"
    write(on_tmp, b"x" * 65536)
    with pytest.raises(OSError) as across:
        clone(on_tmp, xfs_tmp_path / "dst")
    assert across.value.errno in NO_CLONE, across.value
    assert not (xfs_tmp_path / "dst").read_bytes()

    kind = fs_type(tmp_path)
    if kind in CANNOT_CLONE:
        with pytest.raises(OSError) as within:
            clone(on_tmp, tmp_path / "dst")
        assert within.value.errno in NO_CLONE, (kind, within.value)
