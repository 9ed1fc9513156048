"""Verifying an env against its manifest at three levels. Stdlib only, and cheap to import:
the guard inside every env and image runs this with `python -I -S`.

quick (here): what runs before the program's first line, from the quick sidecar.
files and full (`verify_files`): every path, and with full every byte. The sidecars are
bound to the manifest by digest, so editing one is a difference, never a way around one.
"""

from __future__ import annotations

import os
import stat
import sys

from .hashing import sha256, sha256_bytes
from .host import cached, interpreter_digest, remember
from .layout import GUARD, LAUNCH_DIR, LAUNCH_PKG, MANIFEST, META, QUICK, staging_root_of
from .sidecars import QUICK_SCHEMA, parse_dist_info, read_manifest_bytes, read_quick

LEVELS = ("quick", "files", "full")

__all__ = ["Difference", "Report", "verify", "LEVELS"]

WRITABLE = stat.S_IWGRP | stat.S_IWOTH


class Difference:
    """One way the runtime differs from the manifest: `KIND: SUBJECT: expected X, found Y`."""

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
    """The outcome of one verification; `quick` holds the quick sidecar's records, which the
    launcher applies (the environment contract, the root policy)."""

    __slots__ = ("env", "level", "manifest_digest", "differences", "quick")

    def __init__(self, env: str, level: str, digest: str | None, differences: list[Difference],
                 quick: dict[str, list[list[str]]]) -> None:
        self.env, self.level, self.manifest_digest = env, level, digest
        self.differences, self.quick = differences, quick

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, object]:
        return {"env": self.env, "level": self.level, "ok": self.ok,
                "manifest_digest": self.manifest_digest,
                "differences": [d.to_json() for d in self.differences]}


def bound_sidecar(env: str, manifest: bytes, rel: str, key: bytes,
                  diffs: list[Difference]) -> bytes | None:
    """A sidecar's bytes if the manifest records their digest under `key`; else a difference."""
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


def trusted_owners(env: str, uids: tuple[int, ...]) -> set[int]:
    """Root, you, and for a staged version the staging root's owner."""
    trusted = {0, os.geteuid(), *uids}
    root = staging_root_of(env)
    if root is not None:
        try:
            trusted.add(os.stat(root).st_uid)
        except OSError:
            pass
    return trusted


def owner_mode_diff(rel: str, st: os.stat_result, trusted: set[int],
                    diffs: list[Difference]) -> None:
    """A path owned by someone untrusted, or writable by group or others, is a difference;
    a symlink's own mode means nothing."""
    if stat.S_ISLNK(st.st_mode):
        return
    if st.st_uid not in trusted:
        diffs.append(Difference("permissions", rel, "owner root, you or the staging root's "
                                "owner", f"uid {st.st_uid}"))
    if st.st_mode & WRITABLE:
        diffs.append(Difference("permissions", rel, "not group/world-writable",
                                f"mode {stat.S_IMODE(st.st_mode):04o}"))



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
    manifest = read_manifest_bytes(env)
    digest = sha256_bytes(manifest)
    diffs: list[Difference] = []
    if expect is not None and expect != digest:
        diffs.append(Difference("manifest", MANIFEST, expect, digest))
    quick = bound_sidecar(env, manifest, QUICK, b'"quick":"', diffs)
    records: dict[str, list[list[str]]] = {}
    if quick is not None:
        try:
            records = read_quick(quick.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            diffs.append(Difference("manifest", QUICK, QUICK_SCHEMA, f"unreadable ({exc})"))
    trusted = trusted_owners(env, trusted_uids)
    if records:
        check_quick(env, records, trusted,
                    (os.environ if environ is None else environ) if contract else None, diffs)
    if level != "quick":
        from .verify_files import check_files

        check_files(env, manifest, level == "full", trusted, diffs)
        # the files level sees again what quick saw in the paths both read
        diffs = list({(d.kind, d.subject): d for d in diffs}.values())
    return Report(env, level, digest, diffs, records)


# ---- the quick level: every launch's check -------------------------------------------------


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
    lstat, prefix = os.lstat, env + "/"
    for rel in paths:
        try:
            st = lstat(prefix + rel if rel else env)
        except OSError:
            continue  # a missing path is reported by the check that needs it
        if st.st_uid not in trusted or st.st_mode & WRITABLE:
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


def _check_host(rec: dict[str, list[list[str]]], diffs: list[Difference]) -> None:
    from .host import host_glibc, version_tuple

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
    from .host import missing_libraries

    missing = missing_libraries(sonames)
    for soname in missing:
        diffs.append(Difference("host", soname, "a shared library on this host", "not found"))
    if not missing:
        remember(name, key, "ok")
