"""The per-user download cache: what one store downloaded, every other store of the same
user links instead of downloading it again (a CI runner's store per job, a test suite's
store per test). Content-addressed like a store's wheel cache, `<cache>/sha256/<hex>/FILE`
beside its `.origin.json`, files read-only, and trusted no more than one: every use hashes
the bytes again against the lock. A cache that cannot be written is passed over with a
warning (downloads then go to the store alone); one that cannot be read is as good as empty.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import CacheIntegrityError
from .fsutil import publish_dir, remove_tree
from .hashing import file_digest
from .layout import DownloadLayout, download_cache_root

log = logging.getLogger(__name__)

ORIGIN = ".origin.json"   # beside a cached artifact: {"url": where it was downloaded from}


def checked_files(folder: Path, digest: str, offline: bool) -> list[Path]:
    """The artifacts of one cache entry (a store's `wheels/<hex>/`, the download cache's
    `sha256/<hex>/`), each hashed now. An entry whose bytes no longer match `digest` is
    discarded with a warning (none returned) or, `offline`, refused naming the file. An
    entry that is missing or that this user cannot read is none."""
    paths = listed(folder)
    for path in paths:
        try:
            found = file_digest(str(path))
        except OSError as exc:
            log.warning("%s: cannot be read (%s); passed over", path, exc.strerror)
            return []
        if found != digest:
            if offline:
                raise CacheIntegrityError(
                    f"{path}: expected sha256 {digest} (from the lock), found {found}; the "
                    "cached file is corrupt and --offline forbids fetching it again; build "
                    "without --offline")
            log.warning("%s: bytes no longer match the lock's hash; discarding it and "
                        "fetching it again", path)
            with contextlib.suppress(OSError):   # a read-only cache keeps it, unused
                remove_tree(folder)
            return []
    return paths


def listed(folder: Path) -> list[Path]:
    """The artifacts of one cache entry, not read (none if it is missing or unreadable)."""
    try:
        return sorted(p for p in folder.iterdir() if p.name != ORIGIN)
    except OSError:
        return []


def link_entry(source: Path, final: Path, scratch: Path) -> None:
    """Cache entry `source` (an artifact and its origin) at `final` too: hard links where
    both are on one file system and the files may be linked, copies elsewhere. Gathered in
    a temp dir in `scratch` (on `final`'s file system) and renamed into place, so `final`
    is whole or absent; one published meanwhile by another build is kept."""
    staging = Path(tempfile.mkdtemp(prefix="link-", dir=scratch))
    try:
        for path in sorted(source.iterdir()):
            try:
                os.link(path, staging / path.name)
            except OSError:   # another file system, or another user's file
                shutil.copyfile(path, staging / path.name)
        if not publish_dir(staging, final):
            remove_tree(staging)
    except BaseException:
        remove_tree(staging)
        raise


class DownloadCache:
    """One user's download cache, at `$ENVBUILD_CACHE` or `<user cache>/downloads` unless
    `root` names another. Looking things up creates nothing; the dirs are made when the
    first download needs them."""

    def __init__(self, root: str | None = None) -> None:
        self.layout = DownloadLayout(root if root is not None else download_cache_root())
        self._writable: bool | None = None

    @property
    def root(self) -> Path:
        return Path(self.layout.root)

    def entry(self, digest: str) -> Path:
        return Path(self.layout.artifact_dir(digest))

    def holds_artifacts(self) -> bool:
        """Whether any artifact is cached here (checked when used, not now)."""
        try:
            with os.scandir(self.layout.artifacts) as found:
                return any(True for _ in found)
        except OSError:
            return False

    def scratch(self) -> Path | None:
        """A new temp dir in the cache for a download, or None (with a warning, once) when
        the cache cannot be written: a read-only mount, another user's dir, a file in its
        place. The cache's dirs are made here, its root 0700: it is one user's."""
        if self._writable is False:
            return None
        try:
            self._make()
            path = Path(tempfile.mkdtemp(prefix="download-", dir=self.layout.tmp))
        except OSError as exc:
            self._writable = False
            log.warning("the download cache %s cannot be written (%s); downloading into the "
                        "store alone (set ENVBUILD_CACHE to a directory you can write)",
                        self.root, exc.strerror or exc)
            return None
        self._writable = True
        return path

    def _make(self) -> None:
        if not self.root.is_dir():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):   # made meanwhile, or a file: below
                self.root.mkdir(0o700)
        for sub in (self.layout.artifacts, self.layout.tmp):
            Path(sub).mkdir(exist_ok=True)

    def publish(self, staging: Path, name: str, digest: str) -> Path:
        """Rename `staging` (a download checked against `digest`: the file `name` and its
        origin, in a temp dir of this cache) into the entry of `digest`, read-only. The dir
        to link from: that entry; or the one another build published first, once its file
        is checked (`staging` is then removed); or, should that one stay in the way while
        unusable, `staging` itself, for the caller to remove."""
        for path in staging.iterdir():
            os.chmod(path, 0o444)
        final = self.entry(digest)
        for _ in range(2):   # a corrupt entry in the way is discarded: one more try
            if publish_dir(staging, final):
                return final
            if name in (p.name for p in checked_files(final, digest, offline=False)):
                remove_tree(staging)
                return final
        return staging
