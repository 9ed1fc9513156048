"""Hashing many files at once in forked processes, while the caller goes on. Stdlib only.

OpenSSL's sha256 is fast; what costs is Python's per-file work (open, read, close), which
threads would serialize on the GIL. So the work is split across forked processes: chunks of
the file list are claimed from a pipe (a read of 4 bytes is atomic), so a busy process takes
fewer; each child sends back `index digest` lines and an `end` line when its queue runs dry.
The caller claims chunks too, once it is done with its own work, in `results()`. Whatever a
child did not report whole (it failed, was killed, could not be forked) the caller hashes
itself. Use as a context manager: leaving it reaps every child.
"""

from __future__ import annotations

import os

from .children import DefaultSigchld, forking_unsafe
from .hashing import hash_file

TYPE_CHECKING = False   # not typing's: importing typing costs the launch path `re`
if TYPE_CHECKING:
    from collections.abc import Iterator


class Hasher:
    def __init__(self, root: str, files: list[tuple[str, int]]) -> None:
        """Start hashing `files` ([(path relative to root, size)])."""
        self.root, self.files = root, files
        self.chunk = max(8, len(files) // 512)
        self.children: list[tuple[int, int]] = []
        self.queue = -1
        self._sigchld = DefaultSigchld(only_if_ignored=True)
        starts = range(0, len(files), self.chunk)
        if len(files) <= 64 or len(starts) * 4 > 65536:
            return   # too few to be worth a process, or more claims than a pipe holds
        self.queue, feed = os.pipe()
        os.write(feed, b"".join(i.to_bytes(4, "little") for i in starts))
        os.close(feed)
        for _ in range(self._workers() - 1):
            try:
                self.children.append(self._fork())
            except OSError:
                break   # no more processes (a pid limit): the caller hashes what is left

    def _workers(self) -> int:
        if forking_unsafe():
            return 1
        self._sigchld.__enter__()
        if not self._sigchld.usable:
            return 1   # not the main thread
        return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)

    def _fork(self) -> tuple[int, int]:
        rfd, wfd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:   # the child: hash, report, leave without running any cleanup
            status = 1
            try:
                os.close(rfd)
                lines = "".join(f"{i} {d}\n" for i, d in self._drain())
                with open(wfd, "w", encoding="utf-8") as out:
                    out.write(lines + "end\n")
                status = 0
            finally:
                os._exit(status)
        os.close(wfd)
        return pid, rfd

    def _drain(self) -> Iterator[tuple[int, str]]:
        while self.queue >= 0:
            claim = os.read(self.queue, 4)
            if len(claim) < 4:
                return
            start = int.from_bytes(claim, "little")
            for i in range(start, min(start + self.chunk, len(self.files))):
                yield i, self._hash(i)

    def _hash(self, index: int) -> str:
        rel, size = self.files[index]
        return hash_file(os.path.join(self.root, rel), size)

    def results(self) -> dict[str, str]:
        """{relpath: sha256 hex, or '!' and why it could not be read}."""
        done: dict[int, str] = dict(self._drain())
        for _pid, rfd in self.children:
            with open(rfd, encoding="utf-8", closefd=False) as fh:
                lines = fh.read().split("\n")
            if lines[-2:] == ["end", ""]:   # reported whole
                for line in lines[:-2]:
                    index, _, digest = line.partition(" ")
                    done[int(index)] = digest
        self.close()
        return {rel: done[i] if i in done else self._hash(i)
                for i, (rel, _size) in enumerate(self.files)}

    def close(self, kill: bool = False) -> None:
        """Reap every child (killed first with `kill`) and close every pipe."""
        for pid, rfd in self.children:
            if kill:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            os.close(rfd)
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
        self.children = []
        if self.queue >= 0:
            os.close(self.queue)
            self.queue = -1
        self._sigchld.restore()

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=True)
