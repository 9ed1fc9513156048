"""Building an env from a lock: the env key, the reuse of an intact env, the lock against
parallel builds, and the atomic publish into the store; the assembly itself is in
`assemble`, imported only when an env is built."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from .carried import launcher_digest
from .dlcache import DownloadCache
from .errors import BuildError, CacheIntegrityError, InputError
from .fsutil import publish_dir, remove_tree
from .interpreter import Interpreter, probe
from .layout import MANIFEST, mark_used
from .lock import Lock, read_lock
from .manifest import read_manifest
from .proc import installer_identity
from .recipe import Recipe, load_recipe
from .store import Store, clear_leftovers, env_key, exclusive

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
INSTALLERS = ("trees", "pip")
# How an env already in the store is judged before it is handed out: the lines of its
# differences from its manifest (none: intact). The caller passes the level checker in.
Check = Callable[[Path], list[str]]


class BuildResult(NamedTuple):
    path: Path
    env_key: str
    manifest_digest: str
    cached: bool
    moved_aside: Path | None = None     # a damaged env found in the store's place, kept there

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "env_key": self.env_key,
                "manifest_digest": self.manifest_digest, "cached": self.cached,
                "moved_aside": str(self.moved_aside) if self.moved_aside else None}


def build(recipe_path: Path, store_dir: Path | None = None, python: str | None = None,
          offline: bool = False, progress: Progress = lambda _msg: None,
          check: Check | None = None, force: bool = False,
          fixed_time: str | None = None, installer: str = "trees",
          link: str | None = None) -> BuildResult:
    """The env the recipe's lock describes, at `<store>/envs/<name>-<key>`.

    An env already there is handed out only if `check` finds it intact; a damaged one is
    moved aside to `envs/.damaged-<name>-<key>-<utc>/` and built again. `force` builds
    again whatever is there (the old env is removed once the new one is in place).
    `fixed_time` (an image's build): the provenance names that time and no host or user.
    `installer` "trees" (each wheel installed once per store and Python, the env's files
    put in place by `link`: hardlink, reflink or copy; None: reflink where the store's file
    system can, else copy) or "pip" (pip installs every wheel into the env: the reference).
    """
    if installer not in INSTALLERS:
        raise InputError(f"--installer: expected one of {', '.join(INSTALLERS)}, "
                         f"found {installer!r}")
    from .trees import LINK_MODES, resolve_link

    if link is not None and link not in LINK_MODES:
        raise InputError(f"--link: expected one of {', '.join(LINK_MODES)}, found {link!r}")
    if installer == "pip" and link is not None:
        raise InputError(f"--link {link}: expected with --installer trees (pip copies)")
    recipe = load_recipe(recipe_path)
    lock = read_lock(recipe)
    interp = probe(python)
    check_interpreter(recipe, lock, interp)
    where = Store.path_for(store_dir)
    downloads = DownloadCache()
    if (offline and not Path(Store(where).layout.wheels).is_dir()
            and not downloads.holds_artifacts()):
        # refused before the store is created: bad input changes nothing on disk
        raise CacheIntegrityError(f"--offline: neither the store {where} nor the download "
                                  f"cache {downloads.root} holds any artifact yet; build "
                                  "once without --offline to fill them")
    store = Store.locate(store_dir)
    if installer == "trees":
        # the temp dir is where an env is put together; probed before anything is built
        link = resolve_link(link, store.tmp)
    return _build_in(store, recipe, lock, interp, offline, progress, check, force,
                     fixed_time, link)


def _build_in(store: Store, recipe: Recipe, lock: Lock, interp: Interpreter, offline: bool,
              progress: Progress, check: Check | None, force: bool,
              fixed_time: str | None = None, link: str | None = None) -> BuildResult:
    installer = installer_identity() if link is None else trees_identity()
    if interp.pyc_version != interp.version:   # (so other versions keep their keys)
        installer += f", pycs of {interp.pyc_version}"
    key = env_key(lock.text, recipe.digest, interp.identity(), interp.platform,
                  launcher_digest(), installer)
    final = store.env_path(recipe.name, key)
    seen = None if force else _judge(final, check, progress)
    if seen == "intact":
        return _result(final, key, cached=True)
    moved = replaced = None
    with exclusive(Path(store.layout.build_lock(recipe.name, key)),
                   on_wait=lambda: progress(f"waiting for another build of {final.name}")):
        if (final / MANIFEST).exists():
            if not force and _manifest_id(final) != seen:   # built again meanwhile
                if _judge(final, check, progress) == "intact":
                    return _result(final, key, cached=True)
            aside = store.layout.aside_dir("replaced" if force else "damaged", recipe.name,
                                           key, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
            os.rename(final, aside)
            if force:
                replaced = Path(aside)
            else:
                moved = Path(aside)
                progress(f"moved the damaged env aside to {aside}; building it again")
        clear_leftovers(store, recipe.name, key)
        entries = [e for e in lock.entries if e.applies(interp.markers)]
        from .assemble import assemble
        from .trees import installed
        from .wheelcache import WheelCache

        artifacts = WheelCache(store, interp, recipe, offline, progress,
                               installed=installed(store, interp) if link else None
                               ).fill(entries)
        for attempt in (1, 2):
            tmp = Path(tempfile.mkdtemp(prefix=store.layout.tmp_env_prefix(recipe.name, key),
                                        dir=store.envs))
            try:
                assemble(tmp, recipe, lock, interp, artifacts, key, store, progress,
                         fixed_time, link)
                progress(f"publishing {final}")
                if not publish_dir(tmp, final):   # published meanwhile: same key, same bytes
                    remove_tree(tmp)
                break
            except BaseException as exc:
                remove_tree(tmp)
                if not _discard_damaged(exc, progress):
                    raise
                if attempt == 2:
                    raise BuildError(f"{exc}, again after it was installed anew") from None
                # the wheels of installed trees were found, not read: now each is hashed
                artifacts = WheelCache(store, interp, recipe, offline, progress).fill(entries)
    if replaced is not None:
        remove_tree(replaced)
    return _result(final, key, cached=False, moved=moved)


def _discard_damaged(exc: BaseException, progress: Progress) -> bool:
    """True if `exc` is a store's tree found damaged, now discarded (built again next)."""
    from .trees import TreeDamaged, discard

    if not isinstance(exc, TreeDamaged):
        return False
    progress(f"{exc}; installing {'that wheel' if len(exc.trees) == 1 else 'those wheels'} "
             "again")
    for tree in exc.trees:
        discard(tree, "it differs from its record")
    return True


def trees_identity() -> str:
    from .trees import identity

    return identity()


def _manifest_id(env: Path) -> str | None:
    """Which copy of the env is there: its manifest's inode and change time."""
    try:
        st = (env / MANIFEST).stat()
    except OSError:
        return None
    return f"{st.st_ino} {st.st_ctime_ns}"


def _judge(final: Path, check: Check | None, progress: Progress) -> str | None:
    """"intact" if an env is at `final` and `check` finds nothing wrong; else the identity
    of the env that is there (None: none), so the lock holder knows what it saw."""
    seen = _manifest_id(final)
    if seen is None:
        return None
    problems = check(final) if check is not None else []
    if not problems:
        return "intact"
    log.warning("%s differs from its manifest:\n%s", final, "\n".join(problems[:20]))
    progress(f"{final.name} differs from its manifest ({len(problems)} differences, "
             f"first: {problems[0]})")
    return seen


def _result(final: Path, key: str, cached: bool, moved: Path | None = None) -> BuildResult:
    mark_used(str(final))   # a build or reuse is a use: `envbuild gc` keeps the env
    return BuildResult(final, key, read_manifest(final).digest, cached, moved)


def check_interpreter(recipe: Recipe, lock: Lock, interp: Interpreter,
                      where: str = "") -> None:
    """The interpreter satisfies the recipe's requires-python and is the lock's Python."""
    what = f"{interp.executable}{' in ' + where if where else ''}"
    recipe.check_python(interp.version, f"{what} (Python {interp.version})",
                        "pass --base" if where else "pass --python")
    locked_for = lock.header.get("python", "").split(" ")[0]
    have = ".".join(interp.version.split(".")[:2])
    fix = "--base with a Python" if where else "--python"
    if locked_for and locked_for != have:
        raise InputError(f"{lock.path}: locked for Python {locked_for}, found "
                         f"{what} (Python {have}); pass {fix} {locked_for}, "
                         f"or lock for this one: `envbuild lock {recipe.path} --python {have}`")
