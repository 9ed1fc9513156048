"""A directory on a loop-mounted XFS made with ``-m reflink=1``: a file system where files can
be cloned (FICLONE) and hard-linked, for the tests of linking an env's files from a store.

``xfs_dir`` (session scope) makes a sparse file of ``SIZE`` in the session's tmp dir, runs
``mkfs.xfs -m reflink=1`` on it, attaches it to a free loop device with ``losetup --find
--show`` (the device it prints is the one this session owns) and mounts that device with
``mount -t xfs``. At the end it unmounts that mountpoint, detaches that device (after
checking that it still backs this session's file) and removes the file: only what it
started, never a device or mount found by name. It needs root, the kernel's xfs and loop
drivers, util-linux's ``losetup`` and ``mount``, and Debian's xfsprogs (tests/run installs
it); a missing one fails the test that asked for it, naming it.

``xfs_tmp_path`` (function scope) is a new empty dir on that file system for one test, as
``tmp_path`` is on tmp. Both are registered in conftest.py, so a test takes them by name::

    def test_clone(xfs_tmp_path: Path) -> None: ...
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from itertools import count
from pathlib import Path

import pytest
from daemons import DaemonError, need

SIZE = "300M"          # sparse: mkfs writes a few MiB of it
TIMEOUT = 120.0
FICLONE = 0x40049409   # _IOW(0x94, 9, int): clone the whole of the source fd into the target


class XfsError(Exception):
    """The XFS could not be made, mounted or taken down; the message says why."""


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise XfsError(f"{what}: `{' '.join(argv)}` exited {proc.returncode}: "
                       f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
    return proc.stdout


def fs_type(path: Path) -> str:
    """The type of the file system `path` is on (its mount in /proc/self/mountinfo)."""
    target = os.path.realpath(path)
    best, kind = "", ""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fields[fields.index("-") + 1]
    return kind


def _detach(device: str, image: Path) -> None:
    """Detach `device` if it still backs `image` (so never someone else's device)."""
    backing = subprocess.run(["losetup", "--noheadings", "--output", "BACK-FILE", device],
                             capture_output=True, text=True, timeout=TIMEOUT).stdout.strip()
    if backing and os.path.realpath(backing) == os.path.realpath(image):
        _run(["losetup", "--detach", device], f"detaching {device}")


def _unmount(mountpoint: Path) -> None:
    try:
        _run(["umount", str(mountpoint)], f"unmounting {mountpoint}")
    except XfsError:   # busy: detach it from the tree now, the kernel frees it when unused
        _run(["umount", "--lazy", str(mountpoint)], f"unmounting {mountpoint} lazily")
        raise


def mount_xfs(image: Path, mountpoint: Path, stack: ExitStack) -> str:
    """Make, attach and mount the XFS; each step's undo is pushed on `stack`. Its device."""
    for program, package in (("mkfs.xfs", "xfsprogs"), ("losetup", "mount"),
                             ("mount", "mount"), ("umount", "mount")):
        need(program, package)
    _run(["truncate", "--size", SIZE, str(image)], "making the sparse file")
    stack.callback(image.unlink, missing_ok=True)
    _run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], "mkfs.xfs")
    device = _run(["losetup", "--find", "--show", str(image)],
                  "attaching a loop device (root and the loop driver are needed)").strip()
    stack.callback(_detach, device, image)
    mountpoint.mkdir()
    _run(["mount", "-t", "xfs", device, str(mountpoint)], f"mounting {device}")
    stack.callback(_unmount, mountpoint)
    if fs_type(mountpoint) != "xfs":
        raise XfsError(f"{mountpoint}: expected an xfs mount, found {fs_type(mountpoint)!r}")
    return device


@pytest.fixture(scope="session", name="xfs_dir")
def xfs_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The root of a loop-mounted XFS with reflink, for the session."""
    base = tmp_path_factory.mktemp("xfs")
    with ExitStack() as stack:
        try:
            mount_xfs(base / "xfs.img", base / "mnt", stack)
        except (XfsError, DaemonError, OSError, subprocess.SubprocessError) as exc:
            stack.close()
            pytest.fail(f"cannot make the loop-mounted XFS: {exc}", pytrace=False)
        yield base / "mnt"


_fresh = count()


@pytest.fixture(name="xfs_tmp_path")
def xfs_tmp_path_fixture(xfs_dir: Path) -> Path:
    """A new empty dir on the session's XFS."""
    path = xfs_dir / f"t{next(_fresh)}"
    path.mkdir()
    return path
