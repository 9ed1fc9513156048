"""Installing the wheels whose trees the store lacks: each into a staging dir of its own,
its pycs compiled, every file's mode, size and sha256 recorded, made read-only and
published at its place in `trees/`.

A build installs them in forked children (`Installing`) while it puts the other trees'
files in place: the wheels are shared out by size among up to one child per core (four at
most), each of which installs its share and compiles it; the build waits for them only
when it needs their trees. A child reports a failure as the exception it raised. Where
forking is not safe (`forking_unsafe`, or SIGCHLD ignored), the wheels are installed in
this process, before the build goes on."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .children import forking_unsafe, sigchld_ignored
from .dlcache import checked_files
from .errors import BuildError, CacheIntegrityError
from .fsutil import publish_dir, remove_tree, shares_by_size
from .hostreq import read_elf
from .interpreter import Interpreter
from .sidecars import FILES_SCHEMA, files_line, walk
from .store import Store
from .trees import FILES, INFO, ROOT, TREE_FORMAT, Tree, identity, load_tree

if TYPE_CHECKING:
    from .wheelcache import Artifact

Missing = list[tuple["Artifact", Path]]   # each wheel to install, and its tree's place
MAX_CHILDREN = 4


class Installing:
    """The missing trees being installed by forked children, each with the read end of a
    pipe its failure comes through; `wait` gives the trees."""

    def __init__(self, store: Store, missing: Missing, interp: Interpreter) -> None:
        self.store, self.missing, self.interp = store, missing, interp
        self.children: list[tuple[int, int]] = []   # pid, read end of its pipe
        self.done: dict[str, Tree] = {}

    @classmethod
    def start(cls, store: Store, missing: Missing, interp: Interpreter) -> Installing:
        """The children started; or, where forking is not safe, every tree installed here
        already."""
        job = cls(store, missing, interp)
        if forking_unsafe() or sigchld_ignored():
            job.done = install_trees(store, missing, interp)
            return job
        sys.stderr.flush()
        sys.stdout.flush()
        try:
            for share in shares_by_size(missing, lambda m: m[0].wheel.stat().st_size,
                                        min(MAX_CHILDREN, os.cpu_count() or 1)):
                job.children.append(_fork(store, share, interp))
        except BaseException:
            job.reap()
            raise
        return job

    def wait(self) -> dict[str, Tree]:
        """The installed trees, by wheel sha256, once every child ended; a child's failure
        raised here (the first, after all ended)."""
        failures = []
        while self.children:
            pid, out = self.children.pop(0)
            report = _read_all(out)
            status = os.waitpid(pid, 0)[1]
            if status != 0:
                failures.append(_failure(report, status))
        if failures:
            raise failures[0]
        for art, where in self.missing:
            if art.wheel_sha256 not in self.done:
                tree = load_tree(where)
                if tree is None:
                    raise BuildError(f"{where}: expected the tree of {art.wheel.name} just "
                                     "installed, found none")
                self.done[art.wheel_sha256] = tree
        return self.done

    def reap(self) -> None:
        """For a build that fails before it waits: its children end as they would (their
        trees serve the next build; a Ctrl-C reached them as it reached the build, and
        each removes what it staged) and are reaped, their reports unread."""
        while self.children:
            pid, out = self.children.pop(0)
            os.close(out)
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass


def _fork(store: Store, share: Missing, interp: Interpreter) -> tuple[int, int]:
    """A child that installs `share` and exits: 0, or 1 with its exception pickled into
    the pipe whose read end is returned with its pid."""
    out, into = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child
        code = 1
        try:
            os.close(out)
            install_trees(store, share, interp)
            code = 0
        except BaseException as exc:  # noqa: BLE001  (the parent raises it)
            _report(into, exc)
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(into)
    return pid, out


def _report(into: int, exc: BaseException) -> None:
    """`exc` pickled into the pipe (pickle imported only for a failure: a child's every
    import is on a rebuild's critical path)."""
    import pickle

    try:
        data = pickle.dumps(exc)
        # one whose class takes other arguments than its args (ToolError) would not load
        pickle.loads(data)
    except Exception:  # noqa: BLE001
        data = pickle.dumps(BuildError(str(exc)))
    try:
        while data:
            data = data[os.write(into, data):]
    except OSError:
        pass


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _failure(report: bytes, status: int) -> BaseException:
    """What a child that ended with `status` raised, as it raised it where it can be read
    back."""
    import pickle

    try:
        exc = pickle.loads(report)
        if isinstance(exc, BaseException):
            return exc
    except Exception:  # noqa: BLE001  (an unreadable report: the status says enough)
        pass
    how = (f"was killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
           else f"ended with status {os.waitstatus_to_exitcode(status)}")
    return BuildError(f"installing wheels into the store: a child process {how}")


def install_trees(store: Store, missing: list[tuple[Artifact, Path]],
                  interp: Interpreter) -> dict[str, Tree]:
    """Each missing wheel installed, its pycs compiled, sealed and published at its place;
    by the wheel's sha256."""
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
