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

from .hashing import file_digest, sha256, sha256_bytes
from .host import cached, cached_host_gaps, interpreter_digest, loaded_libpython, remember, stat_key
from .layout import GUARD, LAUNCH_DIR, LAUNCH_PKG, MANIFEST, META, QUICK, staging_root_of
from .sidecars import QUICK_SCHEMA, parse_dist_info, read_manifest_bytes, read_quick, startup_dir

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

    __slots__ = ("env", "level", "manifest_digest", "differences", "quick", "warnings")

    def __init__(self, env: str, level: str, digest: str | None, differences: list[Difference],
                 quick: dict[str, list[list[str]]], warnings: list[str] | None = None) -> None:
        self.env, self.level, self.manifest_digest = env, level, digest
        self.differences, self.quick = differences, quick
        self.warnings = warnings or []   # what does not refuse: optional host needs

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, object]:
        return {"env": self.env, "level": self.level, "ok": self.ok,
                "manifest_digest": self.manifest_digest,
                "differences": [d.to_json() for d in self.differences]}


def read_sidecar(env: str, rel: str, diffs: list[Difference]) -> bytes | None:
    """A sidecar's bytes, not yet held to the manifest (`is_bound`); else a difference."""
    try:
        with open(os.path.join(env, rel), "rb") as fh:
            return fh.read()
    except OSError:
        diffs.append(Difference("missing", rel, "present", "absent"))
        return None


def is_bound(manifest: bytes, rel: str, key: bytes, data: bytes,
             diffs: list[Difference]) -> bool:
    """Whether the manifest records the digest of the sidecar `data` under `key`; if not,
    a difference."""
    found = sha256_bytes(data)
    if key + found.encode() + b'"' not in manifest:
        diffs.append(Difference("manifest", rel, "the digest the manifest records", found))
        return False
    return True


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
    warnings: list[str] = []
    if expect is not None and expect != digest:
        diffs.append(Difference("manifest", MANIFEST, expect, digest))
    quick = read_sidecar(env, QUICK, diffs)
    if quick is not None and not is_bound(manifest, QUICK, b'"quick":"', quick, diffs):
        quick = None
    records: dict[str, list[list[str]]] = {}
    if quick is not None:
        try:
            records = read_quick(quick.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            diffs.append(Difference("manifest", QUICK, QUICK_SCHEMA, f"unreadable ({exc})"))
    trusted = trusted_owners(env, trusted_uids)
    listing = record = None
    if level == "files":   # its find runs while the quick level checks
        from .filessince import start_files

        listing, record = start_files(env, digest, trusted)
    try:
        if records:
            check_quick(env, records, trusted,
                        (os.environ if environ is None else environ) if contract else None,
                        diffs, warnings)
        if level != "quick":
            from .verify_files import check_files

            check_files(env, manifest, level == "full", trusted, diffs, listing)
            # the files level sees again what quick saw in the paths both read
            diffs = list({(d.kind, d.subject): d for d in diffs}.values())
    finally:
        if listing is not None:
            listing.close()
    if record is not None and not diffs:
        record.clean()
    return Report(env, level, digest, diffs, records, warnings)


# ---- the quick level: every launch's check -------------------------------------------------


def check_quick(env: str, rec: dict[str, list[list[str]]], trusted: set[int],
                environ: dict[str, str] | os._Environ[str] | None,
                diffs: list[Difference], warnings: list[str]) -> None:
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
    found = _listing(env, site, diffs)
    entries = rec.get("entry", [])
    if entries and len(entries[0]) == 1:   # a sidecar of build format 1: names of dist-info
        found = {n: k for n, k in found.items() if n.endswith((".dist-info", ".pth"))}
    _compare_kinds(site, {f[0]: (f[1:2] or [""])[0] for f in entries}, found, diffs)
    paths += [f"{site}/{n}" for n in sorted(found) if n.endswith(".pth")]
    if "bin" in rec:
        _check_bin(env, rec["bin"], rec.get("python", []), diffs)
    before = len(diffs)
    _check_interpreter(env, rec, diffs)
    # another or a broken interpreter: its line says it all, whatever its stdlib holds now
    _check_startup(env, rec, diffs,
                   outside=not any(d.kind == "interpreter" for d in diffs[before:]))
    lstat, prefix = os.lstat, env + "/"
    for rel in paths:
        try:
            st = lstat(prefix + rel if rel else env)
        except OSError:
            continue  # a missing path is reported by the check that needs it
        if st.st_uid not in trusted or st.st_mode & WRITABLE:
            owner_mode_diff(rel or ".", st, trusted, diffs)
    if environ is not None:
        for (name,) in rec.get("require", []):
            if name not in environ:
                diffs.append(Difference("environment", name, "set (the recipe requires it)",
                                        "unset"))
    _check_host(env, rec, diffs, warnings)


_KINDS = {"f": ("a regular file", "another kind of file"), "l": ("a symlink", "not a symlink"),
          "d": ("a directory", "not a directory"), "o": ("a special file", "another kind")}


def _listing(env: str, rel: str, diffs: list[Difference]) -> dict[str, str]:
    """{name: kind} of a directory of the env, kinds as the build records them (f, d, l, o):
    one directory read, no stat."""
    out: dict[str, str] = {}
    try:
        with os.scandir(env + "/" + rel) as it:
            for e in it:
                out[e.name] = ("l" if e.is_symlink() else "d" if e.is_dir() else
                               "f" if e.is_file() else "o")
    except OSError as exc:
        diffs.append(Difference("missing", rel, "a directory", exc.strerror))
    return out


def _compare_kinds(site: str, expected: dict[str, str], found: dict[str, str],
                   diffs: list[Difference]) -> None:
    """Names added, removed or at another version; a name now of another kind."""
    _compare_entries(site, set(expected), set(found), diffs)
    for name in sorted(expected.keys() & found.keys()):
        want = expected[name]
        if want and found[name] != want:
            words = _KINDS.get(want, (want, "another kind"))
            diffs.append(Difference("modified", f"{site}/{name}", *words))


def _check_bin(env: str, records: list[list[str]], python: list[list[str]],
               diffs: list[Difference]) -> None:
    """bin/, which a launch puts first on PATH: every name, kind and link target. A link on
    bin/python's own chain that now reaches another interpreter is the interpreter check's
    to report."""
    expected = {name: (kind, target) for name, kind, target in records}
    found = _listing(env, "bin", diffs)
    _compare_kinds("bin", {name: kind for name, (kind, _) in expected.items()}, found, diffs)
    chain: set[str] = set()
    for link, real, *_ in python:
        if _resolve(f"{env}/{link}", real) != real:
            name = os.path.basename(link)
            while name in found and found[name] == "l" and name not in chain:
                chain.add(name)
                name = os.readlink(f"{env}/bin/{name}")
    for name, (kind, target) in sorted(expected.items()):
        if kind == "l" and found.get(name) == "l" and name not in chain:
            now = os.readlink(f"{env}/bin/{name}")
            if now != target:
                diffs.append(Difference("modified", f"bin/{name}", f"a link to {target}",
                                        f"a link to {now}"))


def _check_startup(env: str, rec: dict[str, list[list[str]]], diffs: list[Difference],
                   outside: bool = True) -> None:
    """The sys.path dirs (but site-packages) hold no new provider of a name the start
    imports, and every file the start reads has its recorded bytes. One cache entry for it
    all, keyed by every such dir's and file's stat (a dir's mtime moves with any entry added,
    removed or renamed): a launch costs one stat each. `outside` False: only the env's own."""
    dirs = [(shown if shown[:1] == "/" else f"{env}/{shown}", shown, state, entries)
            for shown, state, *entries in rec.get("startdir", [])
            if outside or shown[:1] != "/"]
    files = [(rel if rel[:1] == "/" else f"{env}/{rel}", rel, digest)
             for rel, digest in rec.get("startfile", []) if outside or rel[:1] != "/"]
    keys = []
    stat = os.stat
    for path, _shown, *recorded in dirs + files:
        try:
            keys.append(f"{stat_key(path, stat(path))} {recorded}")
        except OSError:
            keys.append(f"{path} missing")
    key = sha256("\n".join(keys).encode()).hexdigest()
    name = "start-" + sha256(env.encode()).hexdigest()[:24]
    if not keys or cached(name, key) == "ok":
        return
    count = len(diffs)
    names = set(rec["startnames"][0]) if "startnames" in rec else set()
    for path, shown, state, entries in dirs:
        now, there = startup_dir(path, names)
        if now != state:
            diffs.append(Difference("added" if state == "absent" else "modified", shown,
                                    state, now))
            continue
        for entry in sorted(set(there) - set(entries)):
            diffs.append(Difference("added", f"{shown}/{entry}", "absent", "present"))
        for entry in sorted(set(entries) - set(there)):
            diffs.append(Difference("missing", f"{shown}/{entry}", "present", "absent"))
    for path, rel, digest in files:
        try:
            got = file_digest(path)
        except OSError as exc:
            diffs.append(Difference("missing", rel, "present", exc.strerror or "absent"))
            continue
        if got != digest:
            diffs.append(Difference("modified", rel, digest, got))
    if len(diffs) == count:
        remember(name, key, "ok")


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
        found = _resolve(f"{env}/{link}", real)
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
        if any(_resolve(sys.executable, fields[1]) == fields[1] for fields in rec["python"]):
            loaded = loaded_libpython()
            if loaded is not None and loaded != path:
                diffs.append(Difference("interpreter", "libpython (as loaded)", path, loaded))


def _resolve(path: str, expected: str) -> str:
    """`os.path.realpath(path)`, cheaply when it is `expected`: the links of the last
    component are followed by hand (a venv's bin/python -> python3.X -> /abs/python3.X),
    and only a result other than `expected` is checked with realpath, which lstats every
    component of every path on the way."""
    seen = 0
    while seen < 40:
        try:
            target = os.readlink(path)
        except OSError:
            break
        path = target if target[:1] == "/" else os.path.dirname(path) + "/" + target
        seen += 1
    return path if path == expected else os.path.realpath(path)


def _check_host(env: str, rec: dict[str, list[list[str]]], diffs: list[Difference],
                warnings: list[str]) -> None:
    """What the env needs from the host (`loader`): glibc new enough, every needed library
    found as the loader would find it and defining every symbol version needed. A need the
    recipe marked optional (`[host] optional`) is a warning, not a difference."""
    if not any(k in rec for k in ("glibc", "lib", "libver")):
        return
    gaps = cached_host_gaps(rec, env)   # a hit: the loader's code is not even imported
    if gaps is None:
        from .loader import host_gaps, needs_from_records

        gaps = [(g.subject, g.expected, g.found, g.optional)
                for g in host_gaps(needs_from_records(rec), env)]
    for subject, expected, found, optional in gaps:
        if optional:
            warnings.append(f"optional host: {subject}: expected {expected}, found {found}")
        else:
            diffs.append(Difference("host", subject, expected, found))
