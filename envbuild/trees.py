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
import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .dlcache import checked_files
from .errors import BuildError, CacheIntegrityError, InputError
from .fsutil import publish_dir, remove_tree
from .hostreq import ElfRead, read_elf
from .interpreter import Interpreter
from .manifest import Known
from .pipscripts import pip_style
from .proc import dist_version
from .sidecars import FILES_SCHEMA, files_line, read_files, walk
from .store import Store

if TYPE_CHECKING:
    from .wheelcache import Artifact

log = logging.getLogger(__name__)
T = TypeVar("T")
Progress = Callable[[str], None]

TREE_FORMAT = "1"
ROOT, FILES, INFO = "root", "files", "tree.json"
LINK_MODES = ("hardlink", "reflink", "copy")
FICLONE = 0x40049409        # linux/fs.h: _IOW(0x94, 9, int)
# what a file system without reflinks answers FICLONE with
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}

def identity() -> str:
    """The installer's identity, for `env_key` (its version from its metadata: importing
    it is for a build that installs a wheel)."""
    return (f"envbuild trees/{TREE_FORMAT} (pip's layout, scripts {pip_style()}) "
            f"installer {dist_version('installer')}")


@dataclass(frozen=True)
class Tree:
    path: Path
    files: Known
    elf: dict[str, ElfRead]     # what the host scan reads from each ELF object

    @property
    def root(self) -> Path:
        return self.path / ROOT

    @cached_property
    def root_prefix(self) -> str:
        """The root as a string ending in "/": a file's source is this and its path."""
        return f"{self.path}/{ROOT}/"


def trees_for(store: Store, artifacts: list[Artifact], interp: Interpreter,
              progress: Progress) -> list[Tree]:
    """One intact tree per artifact, in order, installing the missing ones."""
    found: dict[str, Tree] = {}
    missing: list[tuple[Artifact, Path]] = []
    style = pip_style()
    for art in artifacts:
        where = Path(store.layout.tree_dir(art.wheel_sha256, interp.abi, interp.version, style))
        tree = load_tree(where)
        if tree is None:
            missing.append((art, where))
        else:
            found[art.wheel_sha256] = tree
            _mark_used(where)
    if missing:
        progress(f"installing {len(missing)} of {len(artifacts)} wheels into the store "
                 "(once per wheel and Python)")
        os.makedirs(store.layout.trees, exist_ok=True)
        found.update(_install_trees(store, missing, interp))
    return [found[art.wheel_sha256] for art in artifacts]


def installed(store: Store, interp: Interpreter) -> Callable[[str], bool]:
    """Whether a wheel (by its digest) has a tree in the store for `interp` (the build
    finds it intact, or installs it again, in `trees_for`), from one listing of trees/."""
    try:
        names = set(os.listdir(store.layout.trees))
    except OSError:
        names = set()
    style = pip_style()
    return lambda digest: os.path.basename(
        store.layout.tree_dir(digest, interp.abi, interp.version, style)) in names


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


def _install_trees(store: Store, missing: list[tuple[Artifact, Path]],
                   interp: Interpreter) -> dict[str, Tree]:
    from .bytecode import Compiler, compile_early, compile_trees, keep, source_pycs_dir

    staged: list[tuple[Artifact, Path, Path]] = []
    by_source = source_pycs_dir(store, interp)
    scratch = Path(tempfile.mkdtemp(prefix="pycs-", dir=store.tmp))
    try:
        with Compiler(interp.executable) as compiler:   # compiles while the wheels go in
            fresh = compile_early(compiler, [art.wheel for art, _where in missing],
                                  interp.site, interp.cache_tag, by_source, scratch)
            _install_wheels(store, missing, interp, staged)
            compiler.wait()
        keep(fresh, by_source)
        compile_trees(interp.executable, [staging / ROOT for _art, _where, staging in staged],
                      interp.site, interp.cache_tag, by_source)
        out: dict[str, Tree] = {}
        for art, where, staging in staged:
            out[art.wheel_sha256] = _seal_tree(art, where, staging)
        return out
    finally:
        remove_tree(scratch)
        for _art, _where, staging in staged:
            if staging.exists():
                remove_tree(staging)


def _install_wheels(store: Store, missing: list[tuple[Artifact, Path]], interp: Interpreter,
                    staged: list[tuple[Artifact, Path, Path]]) -> None:
    """Each missing wheel installed into a staging dir of its own (added to `staged`)."""
    from .wheelinstall import install_wheel

    for art, where in missing:
        if not art.hashed:
            _check_wheel(art)
        staging = Path(tempfile.mkdtemp(prefix="tree-", dir=store.tmp))
        staged.append((art, where, staging))
        install_wheel(art.wheel, staging / ROOT, interp.site, interp.version, art.entry.name)


def _check_wheel(art: Artifact) -> None:
    """A wheel found but not read (its tree was there) has the lock's bytes; one that does
    not is discarded from the wheel cache, as every lookup there discards it."""
    if art.wheel not in checked_files(art.wheel.parent, art.wheel_sha256, offline=False):
        raise CacheIntegrityError(f"{art.wheel}: expected sha256 {art.wheel_sha256} (from the "
                                  "lock), found other bytes; removed from the wheel cache: "
                                  "build again to fetch it anew")


def _seal_tree(art: Artifact, where: Path, staging: Path) -> Tree:
    """Record the staged tree's files, make it read-only and publish it at `where`."""
    root = staging / ROOT
    forbidden = str(staging).encode()
    lines, files, elf = [FILES_SCHEMA + "\n"], {}, {}
    for rel, st in sorted(walk(str(root)).items()):
        if stat.S_ISDIR(st.st_mode):
            os.chmod(root / rel, 0o555)
            continue
        data = (root / rel).read_bytes()
        if forbidden in data:
            raise BuildError(f"{art.wheel.name}: {rel} holds the install dir's path; it "
                             "would break when moved")
        mode = 0o555 if st.st_mode & 0o111 else 0o444
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(root / rel, mode)
        digest = hashlib.sha256(data).hexdigest()
        files[rel] = (mode, len(data), digest)
        lines.append(files_line("f", mode, len(data), digest, rel))
        if data[:4] == b"\x7fELF":
            got = read_elf(root / rel)
            if got is not None:
                elf[rel] = got
    (staging / FILES).write_text("".join(lines), encoding="utf-8")
    (staging / INFO).write_text(json.dumps(
        {"format": TREE_FORMAT, "wheel": art.wheel_sha256, "artifact": art.wheel.name,
         "installer": identity(),
         "elf": {rel: [needed, search, sorted(glibc), {k: sorted(v) for k, v in needs.items()}]
                 for rel, (needed, search, glibc, needs) in elf.items()}},
        sort_keys=True), encoding="utf-8")
    for name in (FILES, INFO):
        os.chmod(staging / name, 0o444)
    os.chmod(root, 0o555)
    os.chmod(staging, 0o555)
    if not publish_dir(staging, where):   # another build published it first
        tree = load_tree(where)
        if tree is not None:
            return tree
        raise BuildError(f"{where}: expected the tree another build published, found none")
    return Tree(where, files, elf)


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
    with open(src, "rb") as fh:
        if not _as_recorded(os.fstat(fh.fileno()), record):
            return False
        data = fh.read()
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


@dataclass(frozen=True)
class Linked:
    known: Known                        # every file put in place, checked as recorded
    elf: dict[str, ElfRead | None]      # what the host scan reads from each (None: not ELF)
    source: dict[str, Path]             # the tree each came from
    dirs: list[str]                     # the dirs made for them: nothing else is in these


def link_trees(trees: Iterable[Tree], root: Path, how: str) -> Linked:
    """Every tree's files put under `root` (a later tree's file replaces an earlier one's,
    as a later install does)."""
    chosen: dict[str, Tree] = {}
    for tree in trees:
        for rel in tree.files:
            chosen[rel] = tree
    base = str(root) + "/"
    parents = {rel.rpartition("/")[0] for rel in chosen}
    made = _mkdirs(sorted({"/".join(p.split("/")[:n]) for p in parents if p
                          for n in range(1, p.count("/") + 2)}), base)
    items = list(chosen.items())
    from concurrent.futures import ThreadPoolExecutor

    # in threads: the syscalls free the GIL (a copy's most of all)
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        damaged = [bad for part in pool.map(lambda part: _put(part, base, how), _chunks(items))
                   for bad in part]
    if damaged:
        raise TreeDamaged({chosen[rel].path: rel for rel in reversed(damaged)})
    return Linked({rel: tree.files[rel] for rel, tree in items},
                  {rel: tree.elf.get(rel) for rel, tree in items},
                  {rel: tree.path for rel, tree in items}, made)


def _chunks(seq: list[T]) -> list[list[T]]:
    step = max(64, len(seq) // 16)
    return [seq[i:i + step] for i in range(0, len(seq), step)]


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
