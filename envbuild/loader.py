"""Host libraries as the dynamic loader would find them, and whether they define every symbol
version the env needs. Stdlib only and light: `host_gaps` is the launch path's one call; on a
per-host cache hit it reads no ELF file and no ld.so.cache, it stats a few paths.

The search follows glibc's `_dl_map_object` for a soname needed by one file: that file's
DT_RPATH (if it has no DT_RUNPATH), LD_LIBRARY_PATH, its DT_RUNPATH, ld.so.cache, the
default dirs (neither of the last two for a DF_1_NODEFLIB file), skipping files of another
ELF class or machine. Simplifications, each rarely visible:
- only the needing file's RPATH, not those of the objects that loaded it up to the
  executable (Python interpreters carry RUNPATH, which the loader ignores there);
- no glibc-hwcaps or legacy hwcaps subdirs (`glibc-hwcaps/x86-64-v3/`, `tls/`), no hwcaps
  entries of ld.so.cache: the baseline library is the one checked;
- no reuse of a soname already loaded by another object; no LD_PRELOAD;
- $ORIGIN in LD_LIBRARY_PATH is the running interpreter's dir; the default dirs and $LIB
  follow the host's layout (multiarch, lib64 or lib), not ld.so's compiled-in list.
"""

from __future__ import annotations

import os
import sys

from .host import LD_SO_CACHE as LD_SO_CACHE  # re-exported: tests and callers name it here
from .host import (
    cached,
    host_glibc,
    hostlibs_entry,
    needs_source,
    remember,
    replay_gaps,
    version_tuple,
)
from .host import identity as _identity
from .sidecars import escape

TYPE_CHECKING = False   # not typing's: importing typing costs the launch path `re`
if TYPE_CHECKING:
    from .elfread import Dynamic, Header

# the loader's own ld.so.cache flags (_DL_CACHE_DEFAULT_ID) by (e_machine, ELF class)
_CACHE_IDS = {(62, 2): (0x0303,), (62, 1): (0x0803,), (3, 1): (0x0001, 0x0003),
              (183, 2): (0x0A03,), (21, 2): (0x0503,), (22, 2): (0x0403,)}
_TRIPLETS = {"i686": "i386-linux-gnu", "i586": "i386-linux-gnu", "armv7l": "arm-linux-gnueabihf",
             "ppc64le": "powerpc64le-linux-gnu", "ppc64": "powerpc64-linux-gnu"}
_DF_1_NODEFLIB = 0x800


class Gap:
    """One thing the host lacks: `host: SUBJECT: expected EXPECTED, found FOUND`. `optional`:
    the recipe marked the library optional ([host] optional), so a launch warns, not refuses."""

    __slots__ = ("subject", "expected", "found", "optional")

    def __init__(self, subject: str, expected: str, found: str, optional: bool = False) -> None:
        self.subject, self.expected, self.found = subject, expected, found
        self.optional = optional

    def line(self) -> str:
        return f"host: {self.subject}: expected {self.expected}, found {self.found}"


class Needers:
    """Which env files need something: how many, and the first few (sorted)."""

    __slots__ = ("count", "files")

    def __init__(self, count: int, files: list[str]) -> None:
        self.count, self.files = max(count, len(files)), files

    def suffix(self) -> str:
        """` (for a, b, c and 2 more)`, or nothing when no file is named."""
        if not self.files:
            return ""
        more = self.count - len(self.files[:3])
        return f" (for {', '.join(self.files[:3])}{f' and {more} more' if more else ''})"


class Needs:
    """What the env needs from the host, as the quick sidecar carries it (records written by
    `hostreq.host_records`, read by `needs_from_records`)."""

    __slots__ = ("glibc", "glibc_needers", "libraries", "versions", "optional", "source")

    def __init__(self) -> None:
        self.glibc: str | None = None
        self.glibc_needers = Needers(0, [])
        self.libraries: dict[str, Needers] = {}
        self.versions: dict[str, dict[str, Needers]] = {}
        self.optional: set[str] = set()
        self.source = ""   # the records read: what the cache keys hold of the needs

    def __bool__(self) -> bool:
        return bool(self.glibc or self.libraries or self.versions)


def _needers(fields: list[str]) -> Needers:
    if not fields or not fields[0].isdigit():
        return Needers(len(fields), fields)
    return Needers(int(fields[0]), fields[1:])


def needs_from_records(rec: dict[str, list[list[str]]]) -> Needs:
    """Needs from the quick sidecar's records: `glibc VERSION [N FILE...]`, `lib SONAME
    [N FILE...]`, `libver SONAME VERSION N FILE...`, `libopt SONAME` (N files need it, the
    first few named). Records from before versions were recorded (`glibc V`, `lib S`) read
    as needs with no file named."""
    needs = Needs()
    for fields in rec.get("glibc", []):
        needs.glibc, needs.glibc_needers = fields[0], _needers(fields[1:])
    for fields in rec.get("lib", []):
        needs.libraries[fields[0]] = _needers(fields[1:])
    for fields in rec.get("libver", []):
        needs.versions.setdefault(fields[0], {})[fields[1]] = _needers(fields[2:])
    needs.optional = {fields[0] for fields in rec.get("libopt", [])}
    needs.source = needs_source(rec)
    return needs


# ---- the loader's search -----------------------------------------------------------------


def default_dirs() -> list[str]:
    """The loader's built-in dirs on this host's layout: Debian's multiarch pair then /lib,
    /usr/lib; lib64 on 64-bit hosts without multiarch (Fedora, SUSE); else /lib, /usr/lib."""
    machine = os.uname().machine
    triplet = _TRIPLETS.get(machine, machine + "-linux-gnu")
    if os.path.isdir(f"/usr/lib/{triplet}"):
        return [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
    if machine.endswith("64") or machine in ("ppc64le", "s390x"):
        return ["/lib64", "/usr/lib64"]
    return ["/lib", "/usr/lib"]


class Resolver:
    """The loader's view for one check: LD_LIBRARY_PATH, ld.so.cache (read when a search
    first reaches it), the default dirs. `evidence` collects every path whose stat decides
    an answer, with its identity when first touched: each dir searched (a file added to it
    changes its mtime), each file read."""

    def __init__(self, ld_library_path: str | None = None,
                 cache_path: str = LD_SO_CACHE) -> None:
        raw = (os.environ.get("LD_LIBRARY_PATH", "") if ld_library_path is None
               else ld_library_path)
        self.cache_path = cache_path
        self._cache: dict[str, list[tuple[int, int, str]]] | None = None
        self._host: Header | None = None
        self.evidence: dict[str, str] = {}   # "." when a dir is relative: cwd's identity
        program = (os.path.dirname(os.path.realpath(sys.executable))
                   if sys.executable and "$" in raw else None)
        self.env_dirs = self._dirs(raw.replace(";", ":"), program) if raw else []

    def _note(self, path: str) -> None:
        if path not in self.evidence:
            self.evidence[path] = _identity(path)

    def find(self, soname: str, needing: str | None) -> str | None:
        """The file the loader would map for `soname` when `needing` (a path) needs it."""
        if "/" in soname:   # a path, not a name to search for
            path = os.path.join(os.getcwd(), soname)
            self._note(".")
            self._note(path)
            return path if os.path.exists(path) else None
        dyn = self.dynamic(needing) if needing else None
        want = dyn.header if dyn is not None else self._host_header()
        origin = os.path.dirname(needing) if needing else None
        searches = []
        if dyn is not None and dyn.rpath is not None and dyn.runpath is None:
            searches.append(self._dirs(dyn.rpath, origin))
        searches.append(self.env_dirs)
        if dyn is not None and dyn.runpath is not None:
            searches.append(self._dirs(dyn.runpath, origin))
        for dirs in searches:
            hit = self._search(dirs, soname, want)
            if hit:
                return hit
        nodeflib = dyn is not None and bool(dyn.flags_1 & _DF_1_NODEFLIB)
        hit = self._from_cache(soname, want)
        if nodeflib:   # a cache entry outside the default dirs still counts
            return hit if hit and not hit.startswith(
                tuple(d + "/" for d in default_dirs())) else None
        return hit or self._search(default_dirs(), soname, want)

    def dynamic(self, path: str) -> Dynamic | None:
        from .elfread import ElfError, read_dynamic

        self._note(path)
        try:
            return read_dynamic(path)
        except (OSError, ElfError):
            return None

    def _host_header(self) -> Header | None:
        from .elfread import ElfError, read_header

        if self._host is None:
            try:
                self._host = read_header("/proc/self/exe")
            except (OSError, ElfError):
                return None
        return self._host

    def _dirs(self, value: str, origin: str | None) -> list[str]:
        """A search path's dirs as the loader's fillin_rpath makes them: tokens expanded (an
        entry whose $ORIGIN is unknown dropped), trailing slashes off, empty meaning cwd,
        relative to cwd."""
        out: list[str] = []
        for entry in value.split(":"):
            expanded = _expand(entry, origin, default_dirs()[0][1:], loader_platform()
                               ) if "$" in entry else entry
            if expanded is None:
                continue
            if not expanded.startswith("/"):
                self._note(".")
            # not normalized: the kernel resolves `dir/../lib` through symlinks, as here
            d = os.path.join(os.getcwd(), expanded.rstrip("/") or expanded[:1])
            if d not in out:
                out.append(d)
        return out

    def _search(self, dirs: list[str], soname: str, want: Header | None) -> str | None:
        for d in dirs:
            self._note(d)
            path = os.path.join(d, soname)
            identity = _identity(path)   # before the read: a change after it shows next time
            verdict = self._probe(path, want)
            if verdict != "absent":
                self.evidence.setdefault(path, identity)
            if verdict in ("ok", "broken"):   # the loader stops at a broken file: an error
                return path
        return None

    def _probe(self, path: str, want: Header | None) -> str:
        from .elfread import ElfError, read_header

        try:
            found = read_header(path)
        except FileNotFoundError:
            return "absent"
        except OSError:
            return "unreadable"   # the loader moves on (EACCES, a directory)
        except ElfError:
            return "broken"
        return "ok" if want is None or found.compatible(want) else "other"

    def _from_cache(self, soname: str, want: Header | None) -> str | None:
        if self._cache is None:
            from .elfread import read_ld_so_cache

            self._cache = read_ld_so_cache(self.cache_path)
        ids = _CACHE_IDS.get((want.machine, want.elf_class)) if want is not None else None
        for flags, hwcap, path in self._cache.get(soname, []):
            if hwcap == 0 and (flags in ids if ids else (flags & 0xFF) in (1, 3)):
                self._note(path)
                # the loader tries the cache's first match only, then the default dirs
                return path if self._probe(path, want) in ("ok", "broken") else None
        return None


_PLATFORM: list[str] = []


def loader_platform() -> str:
    """What the loader substitutes for $PLATFORM: the kernel's AT_PLATFORM, except that
    glibc on an Intel x86-64 CPU names its own (sysdeps/x86/cpu-features.c): "xeon_phi"
    with AVX512CD/ER/PF, else "haswell" with AVX2, FMA, BMI1, BMI2, LZCNT, MOVBE, POPCNT."""
    if not _PLATFORM:
        info: dict[str, str] = {}
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:   # the first CPU's lines, up to its flags
                    key, _, value = (part.strip() for part in line.partition(":"))
                    if info.setdefault(key, value) and key == "flags":
                        break
        except OSError:   # no /proc: the kernel's name
            pass
        flags, name = set(info.get("flags", "").split()), os.uname().machine
        if name == "x86_64" and info.get("vendor_id") == "GenuineIntel":
            if {"avx512cd", "avx512er", "avx512pf"} <= flags:
                name = "xeon_phi"
            elif {"avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "popcnt"} <= flags:
                name = "haswell"
        _PLATFORM.append(name)
    return _PLATFORM[0]


def _expand(entry: str, origin: str | None, lib: str, platform: str) -> str | None:
    """$ORIGIN, $LIB, $PLATFORM (or ${...}) substituted; None if $ORIGIN is unknown."""
    pieces = entry.split("$")
    out = [pieces[0]]
    for piece in pieces[1:]:
        for name, value in (("ORIGIN", origin), ("LIB", lib), ("PLATFORM", platform)):
            if piece.startswith("{" + name + "}"):
                rest = piece[len(name) + 2:]
            elif piece.startswith(name) and piece[len(name):len(name) + 1] in ("", "/"):
                rest = piece[len(name):]   # glibc's is_dst: `$ORIGINx` is no token
            else:
                continue
            if value is None:
                return None
            out.append(value + rest)
            break
        else:
            out.append("$" + piece)   # not a token the loader knows: kept as it is
    return "".join(out)


def resolve(soname: str, needing_file: str | None, ld_library_path: str | None = None,
            cache_path: str = LD_SO_CACHE) -> str | None:
    """The path the dynamic loader would load for `soname` needed by `needing_file`, None if
    it would find none. `ld_library_path` None: the environment's."""
    return Resolver(ld_library_path, cache_path).find(soname, needing_file)


# ---- gaps --------------------------------------------------------------------------------


def _split_version(name: str) -> tuple[str, tuple[int, ...] | None]:
    """`GLIBCXX_3.4.30` as ("GLIBCXX", (3, 4, 30)); ("GLIBC", None) for `GLIBC_PRIVATE`."""
    family, sep, tail = name.rpartition("_")
    if not sep:
        return name, None
    parts = tail.split(".")
    return family, tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def _version_order(name: str) -> tuple[str, tuple[int, ...], str]:
    family, number = _split_version(name)
    return family, number or (), name


def _found(needed: str, defined: list[str]) -> str:
    family = _split_version(needed)[0]
    same = [(number, name) for name in defined
            for fam, number in [_split_version(name)] if fam == family and number is not None]
    return f"up to {max(same)[1]}" if same else f"none of {family}_*"


def check(needs: Needs, env_root: str, *, glibc: str | None = "",
          ld_library_path: str | None = None, cache_path: str = LD_SO_CACHE) -> list[Gap]:
    """Every gap between `needs` and this host, uncached. `glibc`: the C library version to
    hold the needs to; "" (the default) asks the running one, None skips that check."""
    have = host_glibc() if glibc == "" else glibc
    return _check(needs, os.path.abspath(env_root), have, Resolver(ld_library_path, cache_path))


def _check(needs: Needs, root: str, have: str | None, resolver: Resolver) -> list[Gap]:
    gaps: list[Gap] = []
    glibc_short = bool(needs.glibc and have and version_tuple(have) < version_tuple(needs.glibc))
    if glibc_short:
        gaps.append(Gap("glibc", f">= {needs.glibc}{needs.glibc_needers.suffix()}", str(have)))
    for soname in sorted(set(needs.libraries) | set(needs.versions)):
        optional = soname in needs.optional
        versions = needs.versions.get(soname, {})
        who = needs.libraries.get(soname) or next(iter(versions.values()))
        needing = os.path.join(root, who.files[0]) if who.files else None
        path = resolver.find(soname, needing)
        dyn = resolver.dynamic(path) if path else None
        if dyn is None:   # a file that is not ELF: the loader would stop with an error
            found = f"{path}, not a readable ELF file" if path else "none"
            gaps.append(Gap(soname, f"a shared library on this host{who.suffix()}", found,
                            optional))
            continue
        defined = dyn.verdef
        for version in sorted(versions, key=_version_order):
            family, number = _split_version(version)
            if version in defined or (glibc_short and family == "GLIBC" and number
                                      and number > version_tuple(str(have))):
                continue   # the glibc line already says so
            gaps.append(Gap(soname, version + versions[version].suffix(),
                            _found(version, defined), optional))
    return gaps


# ---- the per-host cache ------------------------------------------------------------------


def host_gaps(needs: Needs, env_root: str, *, glibc: str | None = "",
              ld_library_path: str | None = None, cache_path: str = LD_SO_CACHE) -> list[Gap]:
    """`check`, answered from the per-host cache when nothing that decides the answer has
    changed: the needs, the env's path, LD_LIBRARY_PATH (as dirs), ld.so.cache's identity,
    the glibc version and the host (the key); the stat of every dir searched and every file
    read (the entry's evidence, stat'ed again on a hit)."""
    if not needs:
        return []
    have = host_glibc() if glibc == "" else glibc
    root = os.path.abspath(env_root)
    resolver = Resolver(ld_library_path, cache_path)
    name, key = hostlibs_entry(root, needs.source, resolver.env_dirs, cache_path, have)
    value = cached(name, key)
    if value is not None:
        stored = replay_gaps(value)
        if stored is not None:
            return [Gap(*fields) for fields in stored]
    gaps = _check(needs, root, have, resolver)
    lines = [f"E\t{escape(p)}\t{escape(ident)}" for p, ident in resolver.evidence.items()]
    lines += [f"G\t{int(g.optional)}\t" + "\t".join(escape(f) for f in (g.subject, g.expected,
                                                                         g.found))
              for g in gaps]
    remember(name, key, "\n".join(lines))
    return gaps
