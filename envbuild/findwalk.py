"""The files level's walk by GNU find, where the host has it: one `find` per share of the
env's subtrees, running at once (in C, on both cores) while this process compares the upper
levels; their listings held against the files sidecar as byte strings, set against set.
Stdlib only.

Each path but a directory is listed as `KIND<TAB>MODE<TAB>SIZE<TAB>PATH`, which is its
sidecar line without the sha256: a line equal to its sidecar line is as the build left it
(kind, mode and size), and nothing else is. A path owned by someone untrusted, or writable by
group or others, is listed once more, marked. The paths that differ, or are marked, are few:
they go back to the caller, whose own comparison (`verify_files`) looks at each again with
lstat. So find only ever narrows what the walk in Python would look at, never decides a
difference; anything unexpected (no GNU find, a find that fails, a line it cannot read)
gives None, and the caller walks in Python."""

from __future__ import annotations

import os

# GNU find only: `-printf` (BusyBox's find has none, and fails: the walk in Python follows)
FINDS = ("/usr/bin/find", "/bin/find")
_LINE = "%y\\t%#m\\t%s\\t%p\\0"
_MARK = b"!"   # then the path: untrusted owner, or group/other-writable


class Odd:
    """What the listing does not match: `paths` differ from their sidecar line (or have
    none, or are missing), `marked` need the owner and mode check."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.marked: set[str] = set()


class Listing:
    """`find` over each share of subtrees (env-relative dirs), each writing into a memory
    file; `start` returns None where this host cannot (then nothing runs)."""

    def __init__(self, env: str, pids: list[int], outs: list[int]) -> None:
        self.env = env
        self.pids = pids
        self.outs = outs

    @classmethod
    def start(cls, env: str, shares: list[list[str]], trusted: set[int]) -> Listing | None:
        find = next((f for f in FINDS if os.access(f, os.X_OK)), None)
        if find is None or not hasattr(os, "memfd_create") or _sigchld_ignored():
            return None   # (with SIGCHLD ignored the kernel would reap the finds unseen)
        env = os.path.abspath(env)
        owners = [w for uid in sorted(trusted) for w in ("!", "-uid", str(uid))]
        expression = ["-mindepth", "1",
                      "!", "-type", "l", "(", "-perm", "/022", "-o", *owners, ")",
                      "-printf", _MARK.decode() + "%p\\0", ",",
                      "!", "-type", "d", "-printf", _LINE]
        listing = cls(env, [], [])
        try:
            for share in shares:
                if not share:
                    continue
                out = os.memfd_create("envbuild-find")
                listing.outs.append(out)
                listing.pids.append(os.posix_spawn(
                    find, [find, *(f"{env}/{unit}" for unit in share), *expression],
                    {"LC_ALL": "C"},
                    file_actions=[(os.POSIX_SPAWN_DUP2, out, 1),
                                  (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]))
        except OSError:
            listing.close()
            return None
        return listing

    def odd(self, sidecar: bytes, units: list[str]) -> Odd | None:
        """What differs from the sidecar (its bytes, header and all) under `units`; None
        where a find failed or listed a line this cannot read."""
        expected = _expected(sidecar)
        listed = self._wait()
        if expected is None or listed is None:
            return None
        prefix = self.env.encode(errors="surrogateescape") + b"/"
        found = set(listed.replace(b"\t" + prefix, b"\t").split(b"\0"))
        found.discard(b"")
        odd = Odd()
        for line in found - expected:
            if line.startswith(_MARK + prefix):
                odd.marked.add(os.fsdecode(line[len(prefix) + 1:]))
            elif line.count(b"\t") == 3:
                odd.paths.add(os.fsdecode(line.split(b"\t", 3)[3]))
            else:
                return None   # a name with a tab in it: the walk in Python reads it
        depth = units[0].count("/") + 1 if units else 0
        under = set(units)
        for line in expected - found:
            if line.count(b"\t") != 3:
                continue   # the header
            path = line.split(b"\t", 3)[3].decode("utf-8", "surrogateescape")
            if "/".join(path.split("/", depth)[:depth]) in under:   # not the upper levels'
                odd.paths.add(path)
        return odd

    def _wait(self) -> bytes | None:
        """The listings, once every find has ended well; None if one did not."""
        ok = True
        while self.pids:
            try:
                _, status = os.waitpid(self.pids[-1], 0)
            except OSError:
                status = -1
            self.pids.pop()
            ok = ok and status == 0
        parts = []
        for out in self.outs:
            os.lseek(out, 0, os.SEEK_SET)
            with open(out, "rb", closefd=False) as fh:
                parts.append(fh.read())
        self.close()
        return b"".join(parts) if ok else None

    def close(self) -> None:
        """Stop and reap the finds still running; free their memory files."""
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


def _sigchld_ignored() -> bool:
    import _signal  # type: ignore[import-not-found,unused-ignore]  # `signal`: ~13 ms

    from .children import SIGCHLD

    return bool(_signal.getsignal(SIGCHLD) == _signal.SIG_IGN)


def _expected(sidecar: bytes) -> set[bytes] | None:
    """The sidecar's lines without their sha256 field, as find lists them (the header
    line among them, matching nothing); None if a line has not its five fields."""
    fields = sidecar.split(b"\t")
    if len(fields) != 4 * (sidecar.count(b"\n") - 1) + 1:
        return None
    del fields[3::4]
    expected = set(b"\t".join(fields).split(b"\n"))
    expected.discard(b"")
    return expected
