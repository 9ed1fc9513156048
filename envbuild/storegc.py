"""`envbuild gc`: removing from a store what nothing uses.

Goes: an env whose mark of use (`used/<name>-<key>`, touched by every build, reuse and
launch) is older than the window; every dir a build or gc moved aside (`envs/.damaged-*`,
`.replaced-*`, `.removed-*`); a build dir (`envs/.tmp-*`) or a scratch dir (`tmp/*`, and
the `venvs/.tmp-*` of earlier builds) older than a day whose builder is gone; an installed
wheel (`trees/*`) no build used within the window, when no build runs (an env never needs
its trees once built: a hardlinked file keeps its inode), and then the pycs kept by source
that no installed wheel holds. Stays: an env used within the window, an env without a mark
yet (its clock starts now), anything whose key a live build holds the lock of.

An env is first renamed aside under its build lock (a launch that starts after that finds
no env rather than half of one), its mark read again (a launch that touched it meanwhile
puts it back), then deleted: directories are given u+rwx, files are only ever unlinked,
never chmod'ed (a file may share its inode with one outside the env).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bytecode import SOURCE_PYCS
from .errors import InputError
from .fsutil import make_writable
from .layout import StoreLayout
from .storeview import ASIDE, TMP, open_store, parse_entry, tree_size, utc

log = logging.getLogger(__name__)

DEFAULT_KEEP_DAYS = 30.0
STALE_SECONDS = 86400.0    # a build dir or scratch dir this old, its builder gone, is left over


@dataclass(frozen=True)
class Removal:
    path: Path
    size_bytes: int
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "why": self.why}


@dataclass
class GcResult:
    dry_run: bool
    removed: list[Removal] = field(default_factory=list)
    kept: list[Removal] = field(default_factory=list)    # what stays and why (envs only)

    @property
    def freed_bytes(self) -> int:
        return sum(r.size_bytes for r in self.removed)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "removed": [r.to_json() for r in self.removed],
                "kept": [r.to_json() for r in self.kept], "freed_bytes": self.freed_bytes}


def gc(store_dir: Path | None = None, keep_days: float = DEFAULT_KEEP_DAYS,
       dry_run: bool = False, now: float | None = None) -> GcResult:
    """Remove (with `dry_run`, only list) what nothing uses; see the module's doc."""
    if not keep_days >= 0:
        raise InputError(f"--keep-days: expected a number of days >= 0, found {keep_days}; "
                         f"pass e.g. --keep-days {DEFAULT_KEEP_DAYS:g}")
    store = open_store(store_dir)
    now = time.time() if now is None else now
    result = GcResult(dry_run)
    cutoff = now - keep_days * 86400
    for entry in sorted(os.listdir(store.envs)):
        parsed = parse_entry(entry)
        path = Path(store.envs) / entry
        if parsed is None or path.is_symlink() or not path.is_dir():
            continue
        kind, name, key = parsed
        held = _held(store, name, key)
        if kind == "env":
            _judge_env(store, path, cutoff, held, result)
        elif held:
            continue
        elif kind in ASIDE:
            _remove(path, f"moved aside ({kind})", result)
        elif kind == TMP and _age(path, now) > STALE_SECONDS:
            _remove(path, "left over by a build that is gone", result)
    if not any(_held_path(lock) for lock in _locks(store)):
        scratch = [Path(store.tmp) / e for e in sorted(os.listdir(store.tmp))
                   ] if os.path.isdir(store.tmp) else []
        if os.path.isdir(store.venvs):   # where earlier builds made their empty venvs
            scratch += [Path(store.venvs) / e for e in sorted(os.listdir(store.venvs))
                        if e.startswith(".tmp-")]
        for path in scratch:
            if _age(path, now) > STALE_SECONDS:
                _remove(path, "scratch left over by a build that is gone", result)
        for entry in sorted(os.listdir(store.trees)) if os.path.isdir(store.trees) else []:
            path = Path(store.trees) / entry
            if _age(path, now) > now - cutoff:
                _remove(path, f"an installed wheel no build used since "
                        f"{utc(path.lstat().st_mtime)}", result)
        _unheld_pycs(store, result)
    if not dry_run:
        _drop_orphan_marks(store)
    return result


def _judge_env(store: StoreLayout, env: Path, cutoff: float, held: bool,
               result: GcResult) -> None:
    mark = Path(store.used_mark(env.name))
    try:
        seen = mark.stat().st_mtime_ns
    except FileNotFoundError:
        if not result.dry_run:
            _start_clock(mark)
        result.kept.append(Removal(env, 0, "no mark of use yet: its clock starts now"))
        return
    if held:
        result.kept.append(Removal(env, 0, "a build of its key holds the lock"))
    elif seen >= cutoff * 1e9:
        result.kept.append(Removal(env, 0, f"used {utc(seen / 1e9)}"))
    elif result.dry_run:
        result.removed.append(Removal(env, tree_size(env), f"unused since {utc(seen / 1e9)}"))
    else:
        _remove_env(store, env, mark, seen, result)


def _remove_env(store: StoreLayout, env: Path, mark: Path, seen: int,
                result: GcResult) -> None:
    """Rename the env aside under its build lock, unless it was used meanwhile; delete it."""
    from .store import exclusive

    parsed = parse_entry(env.name)
    assert parsed is not None
    _, name, key = parsed
    size = tree_size(env)
    aside = Path(store.aside_dir("removed", name, key,
                                 time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))
    with exclusive(Path(store.build_lock(name, key))):
        if _mtime_ns(mark) != seen or not env.is_dir():
            result.kept.append(Removal(env, 0, "used while gc ran"))
            return
        os.rename(env, aside)
        if _mtime_ns(mark) != seen:     # a launch touched it between the check and rename
            os.rename(aside, env)
            result.kept.append(Removal(env, 0, "used while gc ran"))
            return
        mark.unlink(missing_ok=True)
    delete_tree(aside)
    result.removed.append(Removal(env, size, f"unused since {utc(seen / 1e9)}"))


def _unheld_pycs(store: StoreLayout, result: GcResult) -> None:
    """The pycs kept by source (`pycs/by-source-*/`) that no installed wheel holds any more:
    a file with one link, the cache's own (one removal listed per dir)."""
    dirs = sorted(os.listdir(store.pycs)) if os.path.isdir(store.pycs) else []
    for where in [Path(store.pycs) / d for d in dirs if d.startswith(SOURCE_PYCS)]:
        lone = [(p, st.st_size) for p in where.iterdir()
                if (st := p.lstat()).st_nlink == 1 and not p.is_dir()]
        if not lone:
            continue
        if not result.dry_run:
            for path, _size in lone:
                path.unlink(missing_ok=True)
        result.removed.append(Removal(where, sum(size for _path, size in lone),
                                      f"{len(lone)} pycs no installed wheel holds"))


def _remove(path: Path, why: str, result: GcResult) -> None:
    size = tree_size(path)
    if not result.dry_run:
        delete_tree(path)
    result.removed.append(Removal(path, size, why))


def delete_tree(path: Path) -> None:
    """Delete a tree, read-only dirs included: only directories get u+rwx, files are
    unlinked as they are (a hardlink elsewhere keeps its mode). A tree gone already is fine;
    one that cannot be deleted is an InputError naming it."""
    try:
        make_writable(path)
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"gc: expected to remove {path}, found {exc.filename}: "
                         f"{exc.strerror}; run gc as the store's owner") from None


def _start_clock(mark: Path) -> None:
    try:
        os.makedirs(mark.parent, exist_ok=True)
        os.close(os.open(mark, os.O_WRONLY | os.O_CREAT, 0o666))
    except OSError as exc:
        log.warning("cannot make the mark of use %s: %s", mark, exc.strerror)


def _drop_orphan_marks(store: StoreLayout) -> None:
    """Marks whose env is gone (removed by hand, or by a gc that died)."""
    try:
        names = os.listdir(store.used)
    except OSError:
        return
    for name in names:
        if not os.path.isdir(os.path.join(store.envs, name)):
            try:
                os.unlink(os.path.join(store.used, name))
            except OSError:
                pass


def _held(store: StoreLayout, name: str, key: str) -> bool:
    return _held_path(Path(store.build_lock(name, key)))


def _held_path(lock: Path) -> bool:
    from .store import lock_held

    return lock_held(lock)


def _locks(store: StoreLayout) -> list[Path]:
    try:
        return [Path(store.locks) / n for n in os.listdir(store.locks) if n.endswith(".lock")]
    except OSError:
        return []


def _age(path: Path, now: float) -> float:
    try:
        return now - path.lstat().st_mtime
    except OSError:
        return 0.0


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
