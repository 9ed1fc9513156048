"""The files level's walk by GNU find, where the host has it: one `find` lists the whole
env, in C on a core of its own, started before the quick level's checks, while this process
runs them and reads the sidecar on the other. Stdlib only.

Each path but a directory is listed as `KIND<TAB>MODE<TAB>SIZE<TAB>PATH`, which is its
sidecar line without the sha256: a path whose listing equals its sidecar line so cut is as
the build left it (kind, mode and size), and nothing else is. A path owned by someone
untrusted, or writable by group or others, is listed once more, marked. The listing is held
against the cut lines as it comes: when every one of them is listed and nothing else is,
nothing differs. Otherwise the paths that differ, or are marked, are few: they go back to
the caller, whose own comparison (`verify_files`) looks at each again with lstat. So find
only ever narrows what the walk in Python would look at, never decides a difference;
anything unexpected (no GNU find, a find that fails, a line it cannot read, threads that
make forking unsafe) gives None, and the caller walks in Python."""

from __future__ import annotations

import os

from .children import forking_unsafe, sigchld_ignored

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
    """`find` over env-relative paths, run in the env and writing into a pipe; `start`
    returns None where this host or process cannot (then nothing runs)."""

    def __init__(self, pid: int, out: int, since: int | None = None, env: str = "") -> None:
        self.pid: int | None = pid
        self.out: int | None = out
        self.since = since    # a listing of what changed after this time (ns): `changed`
        self.env = env        # ... in the env at this path

    @classmethod
    def start(cls, env: str, starts: list[str], trusted: set[int]) -> Listing | None:
        """`find` of `starts` (env-relative paths) and all below them."""
        owners = [w for uid in sorted(trusted) for w in ("!", "-uid", str(uid))]
        return cls._start(env, starts, [
            "!", "-type", "l", "(", "-perm", "/022", "-o", *owners, ")",
            "-printf", _MARK + "%p\\0", ",", "!", "-type", "d", "-printf", _LINE])

    @classmethod
    def start_since(cls, root: int, starts: list[str], since: int, env: str
                    ) -> Listing | None:
        """`find` of what under `starts` changed inode after `since` (ns since the epoch,
        as change times are kept), each as `KIND<TAB>PATH`, run in the env whose root dir
        `root` holds open (at `env`)."""
        return cls._start(root, starts, ["-newerct", f"@{since // 10**9}.{since % 10**9:09d}",
                                         "-printf", "%y\\t%p\\0"], since, env)

    @classmethod
    def _start(cls, where: str | int, starts: list[str], expression: list[str],
               since: int | None = None, env: str = "") -> Listing | None:
        """`find` of `starts` run in `where` (the env's path, or its root dir held open)."""
        find = next((f for f in FINDS if os.access(f, os.X_OK)), None)
        if (find is None or sigchld_ignored()
                or any(path[0] in _NOT_A_START for path in starts)):
            return None   # (with SIGCHLD ignored the kernel would reap the find unseen)
        out, into = os.pipe()
        try:
            _widen(into)
            return cls(_spawn(where, into, [find, *starts, *expression]), out, since, env)
        except OSError:
            os.close(out)
            return None
        finally:
            os.close(into)

    def changed(self) -> list[tuple[str, str]] | None:
        """What `start_since` listed: each changed path's kind (find's `%y`) and path;
        None where the find failed or listed a line this cannot read."""
        read = self._read(set())
        if read is None:
            return None
        out = []
        for line in read[1]:
            kind, tab, rel = line.partition("\t")
            if not tab or "\t" in rel:
                return None   # a name with a tab in it: the full check reads it
            out.append((kind, rel))
        return out

    def odd(self, lines: list[str], links: bool) -> Odd | None:
        """What differs from the sidecar `lines` (sorted, no header; `links`: some of
        them are symlinks'); None where the find failed or listed a line this cannot read.
        """
        # `_cut` of every line, inline (a call per line costs), hashed while the find runs
        expected = {line[:(at := line.index("\t", 7) + 1)] + line[at + _SHA_FIELD:]
                    for line in lines}
        odd = Odd()
        if links:   # a symlink's line records its target: each is looked at again
            for line in lines:
                if line.startswith("l\t"):
                    cut = _cut(line)
                    expected.discard(cut)
                    odd.paths.add(_path(cut))
        read = self._read(expected)
        if read is None:
            return None
        listed, strays, chunks = read
        for line in strays:   # marked, or not as the sidecar has it
            if line.startswith(_MARK):
                odd.marked.add(line[1:])
            elif line.count("\t") == 3:
                odd.paths.add(_path(line))
            else:
                return None   # a name with a tab in it: the walk in Python reads it
        if listed < len(expected):   # some line not listed: which
            found = set("\0".join(chunks).split("\0"))
            odd.paths.update(_path(line) for line in expected - found)
        return odd

    def _read(self, expected: set[str]) -> tuple[int, list[str], list[str]] | None:
        """The listing, held against `expected` as the find writes it: how many of its
        lines are expected, those that are not, and the listing itself (in pieces); None
        if the find did not end well, or ended a line short."""
        assert self.out is not None
        listed, strays, chunks, rest = 0, [], [], b""
        while True:
            chunk = os.read(self.out, 1 << 20)
            if not chunk:
                break
            whole, _, rest = (rest + chunk).rpartition(b"\0")
            if whole:
                text = os.fsdecode(whole)
                chunks.append(text)
                lines = text.split("\0")
                if expected.issuperset(lines):
                    listed += len(lines)
                else:
                    for line in lines:
                        if line in expected:
                            listed += 1
                        else:
                            strays.append(line)
        try:
            status = os.waitpid(self.pid, 0)[1] if self.pid is not None else -1
        except OSError:
            status = -1
        self.pid = None
        self.close()
        return (listed, strays, chunks) if status == 0 and not rest else None

    def close(self) -> None:
        """Stop and reap the find if it still runs; close its pipe."""
        if self.pid is not None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except OSError:
                pass
            self.pid = None
        if self.out is not None:
            os.close(self.out)
            self.out = None


def _cut(line: str) -> str:
    """A sidecar line as find lists its path: without the sha256 (the mode has 4 digits,
    so the size starts at 7)."""
    at = line.index("\t", 7) + 1
    return line[:at] + line[at + _SHA_FIELD:]


def _path(listed: str) -> str:
    """The path of a listing's line (or a cut sidecar line): after the third tab."""
    return listed.split("\t", 3)[3]


def _widen(pipe: int) -> None:
    """A pipe that holds a big env's whole listing (4 MB where the user may, else Linux's
    default most, 1 MB), so the find seldom waits on this process while it cuts the
    sidecar's lines."""
    try:
        import fcntl
    except ImportError:
        return
    for size in (4 << 20, 1 << 20):
        try:
            fcntl.fcntl(pipe, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
            return
        except OSError:
            pass   # over the limit: a smaller pipe, the find waits a little


def _spawn(env: str | int, out: int, argv: list[str]) -> int:
    """`argv` run in `env` (a path, or a dir held open), its output into `out`, its errors
    nowhere. Forked, since `posix_spawn` cannot change dir: the caller makes sure no other
    thread runs."""
    if forking_unsafe():
        raise OSError("other threads run: forking is not safe")
    pid = os.fork()
    if pid == 0:   # the child: nothing but system calls, then exec
        try:
            if isinstance(env, int):
                os.fchdir(env)
            else:
                os.chdir(env)
            os.dup2(out, 1)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.execve(argv[0], argv, {"LC_ALL": "C"})
        finally:
            os._exit(1)   # any status but 0: the walk in Python follows
    return pid
