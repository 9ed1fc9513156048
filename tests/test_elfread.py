"""elfread (the launch path's stdlib ELF reader) against pyelftools on the same real files:
the host's shared libraries, every pyenv interpreter's extension modules, and gcc-built
files with RPATH, RUNPATH, version scripts and stripped section headers."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection, DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from envbuild.elfread import ElfError, read_dynamic, read_header

REPO = Path(__file__).resolve().parents[1]
Seen = tuple[list[str], "str | None", "str | None", "str | None", dict[str, list[str]],
             set[tuple[str, str]], list[str]]


def _pyelftools(path: str) -> Seen:
    """What pyelftools reads: (needed, soname, rpath, runpath, verneed, weak needs, verdef)."""
    needed: list[str] = []
    values: dict[str, str] = {}
    verneed: dict[str, list[str]] = {}
    weak: set[tuple[str, str]] = set()
    verdef: list[str] = []
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        dyns: list[DynamicSection | DynamicSegment] = [
            s for s in elf.iter_sections() if isinstance(s, DynamicSection)]
        if not dyns:
            dyns = [s for s in elf.iter_segments() if isinstance(s, DynamicSegment)]
        for dyn in dyns[:1]:
            for tag in dyn.iter_tags():
                kind = tag.entry.d_tag
                if kind == "DT_NEEDED":
                    needed.append(str(getattr(tag, "needed")))  # noqa: B009
                elif kind in ("DT_SONAME", "DT_RPATH", "DT_RUNPATH"):
                    values[kind] = str(getattr(tag, kind[3:].lower()))
        for sec in elf.iter_sections():
            if isinstance(sec, GNUVerNeedSection):
                for vn, auxes in sec.iter_versions():
                    file = vn.name or ""
                    names = verneed.setdefault(file, [])
                    for aux in auxes:
                        names.append(aux.name)
                        if aux.entry.vna_flags & 2:
                            weak.add((file, aux.name))
            elif isinstance(sec, GNUVerDefSection):
                for vd, vd_auxes in sec.iter_versions():
                    first = next(iter(vd_auxes), None)
                    if first is not None and not vd.entry.vd_flags & 1:
                        verdef.append(first.name)
    return (needed, values.get("DT_SONAME"), values.get("DT_RPATH"),
            values.get("DT_RUNPATH"), verneed, weak, verdef)


def _ours(path: str) -> Seen:
    d = read_dynamic(path)
    return d.needed, d.soname, d.rpath, d.runpath, d.verneed, d.weak_needs, d.verdef


def _real_elf_files(pattern: str) -> list[str]:
    seen: set[str] = set()
    out = []
    for path in sorted(glob.glob(pattern)):
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        with open(real, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue  # linker scripts such as libc.so
        seen.add(real)
        out.append(real)
    return out


HOST_LIBS = _real_elf_files("/lib/x86_64-linux-gnu/*.so*")
DYNLOAD = _real_elf_files(os.path.join(
    os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")),
    "versions/*/lib/python3.*/lib-dynload/*.so"))


def _compare(paths: list[str]) -> None:
    assert paths, "no files to compare"
    diffs = [p for p in paths if _ours(p) != _pyelftools(p)]
    assert diffs == [], diffs[:5]


def test_host_libraries_read_as_pyelftools_reads_them() -> None:
    assert len(HOST_LIBS) > 50
    _compare(HOST_LIBS)


def test_interpreters_extension_modules_read_as_pyelftools_reads_them() -> None:
    assert len(DYNLOAD) > 50
    _compare(DYNLOAD)


def test_libc_and_libstdcxx_versions() -> None:
    libc = read_dynamic("/lib/x86_64-linux-gnu/libc.so.6")
    assert libc.soname == "libc.so.6"
    assert "GLIBC_2.2.5" in libc.verdef and "GLIBC_PRIVATE" in libc.verdef
    assert "libc.so.6" not in libc.verdef  # the base entry is the file, not a version
    assert "GLIBC_2.2.5" in libc.verneed["ld-linux-x86-64.so.2"]
    cxx = read_dynamic("/lib/x86_64-linux-gnu/libstdc++.so.6")
    assert {"GLIBCXX_3.4", "GLIBCXX_3.4.28", "CXXABI_1.3"} <= set(cxx.verdef)
    assert "GCC_3.0" in cxx.verneed["libgcc_s.so.1"]
    head = read_header("/lib/x86_64-linux-gnu/libc.so.6")
    assert (head.elf_class, head.byte_order, head.machine) == (2, "<", 62)
    assert read_header(sys.executable).compatible(head)


def _gcc(cwd: Path, *args: str, cc: str = "gcc") -> None:
    subprocess.run([cc, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("elf")
    (d / "v.map").write_text("V_1.0 { global: one; local: *; };\nV_2.0 { global: two; } V_1.0;\n")
    (d / "v.c").write_text("int one(void) { return 1; }\nint two(void) { return 2; }\n")
    (d / "use.c").write_text("int two(void);\nint use(void) { return two(); }\n")
    (d / "cxx.cc").write_text('#include <string>\nstd::string f(const char* s) { return s; }\n')
    _gcc(d, "-shared", "-fPIC", "-Wl,-soname,libv.so.1", "-Wl,--version-script=v.map",
         "v.c", "-o", "libv.so.1")
    _gcc(d, "-shared", "-fPIC", "use.c", "-L.", "-l:libv.so.1", "-Wl,-rpath,$ORIGIN/../lib",
         "-Wl,--enable-new-dtags", "-o", "runpath.so")
    _gcc(d, "-shared", "-fPIC", "use.c", "-L.", "-l:libv.so.1", "-Wl,-rpath,/a:$ORIGIN",
         "-Wl,--disable-new-dtags", "-Wl,-z,now", "-o", "rpath.so")
    _gcc(d, "-shared", "-fPIC", "cxx.cc", "-o", "cxx.so", cc="g++")
    # 32-bit, linked without the C library (a 64-bit host rarely has the 32-bit one)
    _gcc(d, "-m32", "-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libv.so.1",
         "-Wl,--version-script=v.map", "v.c", "-o", "v32.so")
    _gcc(d, "-m32", "-shared", "-fPIC", "-nostdlib", "use.c", "v32.so", "-Wl,-rpath,$ORIGIN",
         "-o", "use32.so")
    shutil.copy(d / "runpath.so", d / "stripped.so")
    # no section headers at all, as sstrip leaves a file: the loader needs none
    data = bytearray((d / "stripped.so").read_bytes())
    data[0x28:0x30] = bytes(8)   # e_shoff
    data[0x3C:0x40] = bytes(4)   # e_shnum, e_shstrndx
    (d / "stripped.so").write_bytes(bytes(data))
    return d


def test_gcc_built_files(built: Path) -> None:
    libv = read_dynamic(str(built / "libv.so.1"))
    assert libv.soname == "libv.so.1" and libv.verdef == ["V_1.0", "V_2.0"]
    runpath = read_dynamic(str(built / "runpath.so"))
    assert runpath.runpath == "$ORIGIN/../lib" and runpath.rpath is None
    assert runpath.verneed["libv.so.1"] == ["V_2.0"]
    assert runpath.flags_1 == 0
    rpath = read_dynamic(str(built / "rpath.so"))
    assert rpath.rpath == "/a:$ORIGIN" and rpath.runpath is None
    assert rpath.flags_1 & 1  # DF_1_NOW
    cxx = read_dynamic(str(built / "cxx.so"))
    assert "libstdc++.so.6" in cxx.needed
    assert any(v.startswith("GLIBCXX_3.4") for v in cxx.verneed["libstdc++.so.6"])
    _compare([str(p) for p in sorted(built.glob("*.so*")) if p.name != "stripped.so"])


def test_stripped_section_headers_read_the_same(built: Path) -> None:
    with open(built / "stripped.so", "rb") as fh:
        assert ELFFile(fh).num_sections() == 0
    assert _ours(str(built / "stripped.so")) == _ours(str(built / "runpath.so"))


def test_32_bit_files(built: Path) -> None:
    lib = read_dynamic(str(built / "v32.so"))
    assert lib.header.elf_class == 1 and lib.header.machine == 3
    assert lib.verdef == ["V_1.0", "V_2.0"]
    use = read_dynamic(str(built / "use32.so"))
    assert use.verneed == {"libv.so.1": ["V_2.0"]} and use.runpath == "$ORIGIN"
    _compare([str(built / "v32.so"), str(built / "use32.so")])


def test_not_elf_and_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("INPUT(libc.so.6)\n")
    (tmp_path / "short").write_bytes(b"\x7fELF\x02\x01")
    good = Path("/lib/x86_64-linux-gnu/libc.so.6").read_bytes()
    (tmp_path / "truncated").write_bytes(good[:4096])
    for name in ("text", "short", "truncated"):
        with pytest.raises(ElfError):
            read_dynamic(str(tmp_path / name))
    with pytest.raises(FileNotFoundError):
        read_dynamic(str(tmp_path / "absent"))
    with pytest.raises(ElfError):
        read_header(str(tmp_path / "short"))


def test_damaged_files_raise_elf_errors_only(tmp_path: Path) -> None:
    """Truncated and bit-flipped copies of real libraries: each reads or raises ElfError."""
    import random

    rng = random.Random(0)
    for src in ("libc.so.6", "libstdc++.so.6", "libz.so.1"):
        good = Path(f"/lib/x86_64-linux-gnu/{src}").read_bytes()
        for i in range(60):
            data = bytearray(good[:rng.choice([4, 5, 17, 63, 64, 200, 4096, len(good)])])
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(min(len(data), 0x4000 if i % 2 else len(data)))
                data[at] = rng.randrange(256)
            (tmp_path / "damaged").write_bytes(bytes(data))
            try:
                read_dynamic(str(tmp_path / "damaged"))
            except ElfError:
                pass


def test_object_file_has_no_dynamic_section(built: Path) -> None:
    _gcc(built, "-c", "-fPIC", "v.c", "-o", "v.o")
    d = read_dynamic(str(built / "v.o"))
    assert (d.needed, d.verdef, d.verneed) == ([], [], {})


def test_reading_imports_only_the_stdlib() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[2]); import envbuild.elfread as e; "
            "e.read_dynamic(sys.argv[1]); "
            "bad = {'re', 'elftools', 'hashlib', 'typing'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-I", "-S", "-c", code,
                    "/lib/x86_64-linux-gnu/libc.so.6", str(REPO)], check=True)
