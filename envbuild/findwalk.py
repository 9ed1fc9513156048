"""The files level's walk by GNU find, where the host has it: one `find` per share of the
env's subtrees, running at once (in C, on both cores) while this process compares the upper
levels and reads the sidecar. Stdlib only.

Each path but a directory is listed as `KIND<TAB>MODE<TAB>SIZE<TAB>PATH`, which is its
sidecar line without the sha256: a path whose listing equals its sidecar line so cut is as
the build left it (kind, mode and size), and nothing else is. A path owned by someone
untrusted, or writable by group or others, is listed once more, marked. When every line is
in the listing and the listing holds nothing else, nothing differs. Otherwise the paths
that differ, or are marked, are few: they go back to the caller, whose own comparison
(`verify_files`) looks at each again with lstat. So find only ever narrows what the walk in
Python would look at, never decides a difference; anything unexpected (no GNU find, a find
that fails, a line it cannot read, threads that make forking unsafe) gives None, and the
caller walks in Python."""

from __future__ import annotations

import os

# GNU find only: `-printf` (BusyBox's find has none, and fails: the walk in Python follows)
FINDS = ("/usr/bin/find", "/bin/find")
_LINE = "%y\\t%#m\\t%s\\t%p\\0"
_MARK = "!"                # then the path: untrusted owner, or group/other-writable
_NOT_A_START = "-()!,"     # what find would read as its expression, not a start point
_SHA_FIELD = 65            # a sidecar line's sha256 and the tab after it


class Odd:
    """What the listing does not match: `paths` differ from their sidecar line (or have
    none, or are missing), `marked` need the owner and mode check."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.marked: set[str] = set()


class Listing:
    """`find` over each share of subtrees (env-relative dirs), run in the env and writing
    into a pipe of its own; `start` returns None where this host or process cannot (then
    nothing runs)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.outs: list[int] = []
        self.marks = False      # whether a line may be marked

    @classmethod
    def start(cls, env: str, shares: list[list[str]], trusted: set[int]) -> Listing | None:
        find = next((f for f in FINDS if os.access(f, os.X_OK)), None)
        if (find is None or _sigchld_ignored()
                or any(unit[0] in _NOT_A_START for share in shares for unit in share)):
            return None   # (with SIGCHLD ignored the kernel would reap the finds unseen)
        owners = [w for uid in sorted(trusted) for w in ("!", "-uid", str(uid))]
        expression = ["-mindepth", "1",
                      "!", "-type", "l", "(", "-perm", "/022", "-o", *owners, ")",
                      "-printf", _MARK + "%p\\0", ",",
                      "!", "-type", "d", "-printf", _LINE]
        listing = cls()
        try:
            for share in shares:
                if share:
                    out, into = os.pipe()
                    listing.outs.append(out)
                    _widen(into)
                    try:
                        listing.pids.append(_spawn(env, into, [find, *share, *expression]))
                    finally:
                        os.close(into)
        except OSError:
            listing.close()
            return None
        return listing

    def odd(self, lines: list[str], ranges: list[tuple[int, int]]) -> Odd | None:
        """What differs from the sidecar `lines` (sorted, no header) in the `ranges` of
        them under the subtrees listed; None where a find failed or listed a line this
        cannot read."""
        # each line without its sha256 (the mode has 4 digits: the size starts at 7), cut
        # and hashed while the finds run
        expected = {line[:(at := line.index("\t", 7) + 1)] + line[at + _SHA_FIELD:]
                    for lo, hi in ranges for line in lines[lo:hi]}
        found = self._read()
        if found is None:
            return None
        odd = Odd()
        if self.marks:
            odd.marked = {line[1:] for line in found if line.startswith(_MARK)}
            found.difference_update(_MARK + rel for rel in odd.marked)
        if found == expected:
            return odd   # every line listed, and nothing else
        for line in found - expected:
            if line.count("\t") != 3:
                return None   # a name with a tab in it: the walk in Python reads it
            odd.paths.add(line.split("\t", 3)[3])
        odd.paths.update(line.split("\t", 3)[3] for line in expected - found)
        return odd

    def _read(self) -> set[str] | None:
        """Every line the finds list, read as they write; None if one did not end well
        (or ended a line short)."""
        import select

        poller = select.poll()
        rest = {}
        for out in self.outs:
            poller.register(out, select.POLLIN)
            rest[out] = b""
        found: set[str] = set()
        while rest:
            for out, _event in poller.poll():
                chunk = os.read(out, 1 << 20)
                if not chunk:
                    poller.unregister(out)
                    if rest.pop(out):
                        self.close()
                        return None
                    continue
                whole, _, rest[out] = (rest[out] + chunk).rpartition(b"\0")
                if whole:
                    found.update(os.fsdecode(whole).split("\0"))
                    self.marks = self.marks or _MARK.encode() in whole   # or in a name
        ok = True
        while self.pids:
            try:
                _, status = os.waitpid(self.pids[-1], 0)
            except OSError:
                status = -1
            self.pids.pop()
            ok = ok and status == 0
        self.close()
        return found if ok else None

    def close(self) -> None:
        """Stop and reap the finds still running; close their pipes."""
        for pid in self.pids:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
        self.pids = []
        for out in self.outs:
            os.close(out)
        self.outs = []


def _widen(pipe: int) -> None:
    """A pipe that holds a find's whole listing of a big share (a megabyte, Linux's
    default most), so a find does not wait on this process while it cuts the lines."""
    try:
        import fcntl

        fcntl.fcntl(pipe, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass   # a smaller pipe: the find waits a little


def _spawn(env: str, out: int, argv: list[str]) -> int:
    """`argv` run in `env`, its output into `out`, its errors nowhere. Forked, since
    `posix_spawn` cannot change dir: the caller makes sure no other thread runs."""
    import sys

    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        raise OSError("other threads run: forking is not safe")
    pid = os.fork()
    if pid == 0:   # the child: nothing but system calls, then exec
        try:
            os.chdir(env)
            os.dup2(out, 1)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.execve(argv[0], argv, {"LC_ALL": "C"})
        finally:
            os._exit(127)
    return pid


def _sigchld_ignored() -> bool:
    import _signal  # type: ignore[import-not-found,unused-ignore]  # `signal`: ~13 ms

    from .children import SIGCHLD

    return bool(_signal.getsignal(SIGCHLD) == _signal.SIG_IGN)
