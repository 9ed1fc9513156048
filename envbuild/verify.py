"""Verifying an env against its manifest at three levels. Stdlib only, and cheap to import:
the guard inside every env and image runs this with `python -I -S`.

Sidecars in `ENV/.envbuild/` are bound to the manifest by digest: `quick` (line-oriented,
what a launch needs) and `files` (one line per file; its sha256 *is* the tree digest).
"""

from __future__ import annotations

import os
import stat
import sys

from .errors import NotAnEnvError
from .names import escape, normalize, parse_dist_info, unescape

TYPE_CHECKING = False   # not typing's: importing typing costs the launch path `re`
if TYPE_CHECKING:
    from collections.abc import Iterator
    from io import FileIO

try:  # hashlib costs ~11 ms to import; the C module it wraps costs well under one.
    from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - Python 3.12+ renamed it
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment,unused-ignore]

MANIFEST = "envbuild-manifest.json"
META = ".envbuild"
QUICK = META + "/quick"
FILES = META + "/files"
QUICK_SCHEMA = "envbuild.quick/1"
FILES_SCHEMA = "envbuild.files/1"
LEVELS = ("quick", "files", "full")
LAUNCH_DIR = "lib/envbuild-launch"          # the guard's sys.path entry
LAUNCH_PKG = LAUNCH_DIR + "/envbuild"
_WRITABLE = stat.S_IWGRP | stat.S_IWOTH
_SIGCHLD = 17 if sys.platform.startswith("linux") else 20


class Difference:
    """One way the runtime differs from the manifest."""

    __slots__ = ("kind", "subject", "expected", "found")

    def __init__(self, kind: str, subject: str, expected: object, found: object) -> None:
        self.kind, self.subject = kind, subject
        self.expected, self.found = str(expected), str(found)

    def line(self) -> str:
        return f"{self.kind}: {self.subject}: expected {self.expected}, found {self.found}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "expected": self.expected,
                "found": self.found}

    def __repr__(self) -> str:
        return f"Difference({self.line()!r})"


class Report:
    __slots__ = ("env", "level", "manifest_digest", "differences", "quick")

    def __init__(self, env: str, level: str, digest: str | None, differences: list[Difference],
                 quick: dict[str, list[list[str]]]) -> None:
        self.env, self.level, self.manifest_digest = env, level, digest
        self.differences, self.quick = differences, quick

    @property
    def ok(self) -> bool:
        return not self.differences


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + str(sha256(data).hexdigest())


def read_quick(text: str) -> dict[str, list[list[str]]]:
    """The quick sidecar as {record kind: [fields, ...]} (tab-separated, escaped)."""
    lines = text.split("\n")
    if lines[0] != QUICK_SCHEMA:
        raise ValueError(f"expected {QUICK_SCHEMA}, found {lines[0][:40]!r}")
    out: dict[str, list[list[str]]] = {}
    for line in lines[1:]:
        if line:
            kind, *fields = line.split("\t")
            out.setdefault(kind, []).append([unescape(f) for f in fields])
    return out


def format_quick(records: list[tuple[str, ...]]) -> str:
    return QUICK_SCHEMA + "\n" + "".join(
        "\t".join(escape(f) for f in rec) + "\n" for rec in records)


def files_line(kind: str, mode: int, size: int, digest_hex: str, relpath: str) -> str:
    return f"{kind}\t{mode:04o}\t{size}\t{digest_hex}\t{escape(relpath)}\n"


def read_files(text: str) -> dict[str, tuple[str, int, int, str]]:
    """The files sidecar as {relpath: (kind 'f' or 'l', mode, size, sha256 hex)}."""
    lines = text.split("\n")
    if lines[0] != FILES_SCHEMA:
        raise ValueError(f"expected {FILES_SCHEMA}, found {lines[0][:40]!r}")
    out: dict[str, tuple[str, int, int, str]] = {}
    for line in lines[1:]:
        if line:
            kind, mode, size, digest, path = line.split("\t")
            out[unescape(path)] = (kind, int(mode, 8), int(size), digest)
    return out


def verify(env: str, level: str = "quick", expect: str | None = None,
           trusted_uids: tuple[int, ...] = (), environ: dict[str, str] | None = None,
           contract: bool = True) -> Report:
    """Compare the env at `env` with its manifest; raise NotAnEnvError if it is not one.

    `contract=False` leaves out the launch contract's required variables: the interpreter
    start hook checks the env, not how a program was launched.
    """
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {', '.join(LEVELS)}, found {level!r}")
    env = os.path.abspath(env)
    try:
        with open(os.path.join(env, MANIFEST), "rb") as fh:
            manifest = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        raise NotAnEnvError(f"{env}: not an envbuild env: expected {MANIFEST}, found none; "
                            "build one with `envbuild build RECIPE`") from None
    except OSError as exc:
        raise NotAnEnvError(f"{env}: cannot read {MANIFEST}: {exc.strerror}") from None
    digest = sha256_bytes(manifest)
    diffs: list[Difference] = []
    if expect is not None and expect != digest:
        diffs.append(Difference("manifest", MANIFEST, expect, digest))
    quick = _bound_sidecar(env, manifest, QUICK, b'"quick":"', diffs)
    records: dict[str, list[list[str]]] = {}
    if quick is not None:
        try:
            records = read_quick(quick.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            diffs.append(Difference("manifest", QUICK, QUICK_SCHEMA, f"unreadable ({exc})"))
    if records:
        _check_quick(env, records, trusted_uids,
                     (os.environ if environ is None else environ) if contract else None, diffs)
    if level != "quick":
        _check_files(env, manifest, level == "full", trusted_uids, diffs)
        # the files level sees again what quick saw in the paths both read
        diffs = list({(d.kind, d.subject): d for d in diffs}.values())
    return Report(env, level, digest, diffs, records)


def _bound_sidecar(env: str, manifest: bytes, rel: str, key: bytes,
                   diffs: list[Difference]) -> bytes | None:
    """A sidecar's bytes if the manifest records their digest; else a difference."""
    try:
        with open(os.path.join(env, rel), "rb") as fh:
            data = fh.read()
    except OSError:
        diffs.append(Difference("missing", rel, "present", "absent"))
        return None
    found = sha256_bytes(data)
    if key + found.encode() + b'"' not in manifest:
        diffs.append(Difference("manifest", rel, "the digest the manifest records", found))
        return None
    return data


def _trusted(env: str, uids: tuple[int, ...]) -> set[int]:
    """Root, you, and for a staged env (ROOT/.envs/NAME-KEY) the staging root's owner."""
    trusted = {0, os.geteuid(), *uids}
    parent = os.path.dirname(env)
    if os.path.basename(parent) == ".envs":
        try:
            trusted.add(os.stat(os.path.dirname(parent)).st_uid)
        except OSError:
            pass
    return trusted


def _check_quick(env: str, rec: dict[str, list[list[str]]], trusted_uids: tuple[int, ...],
                 environ: dict[str, str] | os._Environ[str] | None,
                 diffs: list[Difference]) -> None:
    """`environ` None: the launch contract's required variables are not checked."""
    site = rec["site"][0][0]
    trusted = _trusted(env, trusted_uids)
    # every path whose owner or mode decides what runs before this check has finished:
    # the guard, pyvenv.cfg (read at interpreter start), the launch code and its pycs
    paths = ["", "bin", "bin/envbuild-guard", "pyvenv.cfg", META, MANIFEST, QUICK, "lib",
             os.path.dirname(site), site, LAUNCH_DIR, LAUNCH_PKG]
    for sub in (LAUNCH_PKG, LAUNCH_PKG + "/__pycache__"):
        try:
            paths += [f"{sub}/{n}" for n in sorted(os.listdir(os.path.join(env, sub)))]
        except OSError:
            pass   # missing: the files level says so; the guard could not have started
    expected = {fields[0] for fields in rec.get("entry", [])}
    try:
        found = {n for n in os.listdir(os.path.join(env, site))
                 if n.endswith((".dist-info", ".pth"))}
    except OSError as exc:
        diffs.append(Difference("missing", site, "a directory", exc.strerror))
        found = set()
    paths += [f"{site}/{n}" for n in sorted(found) if n.endswith(".pth")]
    _compare_entries(site, expected, found, diffs)
    for rel in paths:
        _check_owner_mode(env, rel, trusted, diffs)
    for path, real, digest, version in rec.get("python", []):
        _check_interpreter(env, path, real, digest, version, diffs)
    for (path,) in rec.get("pystdlib", []):
        if not os.path.exists(path):
            diffs.append(Difference("interpreter", path, "present", "missing"))
    for path, digest in rec.get("pylib", []):
        got = interpreter_digest(path)
        if got != digest:
            diffs.append(Difference("interpreter", path, digest, got or "missing"))
        # run by that interpreter (the guard, the hook): is that the libpython it loaded?
        # LD_LIBRARY_PATH can point the loader at another one, and CMD inherits it
        if any(os.path.realpath(sys.executable) == fields[1] for fields in rec["python"]):
            loaded = _loaded_libpython()
            if loaded is not None and loaded != path:
                diffs.append(Difference("interpreter", "libpython (as loaded)", path, loaded))
    if environ is not None:
        for (name,) in rec.get("require", []):
            if name not in environ:
                diffs.append(Difference("environment", name, "set (the recipe requires it)",
                                        "unset"))
    _check_host(rec, diffs)


def _compare_entries(site: str, expected: set[str], found: set[str],
                     diffs: list[Difference]) -> None:
    exp_dists = {p[0]: p[1] for p in map(parse_dist_info, expected - found) if p}
    got_dists = {p[0]: p[1] for p in map(parse_dist_info, found - expected) if p}
    for name in sorted(exp_dists.keys() & got_dists.keys()):
        diffs.append(Difference("version", name, exp_dists[name], got_dists[name]))
    for entry in sorted(expected - found):
        parsed = parse_dist_info(entry)
        if not (parsed and parsed[0] in got_dists):
            diffs.append(Difference("missing", f"{site}/{entry}", "present", "absent"))
    for entry in sorted(found - expected):
        parsed = parse_dist_info(entry)
        if not (parsed and parsed[0] in exp_dists):
            diffs.append(Difference("added", f"{site}/{entry}", "absent", "present"))


def _check_owner_mode(env: str, rel: str, trusted: set[int], diffs: list[Difference]) -> None:
    try:
        st = os.lstat(os.path.join(env, rel) if rel else env)
    except OSError:
        return  # a missing path is reported by the check that needs it
    _owner_mode_diff(rel or ".", st, trusted, diffs)


def _owner_mode_diff(rel: str, st: os.stat_result, trusted: set[int],
                     diffs: list[Difference]) -> None:
    if stat.S_ISLNK(st.st_mode):
        return
    if st.st_uid not in trusted:
        diffs.append(Difference("permissions", rel, "owner root, you or the staging root's "
                                "owner", f"uid {st.st_uid}"))
    if st.st_mode & _WRITABLE:
        diffs.append(Difference("permissions", rel, "not group/world-writable",
                                f"mode {stat.S_IMODE(st.st_mode):04o}"))


def _check_interpreter(env: str, link: str, real: str, digest: str, version: str,
                       diffs: list[Difference]) -> None:
    found = os.path.realpath(os.path.join(env, link))
    if found != real:
        diffs.append(Difference("interpreter", link, real, found))
        return
    got = interpreter_digest(found)
    if got is None:
        diffs.append(Difference("interpreter", link, f"{real} (Python {version})", "missing"))
    elif got != digest:
        diffs.append(Difference("interpreter", real, digest, got))


def _loaded_libpython() -> str | None:
    """The libpython this process mapped, from /proc/self/maps; None if none or unknown."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split(None, 5)
                if len(fields) == 6 and "/libpython" in fields[5]:
                    return fields[5].rstrip("\n")
    except OSError:
        pass
    return None


def cache_dir() -> str:
    """Per-user cache, per host: a home directory is often shared by every node."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "envbuild", "hosts", os.uname().nodename)


def cached(name: str, key: str) -> str | None:
    try:
        with open(os.path.join(cache_dir(), name), encoding="utf-8") as fh:
            stored_key, _, value = fh.read().partition("\n")
    except OSError:
        return None
    return value if stored_key == key else None


def remember(name: str, key: str, value: str) -> None:
    """Best effort: a cache that cannot be written only costs time."""
    path = os.path.join(cache_dir(), name)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{key}\n{value}")
        os.replace(tmp, path)
    except OSError:
        pass


def interpreter_digest(path: str) -> str | None:
    """sha256 of an executable, cached per host by its stat so launches rarely hash it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = f"{path} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"
    name = "interp-" + sha256(path.encode()).hexdigest()[:24]
    value = cached(name, key)
    if value is None:
        value = file_digest(path)
        remember(name, key, value)
    return value


def file_digest(path: str) -> str:
    """sha256 of a file through OpenSSL (hashlib): about 3x the builtin `_sha256` on large
    files, worth its import time wherever whole files are hashed."""
    with open(path, "rb", buffering=0) as fh:
        return _digest_of(fh)


def _digest_of(fh: FileIO) -> str:
    import hashlib

    if hasattr(hashlib, "file_digest"):
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
    h = hashlib.sha256()  # Python < 3.11
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _check_host(rec: dict[str, list[list[str]]], diffs: list[Difference]) -> None:
    for (needed,) in rec.get("glibc", []):
        have = _host_glibc()
        if have is not None and _vtuple(have) < _vtuple(needed):
            diffs.append(Difference("host", "glibc", f">= {needed}", have))
    sonames = [fields[0] for fields in rec.get("lib", [])]
    if not sonames:
        return
    key = sha256("\n".join(sonames).encode()).hexdigest()
    name = "libs-" + key[:24]
    if cached(name, key) == "ok":
        return
    from .hostreq import missing_libraries

    missing = missing_libraries(sonames)
    for soname in missing:
        diffs.append(Difference("host", soname, "a shared library on this host", "not found"))
    if not missing:
        remember(name, key, "ok")


def _host_glibc() -> str | None:
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    return value.split()[-1] if value.startswith("glibc") else None


def _vtuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def walk(env: str, errors: list[Difference] | None = None) -> dict[str, os.stat_result]:
    """Every path under env (relative POSIX) with its lstat, outside the manifest and META.
    A directory that cannot be read is a `permissions` difference in `errors`."""
    out: dict[str, os.stat_result] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(env, rel) if rel else env) as it:
                for entry in it:
                    sub = f"{rel}/{entry.name}" if rel else entry.name
                    if not rel and entry.name in (MANIFEST, META):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    out[sub] = st
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(sub)
        except OSError as exc:
            if errors is None:
                raise
            errors.append(Difference("permissions", rel or ".", "readable",
                                     f"unreadable ({exc.strerror})"))
    return out


def _check_files(env: str, manifest: bytes, content: bool, trusted_uids: tuple[int, ...],
                 diffs: list[Difference]) -> None:
    data = _bound_sidecar(env, manifest, FILES, b'"tree_digest":"', diffs)
    if data is None:
        return
    try:
        recorded = read_files(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        diffs.append(Difference("manifest", FILES, FILES_SCHEMA, f"unreadable ({exc})"))
        return
    # the content is hashed by other processes while this one walks the tree and compares
    hasher = _Hasher(env, [(rel, size) for rel, (kind, _, size, _) in sorted(recorded.items())
                           if kind == "f"]) if content else None
    try:
        found = walk(env, diffs)
        intact = _compare_tree(env, recorded, found, _trusted(env, trusted_uids), diffs)
        if hasher is None:
            return
        hashes = hasher.results()
    finally:
        if hasher is not None:
            hasher.close(kill=True)   # on an error: no child outlives the check
    for rel in intact:
        want, got = recorded[rel][3], hashes[rel]
        if got.startswith("!"):
            diffs.append(Difference("modified", rel, f"sha256:{want}",
                                    f"unreadable ({got[1:]})"))
        elif got != want:
            diffs.append(Difference("modified", rel, f"sha256:{want}", f"sha256:{got}"))


def _compare_tree(env: str, recorded: dict[str, tuple[str, int, int, str]],
                  found: dict[str, os.stat_result], trusted: set[int],
                  diffs: list[Difference]) -> list[str]:
    """Every path as the files sidecar records it; the regular files that match in all but
    their content, which only the full level reads."""
    intact: list[str] = []
    for rel, (kind, mode, size, digest) in sorted(recorded.items()):
        st = found.get(rel)
        if st is None:
            diffs.append(Difference("missing", rel, "present", "absent"))
        elif kind == "l":
            if not stat.S_ISLNK(st.st_mode):
                diffs.append(Difference("modified", rel, "a symlink", "not a symlink"))
                continue
            try:
                target = os.readlink(os.path.join(env, rel))
            except OSError as exc:   # replaced since the walk
                diffs.append(Difference("modified", rel, "a symlink", exc.strerror or "gone"))
                continue
            if sha256(os.fsencode(target)).hexdigest() != digest:
                diffs.append(Difference("modified", rel, "the recorded link target",
                                        f"a link to {target}"))
        elif not stat.S_ISREG(st.st_mode):
            diffs.append(Difference("modified", rel, "a regular file", "another kind of file"))
        elif st.st_size != size:
            diffs.append(Difference("modified", rel, f"{size} bytes", f"{st.st_size} bytes"))
        else:
            if stat.S_IMODE(st.st_mode) != mode and not stat.S_IMODE(st.st_mode) & _WRITABLE:
                diffs.append(Difference("permissions", rel, f"mode {mode:04o}",
                                        f"mode {stat.S_IMODE(st.st_mode):04o}"))
            intact.append(rel)
    for rel in sorted(found):
        st = found[rel]
        if rel not in recorded and not stat.S_ISDIR(st.st_mode):
            diffs.append(Difference("added", rel, "absent", "present"))
        _owner_mode_diff(rel, st, trusted, diffs)
    return intact


class _Hasher:
    """Hashes files in several processes while the caller goes on (the walk, the stat checks).

    OpenSSL's sha256 is fast; what costs is Python's per-file work (open, read, close), which
    threads would serialize on the GIL. So the work is split across forked processes: chunks
    of the file list are claimed from a pipe (a read of 4 bytes is atomic), so a busy process
    takes fewer; each child sends back `index digest` lines and an `end` line when its queue
    runs dry. The caller claims chunks too, once it is done with its own work, in `results()`.
    Whatever a child did not report whole (it failed, was killed, could not be forked) the
    caller hashes itself. Use as a context manager: leaving it reaps every child.
    """

    def __init__(self, env: str, files: list[tuple[str, int]]) -> None:
        self.env, self.files = env, files
        self.chunk = max(8, len(files) // 512)
        self.children: list[tuple[int, int]] = []
        self.queue = -1
        self._sigchld: object = None
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
        threading = sys.modules.get("threading")
        if threading is not None and threading.active_count() > 1:
            return 1   # forking a threaded process can copy a lock another thread held
        import _signal  # type: ignore[import-not-found,unused-ignore]

        try:   # an inherited SIG_IGN would have the kernel reap the children unseen
            if _signal.getsignal(_SIGCHLD) == _signal.SIG_IGN:
                self._sigchld = _signal.signal(_SIGCHLD, _signal.SIG_DFL)
        except ValueError:
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
                yield i, _hash_one(self.env, *self.files[i])

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
        return {rel: done[i] if i in done else _hash_one(self.env, rel, size)
                for i, (rel, size) in enumerate(self.files)}

    def close(self, kill: bool = False) -> None:
        """Reap every child (killed first with `kill`) and close every pipe."""
        for pid, rfd in self.children:
            if kill:
                with _suppress_oserror():
                    os.kill(pid, 9)
            os.close(rfd)
            with _suppress_oserror():
                os.waitpid(pid, 0)
        self.children = []
        if self.queue >= 0:
            os.close(self.queue)
            self.queue = -1
        if self._sigchld is not None:
            import _signal  # type: ignore[import-not-found,unused-ignore]

            _signal.signal(_SIGCHLD, self._sigchld)
            self._sigchld = None

    def __enter__(self) -> _Hasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=True)


class _suppress_oserror:
    """contextlib.suppress(OSError) without importing contextlib on the launch path."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, OSError)


def _hash_one(env: str, rel: str, size: int) -> str:
    """sha256 hex of a regular file (size+1 bytes read: a file that grew still differs),
    never following a symlink or blocking on a fifo; '!' and the reason otherwise."""
    import hashlib

    try:
        fd = os.open(os.path.join(env, rel),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"!{exc.strerror}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "!not a regular file"
        if size <= 1 << 22:
            return hashlib.sha256(os.read(fd, size + 1)).hexdigest()
        with open(fd, "rb", buffering=0, closefd=False) as fh:
            return _digest_of(fh).removeprefix("sha256:")
    except OSError as exc:
        return f"!{exc.strerror}"
    finally:
        os.close(fd)


__all__ = ["Difference", "Report", "verify", "normalize", "LEVELS"]
