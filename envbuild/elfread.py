"""Small readers of what the dynamic loader reads: an ELF file's dynamic section (what the
launch path needs to resolve a shared library as the loader would and to check the symbol
versions it defines) and /etc/ld.so.cache.

Stdlib only and light (struct): it is imported at launch when the per-host answer about host
libraries is missing or stale. It reads what the loader reads, the program headers and the
PT_DYNAMIC segment, translating addresses through the PT_LOAD segments, so files whose
section headers were stripped read the same. Build time uses pyelftools (`hostreq`); tests
hold the two equal on the host's libraries and the interpreters' extension modules, and
this ld.so.cache reader equal to `ldconfig -p`.
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False   # not typing's: importing typing costs the launch path `re`
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

_MAGIC = b"\x7fELF"
_CACHE_NEW, _CACHE_OLD = b"glibc-ld.so.cache1.1", b"ld.so-1.7.0"
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 1, 5, 10, 14, 15, 29
_DT_FLAGS_1 = 0x6FFFFFFB
_DT_VERDEF, _DT_VERDEFNUM = 0x6FFFFFFC, 0x6FFFFFFD
_DT_VERNEED, _DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF
_VER_FLG_BASE = 0x1
_VER_FLG_WEAK = 0x2
_WINDOW = 1 << 14
_MAX_ENTRIES = 1 << 16  # a loop in a corrupt version chain stops here, not never


class ElfError(ValueError):
    """Not an ELF file, or one whose dynamic section this reader cannot follow."""


class Header:
    """What decides whether the loader takes a file for another: class, byte order, machine."""

    __slots__ = ("elf_class", "byte_order", "machine", "elf_type")

    def __init__(self, elf_class: int, byte_order: str, machine: int, elf_type: int) -> None:
        self.elf_class = elf_class      # 1: 32-bit, 2: 64-bit
        self.byte_order = byte_order    # "<" little-endian, ">" big-endian
        self.machine = machine          # e_machine: 62 x86-64, 183 AArch64, 3 i386
        self.elf_type = elf_type        # e_type: 2 executable, 3 shared object (or PIE)

    def compatible(self, other: Header) -> bool:
        return (self.elf_class, self.byte_order, self.machine) == (
            other.elf_class, other.byte_order, other.machine)


class Dynamic:
    """The dynamic section of one ELF file. `verneed`: per needed file name (a soname), the
    version names it needs (`weak_needs` the (file, version) pairs marked weak, which the
    loader does not insist on); `verdef`: the version names it defines, without the base
    entry (the file's own name)."""

    __slots__ = ("header", "needed", "soname", "rpath", "runpath", "flags_1", "verneed",
                 "weak_needs", "verdef")

    def __init__(self, header: Header) -> None:
        self.header = header
        self.needed: list[str] = []
        self.soname: str | None = None
        self.rpath: str | None = None
        self.runpath: str | None = None
        self.flags_1 = 0
        self.verneed: dict[str, list[str]] = {}
        self.weak_needs: set[tuple[str, str]] = set()
        self.verdef: list[str] = []


class _Reader:
    """Reads of an open file through one window: the structures a lookup walks lie close
    together, so most reads are slices of the last one."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._base = 0
        self._buf = b""

    def some(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`, fewer only at the end of the file."""
        start = offset - self._base
        if start < 0 or start + size > len(self._buf):
            try:
                self._fh.seek(offset)
            except (OSError, OverflowError, ValueError):   # an offset past any file size
                raise ElfError(f"offset {offset:#x} outside the file") from None
            self._buf, self._base, start = self._fh.read(max(size, _WINDOW)), offset, 0
        return self._buf[start:start + size]

    def at(self, offset: int, size: int) -> bytes:
        data = self.some(offset, size)
        if len(data) != size:
            raise ElfError(f"truncated at offset {offset}")
        return data

    def cstr(self, offset: int, limit: int) -> str:
        """The NUL-terminated string at `offset`, at most `limit` bytes long."""
        parts: list[bytes] = []
        while limit > 0:
            chunk = self.some(offset, min(256, limit))
            if not chunk:
                break
            nul = chunk.find(b"\0")
            if nul >= 0:
                parts.append(chunk[:nul])
                return b"".join(parts).decode("utf-8", "surrogateescape")
            parts.append(chunk)
            offset, limit = offset + len(chunk), limit - len(chunk)
        raise ElfError("unterminated string")


def _header(ident: bytes) -> tuple[Header, str, tuple[int, ...]]:
    if ident[:4] != _MAGIC:
        raise ElfError("not an ELF file")
    if len(ident) < 16:
        raise ElfError("file too short")
    elf_class, data = ident[4], ident[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        raise ElfError(f"unknown ELF class {elf_class} or byte order {data}")
    order = "<" if data == 1 else ">"
    fmt = order + ("HHIQQQIHHHHHH" if elf_class == 2 else "HHIIIIIHHHHHH")
    size = struct.calcsize(fmt)
    if len(ident) < 16 + size:
        raise ElfError("file too short")
    fields = struct.unpack_from(fmt, ident, 16)
    return Header(elf_class, order, fields[1], fields[0]), order, fields


def read_header(path: str) -> Header:
    """The ELF header's class, byte order and machine; ElfError if not ELF, OSError."""
    with open(path, "rb") as fh:
        return _header(fh.read(64))[0]


def read_dynamic(path: str) -> Dynamic:
    """The dynamic section of the ELF file at `path`; empty for a file without one (a
    static executable, an object file). ElfError if it is not ELF or is corrupt, OSError."""
    with open(path, "rb") as fh:
        return _read(_Reader(fh))


def _segments(r: _Reader, head: Header, order: str, fields: tuple[int, ...],
              ) -> tuple[list[tuple[int, int, int]], tuple[int, int] | None]:
    """The PT_LOAD segments as (vaddr, filesz, offset), and PT_DYNAMIC's (offset, filesz)."""
    is64 = head.elf_class == 2
    phoff, shoff, phentsize, phnum = fields[4], fields[5], fields[8], fields[9]
    if phnum == 0xFFFF:  # PN_XNUM: the real count is section 0's sh_info
        phnum = struct.unpack(order + "I", r.at(shoff + (44 if is64 else 28), 4))[0]
    phfmt = order + ("IIQQQQQQ" if is64 else "IIIIIIII")
    if phnum and phentsize < struct.calcsize(phfmt):
        raise ElfError(f"program header entries of {phentsize} bytes")
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        ph = struct.unpack(phfmt, r.at(phoff + i * phentsize, struct.calcsize(phfmt)))
        if is64:
            p_type, offset, vaddr, filesz = ph[0], ph[2], ph[3], ph[5]
        else:
            p_type, offset, vaddr, filesz = ph[0], ph[1], ph[2], ph[4]
        if p_type == _PT_LOAD:
            loads.append((vaddr, filesz, offset))
        elif p_type == _PT_DYNAMIC and dynamic is None:
            dynamic = (offset, filesz)
    return loads, dynamic


def _read(r: _Reader) -> Dynamic:
    head, order, fields = _header(r.some(0, 64))
    loads, dynamic = _segments(r, head, order, fields)
    out = Dynamic(head)
    if dynamic is None:
        return out
    tags = _tags(r, order, head.elf_class == 2, *dynamic)

    def file_offset(addr: int) -> int:
        for vaddr, filesz, offset in loads:
            if vaddr <= addr < vaddr + filesz:
                return offset + addr - vaddr
        raise ElfError(f"address {addr:#x} is in no loaded segment")

    one = dict(tags)  # a repeated tag: the last counts, as in the loader's get-dynamic-info
    if _DT_STRTAB not in one:
        if any(tag in (_DT_NEEDED, _DT_SONAME, _DT_RPATH, _DT_RUNPATH) for tag, _ in tags):
            raise ElfError("dynamic section without a string table")
        return out
    strtab, strsz = file_offset(one[_DT_STRTAB]), one.get(_DT_STRSZ, 1 << 30)

    def string(index: int) -> str:
        if index >= strsz:
            raise ElfError(f"string index {index} past the string table")
        return r.cstr(strtab + index, strsz - index)

    out.needed = [string(val) for tag, val in tags if tag == _DT_NEEDED]
    for tag, attr in ((_DT_SONAME, "soname"), (_DT_RPATH, "rpath"), (_DT_RUNPATH, "runpath")):
        if tag in one:
            setattr(out, attr, string(one[tag]))
    out.flags_1 = one.get(_DT_FLAGS_1, 0)
    if _DT_VERNEED in one:
        _verneed(r, order, file_offset(one[_DT_VERNEED]), one.get(_DT_VERNEEDNUM), string, out)
    if _DT_VERDEF in one:
        _verdef(r, order, file_offset(one[_DT_VERDEF]), one.get(_DT_VERDEFNUM), string, out)
    return out


def _tags(r: _Reader, order: str, is64: bool, offset: int, size: int) -> list[tuple[int, int]]:
    fmt = order + ("qQ" if is64 else "iI")
    step = struct.calcsize(fmt)
    out = []
    for at in range(offset, offset + size - step + 1, step):
        tag, val = struct.unpack(fmt, r.at(at, step))
        if tag == 0:  # DT_NULL
            break
        out.append((tag, val))
    return out


def _chain(count: int | None) -> range:
    """How many entries of a version chain to follow: the DT_*NUM count, or until vn_next
    / vd_next is 0 when the count is missing."""
    return range(count if count is not None and count < _MAX_ENTRIES else _MAX_ENTRIES)


def _spend(out: Dynamic) -> None:
    """A corrupt file's chains (cycles, huge counts) end in an error, not in hours."""
    if len(out.verdef) + sum(map(len, out.verneed.values())) > _MAX_ENTRIES:
        raise ElfError("version chains longer than any real file's")


def _verneed(r: _Reader, order: str, offset: int, count: int | None,
             name: Callable[[int], str], out: Dynamic) -> None:
    for _ in _chain(count):
        _version, cnt, vn_file, vn_aux, vn_next = struct.unpack(order + "HHIII",
                                                                r.at(offset, 16))
        file = name(vn_file)
        names = out.verneed.setdefault(file, [])
        aux = offset + vn_aux
        for _ in range(cnt):
            _hash, flags, _other, vna_name, vna_next = struct.unpack(order + "IHHII",
                                                                     r.at(aux, 16))
            version = name(vna_name)
            names.append(version)
            if len(names) & 0xFF == 0:
                _spend(out)
            if flags & _VER_FLG_WEAK:
                out.weak_needs.add((file, version))
            if not vna_next:
                break
            aux += vna_next
        if not vn_next:
            break
        offset += vn_next


def _verdef(r: _Reader, order: str, offset: int, count: int | None,
            name: Callable[[int], str], out: Dynamic) -> None:
    for _ in _chain(count):
        _version, flags, _ndx, cnt, _hash, vd_aux, vd_next = struct.unpack(order + "HHHHIII",
                                                                           r.at(offset, 20))
        if cnt and not flags & _VER_FLG_BASE:  # the base entry names the file itself
            vda_name = struct.unpack(order + "I", r.at(offset + vd_aux, 4))[0]
            out.verdef.append(name(vda_name))
            if len(out.verdef) & 0xFF == 0:
                _spend(out)
        if not vd_next:
            break
        offset += vd_next


# ---- ld.so.cache -------------------------------------------------------------------------


def read_ld_so_cache(path: str) -> dict[str, list[tuple[int, int, str]]]:
    """/etc/ld.so.cache (glibc-ld.so.cache1.1, alone or after the old format's entries) as
    {soname: [(flags, hwcap, path), ...]} in the file's order; {} if absent or unreadable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return {}
    base = 0
    if data.startswith(_CACHE_OLD) and len(data) >= 16:
        nlibs = struct.unpack_from("=I", data, 12)[0]
        base = (16 + nlibs * 12 + 7) & ~7   # the new format follows, 8-aligned
    if data[base:base + 20] != _CACHE_NEW or len(data) < base + 48:
        return {}   # the old format alone (`ldconfig -c old`): not read
    order = {2: "<", 3: ">"}.get(data[base + 32], "=")
    nlibs = struct.unpack_from(order + "I", data, base + 20)[0]
    out: dict[str, list[tuple[int, int, str]]] = {}
    for at in range(base + 48, min(base + 48 + 24 * nlibs, len(data) - 23), 24):
        flags, key, value, _osversion, hwcap = struct.unpack_from(order + "iIIIQ", data, at)
        out.setdefault(_cstr(data, base + key), []).append((flags, hwcap,
                                                            _cstr(data, base + value)))
    return out


def _cstr(data: bytes, at: int) -> str:
    end = data.find(b"\0", at)
    return os.fsdecode(data[at:end if end >= 0 else len(data)])
