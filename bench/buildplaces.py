"""Where the build bench works and what it checks there: the bench store whose caches each
timed build starts from, fresh stores that share those caches by hard links, scratch dirs
removed after each run, how many files a build left hard-linked, and `du` with hard links
counted once.

Stdlib only, like common.py.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import DEFAULT_STORE, OUT, force_rmtree

# The store's caches a warm build starts from: the wheel cache (wheels/, built/), the
# per-wheel pyc cache (pycs/) and the installer's read-only trees (trees/). Whichever the
# bench store has are shared; its envs/ never are, so no timed build is a cache hit.
WARM_CACHES = ("wheels", "built", "pycs", "trees", "venvs")
WHEEL_CACHE = ("wheels", "built")


@dataclass(frozen=True)
class Places:
    """The bench's dirs, all on one file system (hard links and clones need that)."""

    work: Path        # recipe copies and their locks (kept), scratch/ and stores of a run
    store: Path       # the bench store: its caches are the warm ones
    uv_cache: Path

    @classmethod
    def make(cls, work: Path | None, store: Path | None) -> Places:
        """`--work` alone puts everything there; the default is bench/out (the store and uv
        cache that the other benches use, and bench/out/build)."""
        if work is None:
            places = cls(OUT / "build", store or DEFAULT_STORE, OUT / "uv-cache")
        else:
            places = cls(work, store or work / "store", work / "uv-cache")
        places = cls(*(p.absolute() for p in (places.work, places.store, places.uv_cache)))
        for path in (places.work, places.store, places.uv_cache, places.scratch):
            path.mkdir(parents=True, exist_ok=True)
        devices = {p: p.stat().st_dev for p in (places.work, places.store, places.uv_cache)}
        if len(set(devices.values())) > 1:
            sys.exit("bench: the work dir, the bench store and uv's cache must be on one file "
                     f"system (hard links, clones), found devices {devices}; pass --work DIR "
                     "alone to put all three there")
        return places

    @property
    def scratch(self) -> Path:
        return self.work / "scratch"


class Scratch:
    """Fresh dirs of one timed run (made before the clock starts), removed after it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Path] = []
        self._count = itertools.count()

    def new(self, kind: str) -> Path:
        path = self.root / f"{kind}-{os.getpid()}-{next(self._count)}"
        self.made.append(path)
        return path

    def fixed(self, kind: str) -> Path:
        """The same path at every call (removed after each run, as `new`'s are)."""
        path = self.root / kind
        self.made.append(path)
        return path

    def clear(self) -> None:
        while self.made:
            force_rmtree(self.made.pop())


def link_caches(source: Path, dest: Path, caches: Sequence[str] = WARM_CACHES) -> None:
    """`source`'s `caches` in `dest`, every file a hard link (so no copy, and no download)."""
    dest.mkdir(parents=True, exist_ok=True)
    for sub in caches:
        if (source / sub).is_dir():
            shutil.copytree(source / sub, dest / sub, symlinks=True, copy_function=os.link)


def fresh_store(scratch: Scratch, source: Path, caches: Sequence[str] = WARM_CACHES) -> Path:
    store = scratch.new("store")
    link_caches(source, store, caches)
    return store


def only_env(store: Path) -> Path:
    """The one env a build made in a fresh store."""
    envs = [p for p in (store / "envs").iterdir() if not p.name.startswith(".")]
    if len(envs) != 1:
        sys.exit(f"bench: expected one env in {store / 'envs'}, found {envs}")
    return envs[0]


def link_count(tree: Path) -> tuple[int, int]:
    """(regular files under `tree`, those of them with more than one link)."""
    files = linked = 0
    for dirpath, _dirs, names in os.walk(tree):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                linked += st.st_nlink > 1
    return files, linked


def check_links(what: str, tree: Path, hard_links: bool) -> tuple[int, int]:
    """Fail unless `tree` is what its link mode makes: most files hard-linked into a cache
    (`hard_links`), or none. A uv on another file system than its cache silently copies."""
    files, linked = link_count(tree)
    if hard_links and linked * 2 < files:
        sys.exit(f"bench: {what}: expected hard links into the cache, found {linked} of "
                 f"{files} files linked ({tree})")
    if not hard_links and linked:
        sys.exit(f"bench: {what}: expected copies, found {linked} of {files} files with "
                 f"other links ({tree})")
    return files, linked


def du(paths: Sequence[Path]) -> list[int]:
    """Disk usage in bytes of each path, by one `du` (a file linked from several of them
    counts once, in the first)."""
    out = subprocess.run(["du", "-s", "--block-size=1", *map(str, paths)], check=True,
                         capture_output=True, text=True).stdout
    return [int(line.split("\t", 1)[0]) for line in out.splitlines()]
