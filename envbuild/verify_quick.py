"""The quick level, every launch's check: what runs before the program's first line, read
from the quick sidecar, in a few directory reads whatever the number of files. Stdlib only."""

from __future__ import annotations

import os
import sys

from .hashing import sha256
from .hostcache import cached, interpreter_digest, remember
from .hostlibs import host_glibc, version_tuple
from .layout import GUARD, LAUNCH_DIR, LAUNCH_PKG, MANIFEST, META, QUICK
from .names import parse_dist_info
from .verify_report import Difference, owner_mode_diff


def check_quick(env: str, rec: dict[str, list[list[str]]], trusted: set[int],
                environ: dict[str, str] | os._Environ[str] | None,
                diffs: list[Difference]) -> None:
    """`environ` None: the launch contract's required variables are not checked."""
    site = rec["site"][0][0]
    # every path whose owner or mode decides what runs before this check has finished:
    # the guard, pyvenv.cfg (read at interpreter start), the launch code and its pycs
    paths = ["", "bin", GUARD, "pyvenv.cfg", META, MANIFEST, QUICK, "lib",
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
        try:
            st = os.lstat(os.path.join(env, rel) if rel else env)
        except OSError:
            continue  # a missing path is reported by the check that needs it
        owner_mode_diff(rel or ".", st, trusted, diffs)
    _check_interpreter(env, rec, diffs)
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


def _check_interpreter(env: str, rec: dict[str, list[list[str]]],
                       diffs: list[Difference]) -> None:
    """The interpreter the env's `bin/python` reaches, its bytes, its stdlib, and a shared
    build's libpython (as recorded, and as this process loaded it)."""
    for link, real, digest, version in rec.get("python", []):
        found = os.path.realpath(os.path.join(env, link))
        if found != real:
            diffs.append(Difference("interpreter", link, real, found))
            continue
        got = interpreter_digest(found)
        if got is None:
            diffs.append(Difference("interpreter", link, f"{real} (Python {version})",
                                    "missing"))
        elif got != digest:
            diffs.append(Difference("interpreter", real, digest, got))
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


def _check_host(rec: dict[str, list[list[str]]], diffs: list[Difference]) -> None:
    for (needed,) in rec.get("glibc", []):
        have = host_glibc()
        if have is not None and version_tuple(have) < version_tuple(needed):
            diffs.append(Difference("host", "glibc", f">= {needed}", have))
    sonames = [fields[0] for fields in rec.get("lib", [])]
    if not sonames:
        return
    key = sha256("\n".join(sonames).encode()).hexdigest()
    name = "libs-" + key[:24]
    if cached(name, key) == "ok":
        return
    from .hostlibs import missing_libraries

    missing = missing_libraries(sonames)
    for soname in missing:
        diffs.append(Difference("host", soname, "a shared library on this host", "not found"))
    if not missing:
        remember(name, key, "ok")
