"""A staged version on node-local disk: unpacked once per node from its archive (one
sequential read of the shared disk), verified, renamed into place; every later launch on
that node runs from local disk and touches the shared root only to resolve the pointer."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import EnvbuildError
from .fsutil import remove_tree
from .hashing import file_digest
from .layout import MANIFEST, VERSIONS

_CHUNK = 1 << 20
JITTER_SECONDS = 0.5       # spread the first reads of many nodes starting at once
ESTALE_TRIES = 3


def materialize(root: str, version: str, cache: str, max_readers: int = 0) -> str:
    """`cache/<version>`, unpacked from `root/.envs/<version>.tar` (or from a copy of it
    already at `cache/<version>.tar`, as `sbcast` leaves it) if not there yet."""
    final = os.path.join(cache, version)
    if os.path.isfile(os.path.join(final, MANIFEST)):
        return final
    os.makedirs(cache, mode=0o700, exist_ok=True)
    with open(os.path.join(cache, f".{version}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # node-local disk: flock is sound here
        if os.path.isfile(os.path.join(final, MANIFEST)):
            return final
        for left in Path(cache).glob(f".tmp-{version}-*"):
            remove_tree(left)                 # a materialization killed on this node
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=cache))
        try:
            archive = _local_archive(root, version, cache, work, max_readers)
            from .archive import unpack
            from .verify import verify

            unpacked = unpack(archive, work)
            report = verify(str(unpacked), level="files", contract=False)
            if not report.ok:
                raise EnvbuildError(f"{archive}: unpacked, it differs from its manifest: "
                                    + "; ".join(d.line() for d in report.differences[:5]))
            os.rename(unpacked, final)
        finally:
            remove_tree(work)
    return final


def _local_archive(root: str, version: str, cache: str, work: Path, max_readers: int) -> Path:
    """The version's archive on local disk, its sha256 checked against the one published
    beside the shared archive."""
    shared = os.path.join(root, VERSIONS, version + ".tar")
    expected = _read_retrying(shared + ".sha256").decode().strip()
    local = Path(cache) / (version + ".tar")
    if local.is_file() and file_digest(str(local)) == expected:
        return local                          # shipped by `stage fetch --bcast`
    time.sleep(random.uniform(0, JITTER_SECONDS))
    copy = work / (version + ".tar")
    for attempt in range(ESTALE_TRIES):
        try:
            with _reader_slot(root, max_readers):
                got = _copy_hashing(shared, copy)
            break
        except OSError as exc:
            if exc.errno != errno.ESTALE or attempt == ESTALE_TRIES - 1:
                raise
    if got != expected:
        raise EnvbuildError(f"{shared}: expected sha256 {expected} (its .sha256), found "
                            f"{got}; publish the version again")
    return copy


def _copy_hashing(src: str, dst: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
    return "sha256:" + h.hexdigest()


def _read_retrying(path: str) -> bytes:
    for attempt in range(ESTALE_TRIES):
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            if exc.errno != errno.ESTALE or attempt == ESTALE_TRIES - 1:
                raise
    raise AssertionError("unreachable")


@contextmanager
def _reader_slot(root: str, k: int) -> Iterator[None]:
    """At most `k` nodes read the shared disk at once (0: no cap): one of `k` link locks
    on the shared root, chosen by this host's name, held while copying."""
    if k <= 0:
        yield
        return
    from .store import exclusive

    with exclusive(Path(root, ".locks", f"readers-{_slot(k)}.lock"), poll=0.2):
        yield


def _slot(k: int) -> int:
    return int.from_bytes(hashlib.sha256(os.uname().nodename.encode()).digest()[:4],
                          "big") % k


def cache_dir(option: str | None) -> str | None:
    """`--local DIR`, else $ENVBUILD_LOCAL, else none."""
    chosen = option or os.environ.get("ENVBUILD_LOCAL") or None
    return os.path.abspath(os.path.expanduser(chosen)) if chosen else None
