"""The store: where wheels, envs and run records live; env keys; the builders' lock.

Locks hold on network file systems: the owner record is written first and linked into
place in one step (link fails if the lock exists); a holder that is gone on this host, or
whose lease (the lock's mtime, refreshed while it works) expired, is taken over by rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import BUILD_FORMAT
from .children import LOCK_REFRESHER
from .errors import EnvbuildError, InputError
from .fsutil import remove_tree, spread_below
from .layout import StoreLayout, store_root

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
REFRESH_SECONDS = 10.0
TAKEOVER_STALE_SECONDS = 10.0   # moving a dead lock aside takes milliseconds


class Store:
    """A store on disk; `layout` knows its paths, these are the ones the build side uses."""

    __slots__ = ("root", "layout")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = StoreLayout(str(root))

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @staticmethod
    def path_for(explicit: Path | None = None) -> Path:
        """Where the store is: `explicit`, else $ENVBUILD_STORE, else the user cache dir."""
        return Path(store_root(explicit))

    @classmethod
    def locate(cls, explicit: Path | None = None) -> Store:
        """The store, created if need be."""
        root = cls.path_for(explicit)
        if root.exists() and not root.is_dir():
            raise InputError(f"store: {root} is not a directory; pass --store DIR (or set "
                             "ENVBUILD_STORE) naming a directory, new or existing")
        try:
            for sub in StoreLayout.SUBDIRS:
                # run records hold secrets' neighbours: `runs/` is this user's when envbuild
                # makes it; an existing one (a shared store's) keeps the mode it was given
                (root / sub).mkdir(0o700 if sub == "runs" else 0o777, parents=True,
                                   exist_ok=True)
            for sub in ("envs", "tmp"):   # where envs, trees and venvs are made
                spread_below(str(root / sub))
        except OSError as exc:
            raise InputError(f"store: cannot create {root}: {exc.strerror}; pass --store "
                             "DIR naming a directory you can write") from None
        return cls(root)

    @property
    def envs(self) -> Path:
        return Path(self.layout.envs)

    @property
    def tmp(self) -> Path:
        return Path(self.layout.tmp)

    def env_path(self, name: str, env_key: str) -> Path:
        return Path(self.layout.env_dir(name, env_key))


def env_key(lock_text: str, recipe_digest: str, interpreter: dict[str, object],
            platform: str, launcher: str, installer: str) -> str:
    """A digest of everything that decides the env's bytes; `launcher` is the digest of
    the launch code every env carries, `installer` names the pip that installs (its
    RECORD and INSTALLER files are in the tree)."""
    material = json.dumps({"lock": hashlib.sha256(lock_text.encode()).hexdigest(),
                           "recipe": recipe_digest, "interpreter": interpreter,
                           "platform": platform, "format": BUILD_FORMAT,
                           "launcher": launcher, "installer": installer},
                          sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()


# ---- the lock ----------------------------------------------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot: tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _owner() -> dict[str, object]:
    # the host as gethostname(2) names it (uname's node name: `socket` is not imported for it)
    return {"host": os.uname().nodename, "boot_id": _boot_id(), "pid": os.getpid(),
            "start": _start_time(os.getpid()), "token": os.urandom(16).hex()}


def _dead_holder(path: Path) -> str | None:
    """The token of the lock's holder if that holder is gone, else None."""
    try:
        st = path.stat()
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # vanished or half-read: look again on the next round
    token = str(owner.get("token", ""))
    if owner.get("host") == os.uname().nodename:
        if owner.get("boot_id") != _boot_id():
            return token
        pid = int(owner.get("pid", 0))
        return token if not pid or _start_time(pid) != owner.get("start") else None
    return token if time.time() - st.st_mtime > LEASE_SECONDS else None


def _take_over(path: Path, dead: str, record: Path, token: str) -> None:
    """Move a dead holder's lock aside, one waiter at a time. Under `<lock>.takeover` (a
    link of the waiter's own `record`) the holder is judged again, so a lock that another
    waiter has taken meanwhile is never moved. A takeover lock older than
    TAKEOVER_STALE_SECONDS belonged to a waiter that died taking over, and is removed."""
    guard = path.with_name(f"{path.name}.takeover")
    try:
        os.utime(record)   # the link shares its mtime, by which others judge it stale
        os.link(record, guard)
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_SECONDS:
                guard.unlink()
        except OSError:
            pass
        return
    try:
        if _dead_holder(path) == dead:
            stale = path.with_name(f"{path.name}.stale.{token}")
            os.rename(path, stale)
            log.warning("took over lock %s from a builder that is gone", path)
            stale.unlink()
    except FileNotFoundError:
        pass
    finally:
        guard.unlink(missing_ok=True)


@contextmanager
def exclusive(path: Path, poll: float = 0.1,
              on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock at `path` for the duration; waits for a live holder, takes over a dead one.

    `on_wait` is called once, when the lock is found held by a live holder.
    """
    owner = _owner()
    token = str(owner["token"])
    tmp = path.with_name(f"{path.name}.{token}")
    tmp.write_text(json.dumps(owner))
    try:
        while True:
            if _linked(tmp, path, token):
                break
            dead = _dead_holder(path)
            if dead is not None:
                _take_over(path, dead, tmp, token)
                continue
            if on_wait is not None:
                on_wait()
                on_wait = None
            time.sleep(poll)
    finally:
        tmp.unlink(missing_ok=True)
    stop = threading.Event()
    refresher = threading.Thread(target=_refresh, args=(path, stop), daemon=True,
                                 name=LOCK_REFRESHER)
    refresher.start()
    try:
        yield
    finally:
        stop.set()
        refresher.join()
        _release(path, token)


def _linked(record: Path, path: Path, token: str) -> bool:
    """Link the owner record into place, then read it back: only the content decides who
    holds the lock (a network file system may answer EEXIST to a link that succeeded when
    the request was sent again, and sshfs reports a link count of 1 for every file). An
    errno other than EEXIST, the lock not ours, is a failure to take it."""
    try:
        os.link(record, path)
    except FileExistsError:
        pass
    except OSError as exc:
        if _token_at(path) != token:
            raise EnvbuildError(f"lock {path}: expected to link {record.name} into place, "
                                f"found {exc.strerror or exc}") from None
    return _token_at(path) == token


def _token_at(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text()).get("token"))
    except (OSError, ValueError, AttributeError):
        return None


def _refresh(path: Path, stop: threading.Event) -> None:
    while not stop.wait(REFRESH_SECONDS):
        try:
            os.utime(path)
        except OSError:
            return


def _release(path: Path, token: str) -> None:
    try:
        if json.loads(path.read_text()).get("token") == token:
            path.unlink()
    except (OSError, ValueError):
        pass


def clear_leftovers(store: Store, name: str, key: str) -> None:
    """Remove half-built dirs of this key; only the lock holder may call this."""
    prefix = store.layout.tmp_env_prefix(name, key)
    for entry in store.envs.iterdir():
        if entry.name.startswith(prefix):
            log.info("removing the leftover of an interrupted build: %s", entry)
            remove_tree(entry)


def lock_held(path: Path) -> bool:
    """Whether a live holder (or one not yet judged gone) holds the lock at `path`."""
    return path.exists() and _dead_holder(path) is None
