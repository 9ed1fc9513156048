"""What an environment's ELF files need from the host machine and do not ship: the sonames,
and per soname the symbol versions (GLIBC_2.34, GLIBCXX_3.4.30, ...) they need from it.

`scan` runs at build time and needs pyelftools (imported inside it); `host_records` writes
the needs as quick-sidecar records, which the launch side (`loader`, stdlib only) reads.
"""

from __future__ import annotations

import posixpath
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from .host import version_tuple

_ELF_MAGIC = b"\x7fELF"
# GLIBC_PRIVATE and GLIBC_ABI_* are not orderable releases; only numeric ones bound the host.
_GLIBC_RE = re.compile(r"GLIBC_(\d+(?:\.\d+)+)")
_VER_FLG_WEAK = 0x2   # a weak version need: the loader runs the file without it
_NAMED = 3            # files named per need in the quick sidecar; the count says the rest


class HostNeeds(NamedTuple):
    # soname -> sorted env-relative paths of the ELF files needing it
    libraries: Mapping[str, list[str]]
    glibc: str | None  # highest GLIBC_x.y any file's symbol versions require
    # soname -> version name -> sorted env-relative paths of the files needing that version
    versions: Mapping[str, Mapping[str, list[str]]] = MappingProxyType({})

    def to_json(self) -> dict[str, object]:
        return {"libraries": {k: list(v) for k, v in self.libraries.items()}, "glibc": self.glibc,
                "versions": {s: {v: list(f) for v, f in vs.items()}
                             for s, vs in self.versions.items()}}

    def glibc_files(self) -> list[str]:
        """The files needing the highest GLIBC_x.y (from whichever glibc library)."""
        name = f"GLIBC_{self.glibc}"
        return sorted({f for vs in self.versions.values() for f in vs.get(name, [])})


def host_records(needs: HostNeeds, optional: Iterable[str] = ()) -> list[tuple[str, ...]]:
    """The host needs as quick-sidecar records, which `loader.needs_from_records` reads:
    `glibc VERSION N FILE...`, `lib SONAME N FILE...`, `libver SONAME VERSION N FILE...`
    (N files need it, the first three named) and `libopt SONAME` for a recipe's
    `[host] optional` library. Sorted, so the same needs give the same bytes."""

    def named(files: list[str]) -> tuple[str, ...]:
        return (str(len(files)), *files[:_NAMED])

    records: list[tuple[str, ...]] = []
    if needs.glibc:
        records.append(("glibc", needs.glibc, *named(needs.glibc_files())))
    records += [("lib", s, *named(needs.libraries[s])) for s in sorted(needs.libraries)]
    records += [("libver", s, v, *named(files)) for s in sorted(needs.versions)
                for v, files in sorted(needs.versions[s].items())]
    records += [("libopt", s) for s in sorted(set(optional))]
    return records


# (DT_NEEDED, RPATH+RUNPATH entries, GLIBC versions, {needed file: version names})
ElfRead = tuple[list[str], list[str], set[str], dict[str, set[str]]]


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == _ELF_MAGIC
    except OSError:
        return False


def _read_elf(path: Path) -> ElfRead:
    """(DT_NEEDED, RPATH+RUNPATH entries, GLIBC versions, {needed file: version names}) of
    one ELF file; weak version needs left out."""
    from elftools.elf.dynamic import DynamicSection, DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection

    needed: list[str] = []
    search: list[str] = []
    glibc: set[str] = set()
    versions: dict[str, set[str]] = {}
    with path.open("rb") as f:
        elf = ELFFile(f)
        dynamics: list[DynamicSection | DynamicSegment] = [
            s for s in elf.iter_sections() if isinstance(s, DynamicSection)
        ]
        if not dynamics:  # section headers may be stripped (sstrip); the segment still works
            dynamics = [s for s in elf.iter_segments() if isinstance(s, DynamicSegment)]
        for dyn in dynamics:
            for tag in dyn.iter_tags():
                kind = tag.entry.d_tag
                if kind not in ("DT_NEEDED", "DT_RPATH", "DT_RUNPATH"):
                    continue
                # pyelftools sets the string-table value as an untyped attribute named after
                # the tag (DT_NEEDED -> .needed), so it is only reachable dynamically.
                value = str(getattr(tag, kind[3:].lower()))
                if kind == "DT_NEEDED":
                    needed.append(value)
                else:
                    search.extend(p for p in value.split(":") if p)
        for sec in elf.iter_sections():
            if isinstance(sec, GNUVerNeedSection):
                for verneed, auxes in sec.iter_versions():
                    file = verneed.name or ""
                    for aux in auxes:
                        if aux.entry.vna_flags & _VER_FLG_WEAK:
                            continue
                        versions.setdefault(file, set()).add(aux.name)
                        m = _GLIBC_RE.fullmatch(aux.name)
                        if m:
                            glibc.add(m.group(1))
    return needed, search, glibc, versions


def _origin_dirs(relpath: str, search: list[str]) -> list[str]:
    """Env-relative dirs that $ORIGIN-based RPATH/RUNPATH entries point to inside the env."""
    origin = posixpath.dirname(relpath)
    out = []
    for entry in search:
        if not entry.startswith(("$ORIGIN", "${ORIGIN}")):
            continue  # absolute entries point at the build machine, not at the env
        rest = entry.split("}", 1)[1] if entry.startswith("${") else entry[len("$ORIGIN") :]
        d = posixpath.normpath(posixpath.join(origin, "./" + rest.lstrip("/")))
        if d != ".." and not d.startswith("../"):
            out.append(d)
    return out


def _ships(root: Path, present: set[str], rel: str) -> bool:
    if rel in present:
        return True
    # Soname symlinks (libx.so.1 -> libx.so.1.2) are not in relpaths, which lists regular
    # files only; they count if they resolve to a file that stays inside the env.
    target = (root / rel).resolve()
    return target.is_file() and target.is_relative_to(root.resolve())


def read_elf(path: Path) -> ElfRead | None:
    """What the host scan reads from one file; None if it is not an ELF object (or one
    pyelftools cannot read)."""
    from elftools.common.exceptions import ELFError

    if not _is_elf(path):
        return None
    try:
        return _read_elf(path)
    except (ELFError, OSError, ValueError, struct.error, EOFError, IndexError, KeyError):
        return None  # pyelftools raises a mix of these on truncated/corrupt files


def scan(root: Path, relpaths: Iterable[str],
         known: Mapping[str, ElfRead | None] | None = None) -> HostNeeds:
    """Host needs of the ELF files among `relpaths` (regular files, POSIX, relative to root);
    a file in `known` is taken as read there (the store's tree it came from read it)."""
    present = set(relpaths)
    files = sorted(present)
    shipped = {p.rpartition("/")[2] for p in files}
    libraries: dict[str, set[str]] = {}
    versions: dict[str, dict[str, set[str]]] = {}
    glibc: set[str] = set()
    known = known or {}
    for rel in files:
        got = known[rel] if rel in known else read_elf(root / rel)
        if got is None:
            continue
        needed, search, glibcs, needs = got
        glibc |= glibcs
        dirs = _origin_dirs(rel, search)
        for soname in needed:
            if soname in shipped:
                continue
            if any(_ships(root, present, posixpath.join(d, soname)) for d in dirs):
                continue
            libraries.setdefault(soname, set()).add(rel)
            for version in needs.get(soname, ()):
                versions.setdefault(soname, {}).setdefault(version, set()).add(rel)
    return HostNeeds(
        libraries={k: sorted(libraries[k]) for k in sorted(libraries)},
        glibc=max(glibc, key=version_tuple) if glibc else None,
        versions={s: {v: sorted(versions[s][v]) for v in sorted(versions[s])}
                  for s in sorted(versions)},
    )
