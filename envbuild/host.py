"""The host as a launch sees it: answers kept per user and per host (`<user cache>/hosts/
<node>/`) so that a launch rarely repeats costly work (hashing the interpreter, probing it,
checking host libraries), the C library's version, and the cached answer of the host-library
check, read here so that a hit never imports `loader`, which computes it. Stdlib only and
light to import. Every cache entry stores the key it was computed for; a different key is
a miss.
"""

from __future__ import annotations

import os

from .hashing import file_digest, sha256
from .layout import host_cache_dir

# ---- per-host caches ---------------------------------------------------------------------


def cached(name: str, key: str) -> str | None:
    """The value stored under `name` if it was stored for `key`, else None."""
    try:
        with open(os.path.join(host_cache_dir(), name), encoding="utf-8") as fh:
            stored_key, _, value = fh.read().partition("\n")
    except OSError:
        return None
    return value if stored_key == key else None


def remember(name: str, key: str, value: str) -> None:
    """Best effort: a cache that cannot be written only costs time."""
    path = os.path.join(host_cache_dir(), name)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{key}\n{value}")
        os.replace(tmp, path)
    except OSError:
        pass


def stat_key(path: str, st: os.stat_result) -> str:
    """What identifies a file's bytes without reading them: replaced or rewritten files
    change inode, size, mtime or ctime."""
    return f"{path} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


def interpreter_digest(path: str) -> str | None:
    """sha256 of an executable, cached per host by its stat so launches rarely hash it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = stat_key(path, st)
    name = "interp-" + sha256(path.encode()).hexdigest()[:24]
    value = cached(name, key)
    if value is None:
        value = file_digest(path)
        remember(name, key, value)
    return value


# ---- the C library -----------------------------------------------------------------------


def version_tuple(v: str) -> tuple[int, ...]:
    """`2.34` as (2, 34); parts that are not numbers are left out."""
    return tuple(int(part) for part in v.split(".") if part.isdigit())


def host_glibc() -> str | None:
    """The running C library's version if it is glibc, else None (musl, macOS)."""
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None
    if not value or not value.startswith("glibc "):
        return None
    return value.split()[1]


# ---- the host-library answer's cache entry (computed by `loader`, read here on a hit) ----

LD_SO_CACHE = "/etc/ld.so.cache"
_HOSTLIBS_FORMAT = "envbuild.hostlibs/1"     # part of every key: a new format is a miss


def needs_source(rec: dict[str, list[list[str]]]) -> str:
    """The quick sidecar's host-need records as one text: what the cache keys hold of them."""
    from .sidecars import escape

    return "\n".join(escape("\t".join([kind, *fields]))
                     for kind in ("glibc", "lib", "libver", "libopt")
                     for fields in rec.get(kind, []))


def identity(path: str) -> str:
    try:
        return stat_key(path, os.stat(path))
    except OSError:
        return f"{path} absent"


def _digest(parts: list[str]) -> str:
    return str(sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest())


def hostlibs_entry(root: str, source: str, env_dirs: list[str], cache_path: str,
                   glibc: str | None) -> tuple[str, str]:
    """(entry name, key) of the host-library answer for these needs, this env's path, these
    LD_LIBRARY_PATH dirs, this ld.so.cache, this glibc and this host."""
    from .sidecars import escape

    inputs = [root, source, escape(":".join(env_dirs))]
    uname = os.uname()
    return ("hostlibs-" + _digest(inputs)[:24],
            _digest([_HOSTLIBS_FORMAT, *inputs, identity(cache_path), str(glibc),
                     uname.nodename, uname.machine]))


def replay_gaps(value: str) -> list[tuple[str, str, str, bool]] | None:
    """The stored gaps (subject, expected, found, optional) if every path of the entry's
    evidence still stats the same, else None."""
    from .sidecars import unescape

    gaps = []
    for line in value.split("\n"):
        kind, *fields = [unescape(f) for f in line.split("\t")]
        if kind == "E" and len(fields) == 2:
            if identity(fields[0]) != fields[1]:
                return None
        elif kind == "G" and len(fields) == 4:
            gaps.append((fields[1], fields[2], fields[3], fields[0] == "1"))
        elif line:
            return None
    return gaps


def cached_host_gaps(rec: dict[str, list[list[str]]], env: str
                     ) -> list[tuple[str, str, str, bool]] | None:
    """The host-library answer from the cache, without the loader's code, when nothing that
    decides it changed and no LD_LIBRARY_PATH is set (its dirs need the loader's rules);
    None: ask `loader.host_gaps`."""
    if os.environ.get("LD_LIBRARY_PATH"):
        return None
    name, key = hostlibs_entry(os.path.abspath(env), needs_source(rec), [], LD_SO_CACHE,
                               host_glibc())
    value = cached(name, key)
    return None if value is None else replay_gaps(value)


def loaded_libpython() -> str | None:
    """The libpython this process mapped, from /proc/self/maps; None if none or unknown."""
    try:
        with open("/proc/self/maps", "rb") as fh:
            maps = fh.read()
    except OSError:
        return None
    at = maps.find(b"/libpython")
    if at < 0:
        return None
    line = maps[maps.rfind(b"\n", 0, at) + 1:maps.find(b"\n", at)]
    fields = line.split(None, 5)
    return os.fsdecode(fields[5]) if len(fields) == 6 else None
