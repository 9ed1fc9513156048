"""What an environment's ELF files need from the host machine and do not ship.

`scan` runs at build time and needs pyelftools (imported inside it); the launch side's view
of the host (`host`) is stdlib only.
"""

from __future__ import annotations

import posixpath
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .host import version_tuple

_ELF_MAGIC = b"\x7fELF"
# GLIBC_PRIVATE and GLIBC_ABI_* are not orderable releases; only numeric ones bound the host.
_GLIBC_RE = re.compile(r"GLIBC_(\d+(?:\.\d+)+)")


@dataclass(frozen=True)
class HostNeeds:
    libraries: dict[str, list[str]]  # soname -> sorted env-relative paths of ELF files needing it
    glibc: str | None  # highest GLIBC_x.y any file's symbol versions require

    def to_json(self) -> dict[str, object]:
        return {"libraries": {k: list(v) for k, v in self.libraries.items()}, "glibc": self.glibc}


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == _ELF_MAGIC
    except OSError:
        return False


def _read_elf(path: Path) -> tuple[list[str], list[str], set[str]]:
    """(DT_NEEDED, RPATH+RUNPATH entries, GLIBC versions) of one ELF file."""
    from elftools.elf.dynamic import DynamicSection, DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection

    needed: list[str] = []
    search: list[str] = []
    glibc: set[str] = set()
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
                for _verneed, auxes in sec.iter_versions():
                    for aux in auxes:
                        m = _GLIBC_RE.fullmatch(aux.name)
                        if m:
                            glibc.add(m.group(1))
    return needed, search, glibc


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


def scan(root: Path, relpaths: Iterable[str]) -> HostNeeds:
    """Host needs of the ELF files among `relpaths` (regular files, POSIX, relative to root)."""
    from elftools.common.exceptions import ELFError

    files = sorted(set(relpaths))
    present = set(files)
    shipped = {posixpath.basename(p) for p in files}
    libraries: dict[str, set[str]] = {}
    glibc: set[str] = set()
    for rel in files:
        path = root / rel
        if not _is_elf(path):
            continue
        try:
            needed, search, versions = _read_elf(path)
        except (ELFError, OSError, ValueError, struct.error, EOFError, IndexError, KeyError):
            continue  # pyelftools raises a mix of these on truncated/corrupt files
        glibc |= versions
        dirs = _origin_dirs(rel, search)
        for soname in needed:
            if soname in shipped:
                continue
            if any(_ships(root, present, posixpath.join(d, soname)) for d in dirs):
                continue
            libraries.setdefault(soname, set()).add(rel)
    return HostNeeds(
        libraries={k: sorted(libraries[k]) for k in sorted(libraries)},
        glibc=max(glibc, key=version_tuple) if glibc else None,
    )
