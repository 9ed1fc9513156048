"""Waiting for child processes whatever the parent did to SIGCHLD. Stdlib only.

A parent that ignores SIGCHLD (`SIG_IGN`, inherited across exec) makes the kernel reap
children unseen: `waitpid` would fail and `sigwaitinfo` never return. Both the launcher and
the full-verify hashing pool restore the default while they wait, and put it back after.
"""

from __future__ import annotations

import sys

SIGCHLD = 17 if sys.platform.startswith("linux") else 20


class DefaultSigchld:
    """`with DefaultSigchld() as saved:` SIGCHLD at its default inside; `saved` is what
    it was (None off the main thread, or for a handler set from C: both left alone).
    `only_if_ignored` leaves a handler in place and replaces only SIG_IGN."""

    def __init__(self, only_if_ignored: bool = False) -> None:
        self.only_if_ignored = only_if_ignored
        self.saved: object = None
        self.usable = True

    def __enter__(self) -> object:
        import _signal  # type: ignore[import-not-found,unused-ignore]  # `signal`: ~13 ms

        try:
            if self.only_if_ignored and not sigchld_ignored():
                return None
            self.saved = _signal.signal(SIGCHLD, _signal.SIG_DFL)
        except ValueError:
            self.usable = False   # not the main thread: signals cannot be changed here
        return self.saved

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        if self.saved is not None:
            import _signal  # type: ignore[import-not-found,unused-ignore]

            _signal.signal(SIGCHLD, self.saved)
            self.saved = None


# the store lock's refresher thread (`store.exclusive`): it only waits on an event and
# touches the lock file, so a forked child can need nothing it holds
LOCK_REFRESHER = "envbuild: lock refresher"


def forking_unsafe() -> bool:
    """Whether other threads run (but the lock refresher): forking then can copy a lock
    another thread holds."""
    threading = sys.modules.get("threading")
    if threading is None or threading.active_count() == 1:
        return False
    me = threading.current_thread()
    return any(t is not me and t.name != LOCK_REFRESHER for t in threading.enumerate())


def sigchld_ignored() -> bool:
    """Whether SIGCHLD is ignored: the kernel then reaps children unseen."""
    import _signal  # type: ignore[import-not-found,unused-ignore]  # `signal`: ~13 ms

    return bool(_signal.getsignal(SIGCHLD) == _signal.SIG_IGN)
