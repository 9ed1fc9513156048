"""The files level on a host that checked the env before: only what changed since.

A full comparison at the files level that finds nothing leaves, in the per-host cache, the
time it began (less a margin). The kernel sets an inode's change time (ctime) to the
current time at every change of its mode, owner, size, content or links, and at a rename;
nothing sets it back. So a later check lists, with one `find -newerct`, only the inodes
changed since that time: none, most often, and the env is as it was. A changed regular
file or symlink is compared with its sidecar line here; a changed dir (an entry added,
removed or renamed), manifest or sidecar, or anything this cannot read, sends the check to
the full comparison (`verify_files`).

What ctime cannot see (a write still in flight when the record was made, which stamps its
time before its bytes land; an edit of the disk while it was unmounted) is bounded by the
record's age: a record older than ten minutes is not used, and only a full comparison makes
one. The record is used only where a change time can be trusted and nothing is hidden: the
env's own file system is a local one (ext2/3/4, XFS, Btrfs, tmpfs: not a network or FUSE
file system, whose change times are the server's or absent), no mount point lies inside
the env, the clock has not been set back or ahead since (the realtime clock's offset from
the boot clock), the env's root dir has not changed since, and the record's key holds: the
env's real path and its root's inode (the root held open while it is judged and listed),
the manifest's sha256, the trusted owners and the boot. Stdlib only."""

from __future__ import annotations

import os
import time

from .findwalk import Listing, Odd
from .hashing import sha256
from .host import cached, remember
from .layout import FILES, MANIFEST, META
from .verify import Difference, read_sidecar
from .verify_files import compare_odd, find_pays, sidecar_lines, start_listing

FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs"})
MARGIN_NS = 2 * 10**9         # a change this close before a clean check is listed again
STEP_NS = 10**9               # the clock set back or ahead by more: no record is trusted
MAX_AGE_NS = 600 * 10**9      # an older record is not trusted: the full comparison again
MOUNTINFO = "/proc/self/mountinfo"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


class Record:
    """This host's record of the last clean full comparison of the env at the files level,
    for the env's real path, whose root dir is held open (`fd`) while it is judged."""

    def __init__(self, env: str, digest: str, trusted: set[int]) -> None:
        self.real = os.path.realpath(env)
        self.start = time.time_ns()
        self.offset = self.start - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self.name = self.key = ""
        self.fd = -1
        self.root_ctime = 0
        self.full = True   # False: this check took the record; only a full one makes one
        try:
            self.fd = os.open(self.real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            root = os.fstat(self.fd)
            with open(BOOT_ID, encoding="ascii") as fh:
                boot = fh.read().strip()
        except OSError:
            return
        if not local_and_whole(self.real):
            return
        self.root_ctime = root.st_ctime_ns
        self.name = "files-since-" + sha256(os.fsencode(self.real)).hexdigest()[:24]
        self.key = (f"{self.real!r} {root.st_dev} {root.st_ino} {digest} {boot} "
                    f"{','.join(map(str, sorted(trusted)))}")

    def last_clean(self) -> int | None:
        """The time (ns) since which a change shows, if the last clean full comparison can
        be trusted now; else None."""
        value = cached(self.name, self.key) if self.key else None
        try:
            since, offset = (int(x) for x in (value or "").split())
        except ValueError:
            return None
        if (abs(self.offset - offset) > STEP_NS or not since <= self.start <= since + MAX_AGE_NS
                or self.root_ctime > since):
            return None   # the clock set since, an old record, or the env's top changed
        return since

    def start_since(self, since: int) -> Listing | None:
        """The find of what changed in the held root dir after `since`."""
        try:
            names = sorted(os.listdir(self.fd))
        except OSError:
            return None
        listing = Listing.start_since(self.fd, names, since, self.real)
        self.full = listing is None
        return listing

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def clean(self) -> None:
        """This check found nothing: if it was a full comparison, keep its start."""
        if self.key and self.full:
            remember(self.name, self.key, f"{self.start - MARGIN_NS} {self.offset}")


def local_and_whole(path: str) -> bool:
    """Whether `path` is on a local file system that keeps change times, and no file
    system is mounted inside it (from the mount table; False where it cannot be read)."""
    best, fstype = "", ""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split(" ")
                point = _unescape(fields[4])
                if point.startswith(path.rstrip("/") + "/"):
                    return False    # a mount inside the env
                inside = point == "/" or path == point or path.startswith(point + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, fields[fields.index("-") + 1]
    except (OSError, ValueError, IndexError):
        return False
    return fstype in FILE_SYSTEMS


def _unescape(field: str) -> str:
    r"""A mount table path: space, tab, newline and backslash as \ooo."""
    first, *rest = field.split("\\")
    return first + "".join(chr(int(part[:3], 8)) + part[3:] for part in rest)


def start_files(env: str, digest: str, trusted: set[int]
                ) -> tuple[Listing | None, Record | None]:
    """The files level's find, started before anything else is read: of what changed since
    this host's last clean full comparison, where its record can be trusted, else of
    everything (`start_listing`); and the record to keep if this check is a clean full
    comparison. (None, None) for an env too small for a find to pay: the walk in Python
    follows."""
    if not find_pays(env):
        return None, None
    record = Record(env, digest, trusted)
    try:
        since = record.last_clean()
        listing = record.start_since(since) if since is not None else None
    finally:
        record.close()
    return listing or start_listing(env, trusted, pays=True), record


def check_changed(listing: Listing, trusted: set[int], diffs: list[Difference]) -> bool:
    """The files level from what changed since the last clean check (`listing`, closed
    here); False (nothing done, nothing reported) where it cannot tell."""
    try:
        changed = listing.changed()
    finally:
        listing.close()
    if changed is None:
        return False
    if not changed:
        return True
    for kind, rel in changed:
        if kind == "d" or rel in (MANIFEST, META) or rel.startswith(META + "/"):
            return False
    env = listing.env   # the real path whose root the find listed
    scratch: list[Difference] = []
    data = read_sidecar(env, FILES, scratch)
    if data is None or b"\\" in data:
        return False   # (an unreadable sidecar, or paths to unescape: the full check)
    odd = Odd()
    odd.paths.update(rel for _kind, rel in changed)
    odd.marked.update(odd.paths)
    return compare_odd(env, sidecar_lines(data.decode("utf-8")), odd, trusted, diffs)
