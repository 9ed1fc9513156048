"""The store's installed trees: each wheel installed once per store and interpreter
(`trees/<wheel sha256>-<abi>-<version>/`), read-only, its pycs compiled, every file's
mode, size and sha256 recorded; and an env's files linked, cloned or copied from them.

A tree's record is bound to the wheel's sha256 (the lock's) by the tree's name. Only
recorded files are ever taken from a tree, each checked against its record (mode and size,
as the files level checks an env) as it is put in place: a tree that differs raises
`TreeDamaged`, and the build discards it and installs the wheel again. The manifest's
digests come from the records, so a byte changed in a tree after it was recorded shows as a
difference when the env is verified at the full level."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .errors import BuildError, InputError
from .fsutil import remove_tree
from .hostreq import ElfRead
from .interpreter import Interpreter
from .manifest import Known
from .pipscripts import pip_style
from .proc import dist_version
from .sidecars import read_files
from .store import Store

if TYPE_CHECKING:
    from .wheelcache import Artifact

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

TREE_FORMAT = "1"
ROOT, FILES, INFO = "root", "files", "tree.json"
LINK_MODES = ("hardlink", "reflink", "copy")
# a dir this many names deep (lib/pythonX.Y/site-packages/PACKAGE/SUBPACKAGE) and all under
# it are put in place by one thread, beside the others
UNIT_DEPTH = 5
FICLONE = 0x40049409        # linux/fs.h: _IOW(0x94, 9, int)
# what a file system without reflinks answers FICLONE with
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}

def identity() -> str:
    """The installer's identity, for `env_key` (its version from its metadata: importing
    it is for a build that installs a wheel)."""
    return (f"envbuild trees/{TREE_FORMAT} (pip's layout, scripts {pip_style()}) "
            f"installer {dist_version('installer')}")


class Tree:
    """A tree in the store: its place, its files' records, and what the host scan reads
    from each of its ELF objects."""

    __slots__ = ("path", "files", "elf", "root_prefix")

    def __init__(self, path: Path, files: Known, elf: dict[str, ElfRead]) -> None:
        self.path, self.files, self.elf = path, files, elf
        self.root_prefix = f"{path}/{ROOT}/"   # a file's source is this and its path

    def __repr__(self) -> str:
        return f"Tree({str(self.path)!r})"


def tree_places(store: Store, artifacts: list[Artifact], interp: Interpreter) -> list[Path]:
    """Where each artifact's tree is, or goes, in the store."""
    place = _tree_place(store, interp)
    return [Path(place(art.wheel_sha256)) for art in artifacts]


def _tree_place(store: Store, interp: Interpreter) -> Callable[[str], str]:
    """A wheel's tree's place (by the wheel's digest) for `interp` and the scripts of the
    pip beside envbuild."""
    style = pip_style()
    return lambda digest: store.layout.tree_dir(digest, interp.abi, interp.pyc_version, style)


def load_trees(places: list[Path | None]) -> list[Tree | None]:
    """The intact tree at each place (each marked used), None where there is none (or no
    place: a tree being installed, which is not looked at meanwhile)."""
    out = []
    for where in places:
        tree = load_tree(where) if where is not None else None
        if tree is not None and where is not None:
            _mark_used(where)
        out.append(tree)
    return out


def installed(store: Store, interp: Interpreter) -> Callable[[str], bool]:
    """Whether a wheel (by its digest) has a tree in the store for `interp` (the build
    finds it intact, or installs it again, in `trees_for`), from one listing of trees/."""
    try:
        names = set(os.listdir(store.layout.trees))
    except OSError:
        names = set()
    place = _tree_place(store, interp)
    return lambda digest: os.path.basename(place(digest)) in names


def load_tree(where: Path) -> Tree | None:
    """The tree at `where` if it is there and intact; a damaged one is removed."""
    try:
        info = json.loads((where / INFO).read_text(encoding="utf-8"))
        if info.get("format") != TREE_FORMAT:
            raise ValueError(f"format {info.get('format')!r}")
        files = {rel: (mode, size, digest) for rel, (_kind, mode, size, digest)
                 in read_files((where / FILES).read_text(encoding="utf-8")).items()}
        elf: dict[str, ElfRead] = {
            rel: (needed, search, set(glibc), {k: set(v) for k, v in needs.items()})
            for rel, (needed, search, glibc, needs) in info["elf"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        if where.exists():
            discard(where, f"its record is unreadable ({exc})")
        return None
    return Tree(where, files, elf)


def _mark_used(where: Path) -> None:
    """The tree's mtime is its last use by a build, which `envbuild gc` reads."""
    try:
        os.utime(where)
    except OSError as exc:   # a store shared read-only: gc just sees an older use
        log.debug("%s: mark of use not set: %s", where, exc)


def discard(where: Path, why: str) -> None:
    log.warning("%s: %s; installing the wheel again", where, why)
    remove_tree(where)


# ---- linking an env's files from the trees -------------------------------------------------


def resolve_link(how: str | None, where: Path) -> str:
    """The link mode to use in `where` (the store's temp dir): `how` if the file system
    can do it; by default reflink where it can, else copy."""
    if how in ("hardlink", "copy"):
        return how
    if can_reflink(where):
        return "reflink"
    if how == "reflink":
        raise InputError(f"--link reflink: expected a file system with reflinks (XFS, Btrfs) "
                         f"at {where}, found none; pass --link copy or --link hardlink")
    return "copy"


def can_reflink(where: Path) -> bool:
    """Whether files in `where` can be cloned (FICLONE: XFS made with reflink=1, Btrfs)."""
    os.makedirs(where, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reflink-", dir=where) as probe:
        src, dst = os.path.join(probe, "a"), os.path.join(probe, "b")
        data = b"reflink probe\n"
        with open(src, "wb") as fh:
            fh.write(data)
        os.chmod(src, 0o444)
        try:
            _reflink(src, dst, (0o444, len(data), ""))
        except OSError as exc:
            if exc.errno in _NO_REFLINK:
                return False
            raise
    return True


def _reflink(src: str, dst: str, record: tuple[int, int, str]) -> bool:
    import fcntl

    fd_src = os.open(src, os.O_RDONLY)
    try:
        if not _as_recorded(os.fstat(fd_src), record):
            return False
        fd_dst = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, record[0])
        try:
            fcntl.ioctl(fd_dst, FICLONE, fd_src)
            os.fchmod(fd_dst, record[0])   # the record's mode, whatever the umask
        except OSError:
            os.close(fd_dst)
            os.unlink(dst)
            raise
        os.close(fd_dst)
    finally:
        os.close(fd_src)
    return True


def _copy(src: str, dst: str, record: tuple[int, int, str]) -> bool:
    # os-level: a file object's open, buffering and read cost more syscalls than the copy
    fd_src = os.open(src, os.O_RDONLY)
    try:
        if not _as_recorded(os.fstat(fd_src), record):
            return False
        chunks = []
        left = record[1] + 1   # one more than recorded: a file grown since shows
        while left > 0 and (chunk := os.read(fd_src, left)):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd_src)
    if len(data) != record[1]:
        return False
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, record[0])
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, record[0])
    finally:
        os.close(fd)
    return True


def _hardlink(src: str, dst: str, record: tuple[int, int, str]) -> bool:
    """The link, if the tree's inode (the env's file now) has its recorded mode and size."""
    os.link(src, dst)
    return _as_recorded(os.lstat(src), record)


def _as_recorded(st: os.stat_result, record: tuple[int, int, str]) -> bool:
    """A tree's file still has its recorded mode and size (what the files level checks)."""
    return stat.S_ISREG(st.st_mode) and (stat.S_IMODE(st.st_mode), st.st_size) == record[:2]


_LINKERS: dict[str, Callable[[str, str, tuple[int, int, str]], bool]] = {
    "hardlink": _hardlink, "reflink": _reflink, "copy": _copy}


class TreeDamaged(Exception):
    """Trees whose files differ from their records (the build discards them and installs
    their wheels again; a second time is a BuildError)."""

    def __init__(self, damaged: dict[Path, str]) -> None:
        tree, rel = next(iter(damaged.items()))
        more = f" (and {len(damaged) - 1} more trees)" if len(damaged) > 1 else ""
        super().__init__(f"{tree}: {rel} differs from its record{more}")
        self.trees = sorted(damaged)


class Linked(NamedTuple):
    known: Known                        # every file put in place, checked as recorded
    elf: dict[str, ElfRead | None]      # what the host scan reads from each (None: not ELF)
    source: dict[str, Path]             # the tree each came from
    dirs: list[str]                     # the dirs made for them: nothing else is in these


def link_trees(trees: Iterable[Tree], root: Path, how: str,
               placed: Linked | None = None) -> Linked:
    """Every tree's files put under `root` (a later tree's file replaces an earlier one's,
    as a later install does). `placed`: what an earlier call put there from some of these
    trees (those the store had while the others were installed), now completed."""
    trees = list(trees)
    base = str(root) + "/"
    if placed is None:
        chosen = _chosen(trees)
        todo = list(chosen.items())
    else:
        had = set(placed.source.values())   # every other file is as `placed` chose
        chosen = _chosen(trees, set().union(*(t.files for t in trees if t.path not in had)))
        todo = [(rel, tree) for rel, tree in chosen.items()
                if placed.source.get(rel) != tree.path]
        for rel, _tree in todo:
            if rel in placed.source:   # a later tree's file: it replaces the one put there
                os.unlink(base + rel)
    shallow, units = _units(todo)
    made = _mkdirs(shallow, base)
    from concurrent.futures import ThreadPoolExecutor

    # in threads, each unit's dirs made and files put in place by one: the syscalls free the
    # GIL (a copy's most of all), and a file system makes dirs side by side with other work
    # much faster than one after another
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        done = list(pool.map(lambda batch: _place(batch, base, how), _batches(units)))
    made += [rel for batch_made, _damaged in done for rel in batch_made]
    damaged = sorted(rel for _made, batch_damaged in done for rel in batch_damaged)
    if damaged:
        raise TreeDamaged({chosen[rel].path: rel for rel in reversed(damaged)})
    if placed is None:
        return Linked({rel: tree.files[rel] for rel, tree in todo},
                      {rel: tree.elf.get(rel) for rel, tree in todo},
                      {rel: tree.path for rel, tree in todo}, made)
    known, elf, source = dict(placed.known), dict(placed.elf), dict(placed.source)
    for rel, tree in todo:
        known[rel], elf[rel], source[rel] = tree.files[rel], tree.elf.get(rel), tree.path
    return Linked(known, elf, source, [*placed.dirs, *made])


def _chosen(trees: list[Tree], only: set[str] | None = None) -> dict[str, Tree]:
    """For each file of the trees (of `only`, if given: by set intersections, so a
    rebuild's few new files cost no walk of every tree's), the last tree that has it."""
    chosen: dict[str, Tree] = {}
    for tree in trees:
        for rel in tree.files if only is None else only.intersection(tree.files):
            chosen[rel] = tree
    return chosen


Unit = tuple[list[str], list[tuple[str, Tree]]]   # dirs (parents first), and files


def _units(todo: list[tuple[str, Tree]]) -> tuple[list[str], list[Unit]]:
    """The dirs `todo`'s files need that are less than `UNIT_DEPTH` deep (to be made first,
    parents first), and the files shared out in units: one dir that deep with every dir and
    file under it (a package's subpackage, in site-packages), or the files of one of the
    shallower dirs."""
    by_parent: dict[str, list[tuple[str, Tree]]] = {}
    for item in todo:
        by_parent.setdefault(item[0].rpartition("/")[0], []).append(item)
    shallow: set[str] = set()
    units: list[Unit] = []
    deep: dict[str, tuple[set[str], list[tuple[str, Tree]]]] = {}
    for parent, items in by_parent.items():
        parts = parent.split("/") if parent else []
        shallow.update("/".join(parts[:n]) for n in range(1, min(len(parts), UNIT_DEPTH - 1) + 1))
        if len(parts) < UNIT_DEPTH:
            units.append(([], items))
            continue
        dirs, files = deep.setdefault("/".join(parts[:UNIT_DEPTH]), (set(), []))
        dirs.update("/".join(parts[:n]) for n in range(UNIT_DEPTH, len(parts) + 1))
        files += items
    units += [(sorted(dirs), files) for dirs, files in deep.values()]
    return sorted(shallow), units


def _batches(units: list[Unit]) -> list[list[Unit]]:
    """The units, largest first, in batches of at least a sixteenth of the work (and 64
    entries): few enough to cost the pool little, the small last for an even finish."""
    units = sorted(units, key=lambda u: len(u[0]) + len(u[1]), reverse=True)
    step = max(64, sum(len(u[0]) + len(u[1]) for u in units) // 16)
    batches: list[list[Unit]] = []
    size = step
    for unit in units:
        if size >= step:
            batches.append([])
            size = 0
        batches[-1].append(unit)
        size += len(unit[0]) + len(unit[1])
    return batches


def _place(batch: list[Unit], base: str, how: str) -> tuple[list[str], list[str]]:
    """Each unit's dirs made and files put in place: the dirs made, and the files found
    differing from their records."""
    made: list[str] = []
    damaged: list[str] = []
    for dirs, files in batch:
        made += _mkdirs(dirs, base)
        damaged += _put(files, base, how)
    return made, damaged


def _mkdirs(rels: list[str], base: str) -> list[str]:
    """The dirs of `rels` that were not there, now made."""
    made = []
    for rel in rels:
        try:
            os.mkdir(base + rel)
            made.append(rel)
        except FileExistsError:
            pass
    return made


def _put(items: list[tuple[str, Tree]], base: str, how: str) -> list[str]:
    """Each tree file of `items` put at its place under `base` by `how`; the files found
    differing from their records (or gone) are returned."""
    linker = _LINKERS[how]
    damaged = []
    for rel, tree in items:
        try:
            if not linker(f"{tree.root_prefix}{rel}", base + rel, tree.files[rel]):
                damaged.append(rel)
        except FileNotFoundError:
            damaged.append(rel)
        except OSError as exc:
            raise BuildError(f"--link {how}: could not put {rel} in the env from "
                             f"{tree.path}: {exc.strerror}") from None
    return damaged
