"""The line-oriented sidecars in `ENV/.envbuild/`: written by the build, read by every
launch instead of the JSON manifest. Stdlib only and light to import.

- `quick`: what a launch checks (interpreter, site-packages entries, host needs, the
  environment contract), one tab-separated record per line; the manifest records its digest.
- `files`: one line per file (`f|l`, mode, size, sha256, path), sorted; its digest *is*
  the manifest's `tree_digest`, so it cannot be edited to hide a change.

Here too are the launch path's small readers (PEP 503 names, dist-info dir names): everywhere
else `packaging` does this, and a test checks these against it on the same inputs.

`walk` is the tree both describe: everything under the env but the manifest and `.envbuild/`;
`read_manifest_bytes` is how both sides find the manifest they are bound to.
"""

from __future__ import annotations

import os
import stat

from .errors import NotAnEnvError
from .layout import MANIFEST, META

TYPE_CHECKING = False   # not typing's: importing typing costs the launch path `re`
if TYPE_CHECKING:
    from collections.abc import Iterator

QUICK_SCHEMA = "envbuild.quick/1"
FILES_SCHEMA = "envbuild.files/1"



def normalize(name: str) -> str:
    """PEP 503 normalized project name (without `re`, which costs milliseconds to import)."""
    out: list[str] = []
    for ch in name.lower():
        if ch in "-_.":
            if not out or out[-1] != "-":
                out.append("-")
        else:
            out.append(ch)
    return "".join(out)


def parse_dist_info(dirname: str) -> tuple[str, str] | None:
    """(normalized name, version) from `name-version.dist-info`, None for anything else.

    Dist-info names escape '-' in the project name to '_', so the first '-' splits them.
    """
    if not dirname.endswith(".dist-info"):
        return None
    name, sep, version = dirname[: -len(".dist-info")].partition("-")
    if not sep or not name or not version:
        return None
    return normalize(name), version


def escape(value: str) -> str:
    """One field of a tab-separated sidecar line: backslash, tab and newline escaped."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append({"t": "\t", "n": "\n"}.get(nxt, nxt))
        else:
            out.append(ch)
    return "".join(out)


def read_quick(text: str) -> dict[str, list[list[str]]]:
    """The quick sidecar as {record kind: [fields, ...]} (tab-separated, escaped)."""
    lines = text.split("\n")
    if lines[0] != QUICK_SCHEMA:
        raise ValueError(f"expected {QUICK_SCHEMA}, found {lines[0][:40]!r}")
    out: dict[str, list[list[str]]] = {}
    for line in lines[1:]:
        if line:
            kind, *fields = line.split("\t")
            if "\\" in line:
                fields = [unescape(f) for f in fields]
            out.setdefault(kind, []).append(fields)
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
    return parse_files_lines(lines[1:], "\\" in text)


def parse_files_lines(lines: list[str], escaped: bool = True
                      ) -> dict[str, tuple[str, int, int, str]]:
    """Lines of the files sidecar (no header) as {relpath: (kind, mode, size, sha256 hex)};
    `escaped` False: no line holds a backslash, so no path needs unescaping."""
    out: dict[str, tuple[str, int, int, str]] = {}
    modes: dict[str, int] = {}   # a handful of distinct modes: each parsed once
    for line in lines:
        if line:
            kind, mode, size, digest, path = line.split("\t")
            bits = modes.get(mode)
            if bits is None:
                bits = modes[mode] = int(mode, 8)
            out[unescape(path) if escaped else path] = (kind, bits, int(size), digest)
    return out


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def walk(env: str, errors: list[tuple[str, str]] | None = None,
         start: str = "", skip: set[str] | frozenset[str] = frozenset()
         ) -> dict[str, os.stat_result]:
    """Every path under env (relative POSIX) with its lstat, outside the manifest and META:
    `scan` as a map."""
    return dict(scan(env, errors, start, skip))


def scan(env: str, errors: list[tuple[str, str]] | None = None,
         start: str = "", skip: set[str] | frozenset[str] = frozenset()
         ) -> Iterator[tuple[str, os.stat_result]]:
    """Every path under env (relative POSIX) with its lstat, outside the manifest and META;
    with `start`, only those under that relative dir; the dirs in `skip` are listed but
    not entered. With `errors`, a directory that cannot be read is appended as
    (relpath, why) instead of raising.

    Each directory is opened relative to the env's (O_NOFOLLOW: a directory swapped for a
    symlink during the walk is not followed) and listed by its descriptor, so each lstat
    resolves one name, not the whole path from `/`."""
    root = os.open(env, _DIR_FLAGS)
    stack = [start]
    isdir = stat.S_ISDIR
    try:
        while stack:
            rel = stack.pop()
            try:
                fd = os.open(rel, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=root) if rel else root
                try:
                    with os.scandir(fd) as it:   # on a duplicate of fd
                        prefix = rel + "/" if rel else ""
                        for entry in it:
                            if not rel and entry.name in (MANIFEST, META):
                                continue
                            sub = prefix + entry.name
                            st = entry.stat(follow_symlinks=False)
                            if isdir(st.st_mode) and sub not in skip:
                                stack.append(sub)
                            yield sub, st
                finally:
                    if fd != root:
                        os.close(fd)
            except OSError as exc:
                if errors is None:
                    raise
                errors.append((rel or ".", exc.strerror or str(exc)))
    finally:
        os.close(root)


def read_manifest_bytes(env: str) -> bytes:
    """The manifest's bytes, or NotAnEnvError saying what to do."""
    try:
        with open(os.path.join(env, MANIFEST), "rb") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError):
        raise NotAnEnvError(f"{env}: not an envbuild env: expected {MANIFEST}, found none; "
                            "build one with `envbuild build RECIPE`") from None
    except OSError as exc:
        raise NotAnEnvError(f"{env}: cannot read {MANIFEST}: {exc.strerror}") from None


# ---- the start's view of sys.path: what the build records and the quick level compares --


def module_name(entry: str) -> str:
    """The top-level module a directory entry provides: `foo.py`, `foo.cpython-311-x86_64-
    linux-gnu.so`, `foo/` all provide `foo`."""
    return entry.split(".", 1)[0]


def startup_dir(path: str, names: set[str]) -> tuple[str, list[str]]:
    """What a sys.path entry is (a directory, a file such as the stdlib zip, or absent) and
    its entries that provide a name the start imports."""
    try:
        entries = os.listdir(path)
    except NotADirectoryError:
        return "file", []
    except FileNotFoundError:
        return "absent", []
    except OSError:
        return "unreadable", []
    return "dir", sorted(e for e in entries if module_name(e) in names)
