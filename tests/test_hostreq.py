"""hostreq against real ELF files built with gcc and the interpreter's own extensions."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from envbuild.host import host_glibc, version_tuple
from envbuild.hostreq import HostNeeds, host_records, scan
from envbuild.loader import resolve

REPO = Path(__file__).resolve().parents[1]



def _gcc(cwd: Path, *args: str) -> None:
    subprocess.run(["gcc", *args], cwd=cwd, check=True, capture_output=True)


def _walk(root: Path) -> list[str]:
    # Mirrors the caller's contract: regular files only, symlinks are not listed.
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pkg/mod.so needs libfoo.so (shipped in pkg.libs) and libm; lib/ holds a RUNPATH lib."""
    root = tmp_path_factory.mktemp("env")
    src = tmp_path_factory.mktemp("src")
    (src / "foo.c").write_text("int foo(int x) { return x + 1; }\n")
    (src / "bar.c").write_text("int bar(int x) { return x * 2; }\n")
    (src / "mod.c").write_text(
        "#include <math.h>\n#include <stdio.h>\nint foo(int);\n"
        'double run(double x) { printf("%f", x); return cos(x) + foo((int)x); }\n'
    )
    (src / "usebar.c").write_text("int bar(int);\nint use(int x) { return bar(x); }\n")
    _gcc(src, "-shared", "-fPIC", "-Wl,-soname,libfoo.so", "foo.c", "-o", "libfoo.so")
    _gcc(src, "-shared", "-fPIC", "-Wl,-soname,libbar.so.1", "bar.c", "-o", "libbar.so.1.0")
    os.symlink("libbar.so.1.0", src / "libbar.so.1")
    # --no-as-needed: some distros default to --as-needed, which could drop a DT_NEEDED.
    _gcc(
        src,
        "-shared",
        "-fPIC",
        "-Wl,--no-as-needed",
        "mod.c",
        "-L.",
        "-lfoo",
        "-lm",
        "-o",
        "mod.so",
    )
    _gcc(
        src,
        "-shared",
        "-fPIC",
        "usebar.c",
        "-L.",
        "-l:libbar.so.1",
        "-Wl,-rpath,$ORIGIN/../lib",
        "-o",
        "usebar.so",
    )
    for d in ("pkg", "pkg.libs", "lib", "outside/pkg"):
        (root / d).mkdir(parents=True)
    shutil.copy(src / "mod.so", root / "pkg/mod.so")
    shutil.copy(src / "libfoo.so", root / "pkg.libs/libfoo.so")
    shutil.copy(src / "usebar.so", root / "pkg/usebar.so")
    shutil.copy(src / "libbar.so.1.0", root / "lib/libbar.so.1.0")
    os.symlink("libbar.so.1.0", root / "lib/libbar.so.1")
    # Same RUNPATH, but at the top of the env: $ORIGIN/../lib escapes the env and ships nothing.
    shutil.copy(src / "usebar.so", root / "escape.so")
    (root / "README.txt").write_text("not an ELF file\n")
    (root / "pkg/broken.so").write_bytes(b"\x7fELF" + b"\x00garbage" * 10)
    return root


def test_scan_reports_host_libraries_not_shipped_ones(env: Path) -> None:
    needs = scan(env, _walk(env))
    assert needs.libraries["libm.so.6"] == ["pkg/mod.so"]
    # Only mod.so calls libc; whether the others list it depends on the toolchain's --as-needed.
    assert "pkg/mod.so" in needs.libraries["libc.so.6"]
    assert "libfoo.so" not in needs.libraries  # shipped in pkg.libs/ (basename rule)
    # Resolved via $ORIGIN/../lib for pkg/usebar.so, but not for the top-level copy.
    assert needs.libraries["libbar.so.1"] == ["escape.so"]
    assert needs.glibc is not None and re.fullmatch(r"2\.\d+(\.\d+)?", needs.glibc)


def test_unshipped_library_is_reported(env: Path) -> None:
    rels = [r for r in _walk(env) if not r.startswith("pkg.libs/")]
    assert scan(env, rels).libraries["libfoo.so"] == ["pkg/mod.so"]


def test_non_elf_and_broken_files_are_skipped(env: Path) -> None:
    needs = scan(env, ["README.txt", "pkg/broken.so"])
    assert needs == HostNeeds(libraries={}, glibc=None)
    assert needs.to_json() == {"libraries": {}, "glibc": None, "versions": {}}


def test_output_is_deterministic(env: Path) -> None:
    rels = _walk(env)
    shuffled = rels[::-1] + rels[:3]  # order and duplicates must not matter
    random.Random(0).shuffle(shuffled)
    a, b = scan(env, rels).to_json(), scan(env, shuffled).to_json()
    assert json.dumps(a) == json.dumps(b)
    libs = a["libraries"]
    assert isinstance(libs, dict) and list(libs) == sorted(libs)


def test_host_glibc_satisfies_what_we_built(env: Path) -> None:
    required = scan(env, _walk(env)).glibc
    host = host_glibc()
    assert required is not None and host is not None
    assert version_tuple(host) >= version_tuple(required)


def _loaded_extensions() -> list[Path]:
    dynload = [Path(p) for p in sys.path if p.endswith("lib-dynload") and Path(p).is_dir()]
    if not dynload:
        pytest.fail("interpreter has no lib-dynload")
    # Already-imported ones are known to load on this host, so their needs must be met.
    loaded = {Path(f) for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None))}
    return sorted(p for p in dynload[0].glob("*.so") if p in loaded)[:4]


def test_scan_real_python_extensions(tmp_path: Path) -> None:
    import math  # noqa: F401  # usually an extension module in lib-dynload
    import select  # noqa: F401

    exts = _loaded_extensions()
    if not exts:
        pytest.fail("no extension modules loaded from lib-dynload")
    for ext in exts:
        shutil.copy(ext, tmp_path / ext.name)
    needs = scan(tmp_path, [e.name for e in exts])
    assert "libc.so.6" in needs.libraries
    assert all(set(r) <= {e.name for e in exts} for r in needs.libraries.values())
    assert needs.glibc is not None
    host = host_glibc()
    assert host is not None and version_tuple(host) >= version_tuple(needs.glibc)
    assert all(resolve(soname, str(tmp_path / files[0])) for soname, files
               in needs.libraries.items())


# ---- symbol versions ---------------------------------------------------------------------


def _readelf_needs(path: Path) -> dict[str, dict[str, bool]]:
    """binutils' view of a file's version needs: {file: {version: weak}}."""
    out = subprocess.run(["readelf", "-V", "-W", str(path)], capture_output=True, text=True,
                         check=True).stdout
    needs: dict[str, dict[str, bool]] = {}
    current: dict[str, bool] = {}
    for line in out[out.find("Version needs section"):].splitlines():
        if m := re.search(r"File: (\S+)\s+Cnt:", line):
            current = needs.setdefault(m.group(1), {})
        elif m := re.search(r"Name: (\S+)\s+Flags: (\S+)", line):
            current[m.group(1)] = m.group(2) == "WEAK"
    return needs


def _expected_versions(root: Path, needs: HostNeeds) -> dict[str, dict[str, list[str]]]:
    """The versions field as readelf sees the files: per host-needed soname, per version,
    the files that need the soname (as `libraries` says) and that version of it."""
    files = sorted({f for fs in needs.libraries.values() for f in fs})
    out: dict[str, dict[str, set[str]]] = {}
    for rel in files:
        for soname, versions in _readelf_needs(root / rel).items():
            if rel in needs.libraries.get(soname, []):
                for version, weak in versions.items():
                    if not weak:
                        out.setdefault(soname, {}).setdefault(version, set()).add(rel)
    return {s: {v: sorted(out[s][v]) for v in sorted(out[s])} for s in sorted(out)}


def test_versions_match_readelf(env: Path) -> None:
    needs = scan(env, _walk(env))
    assert needs.versions == _expected_versions(env, needs)
    assert "pkg/mod.so" in needs.versions["libc.so.6"]["GLIBC_2.2.5"]
    assert needs.glibc is not None and needs.glibc_files()
    assert all(f"GLIBC_{needs.glibc}" in _readelf_needs(env / f)["libc.so.6"]
               for f in needs.glibc_files())
    assert needs.to_json()["versions"] == needs.versions


def test_versions_of_real_python_extensions(tmp_path: Path) -> None:
    dynload = next(p for p in sys.path if p.endswith("lib-dynload"))
    exts = sorted(Path(dynload).glob("*.so"))
    for ext in exts:
        shutil.copy(ext, tmp_path / ext.name)
    needs = scan(tmp_path, [e.name for e in exts])
    assert len(needs.versions["libc.so.6"]) > 5
    assert needs.versions == _expected_versions(tmp_path, needs)


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """src/libebtest.so.1 defines EBTEST_1.0 and EBTEST_2.0; src/ext.so needs both; src/weak.so
    needs EBTEST_2.0 marked weak (vna_flags patched: ld writes the flag only rarely)."""
    src = tmp_path_factory.mktemp("versioned")
    (src / "eb.map").write_text("EBTEST_1.0 { global: one; local: *; };\n"
                                "EBTEST_2.0 { global: two; } EBTEST_1.0;\n")
    (src / "eb.c").write_text("#include <unistd.h>\nint one(void) { return getpid(); }\n"
                              "int two(void) { return 2; }\n")
    (src / "ext.c").write_text("#include <unistd.h>\nint one(void); int two(void);\n"
                               "int ext(void) { return one() + two() + getpid(); }\n")
    _gcc(src, "-shared", "-fPIC", "-Wl,-soname,libebtest.so.1", "-Wl,--version-script=eb.map",
         "eb.c", "-o", "libebtest.so.1")
    _gcc(src, "-shared", "-fPIC", "ext.c", "-L.", "-l:libebtest.so.1", "-o", "ext.so")
    shutil.copy(src / "ext.so", src / "weak.so")
    _mark_weak(src / "weak.so", "EBTEST_2.0")
    return src


def _mark_weak(path: Path, version: str) -> None:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection
    from elftools.elf.sections import StringTableSection

    data = bytearray(path.read_bytes())
    with open(path, "rb") as fh:
        sec = next(s for s in ELFFile(fh).iter_sections() if isinstance(s, GNUVerNeedSection))
        at = sec["sh_offset"]
        strtab = ELFFile(fh).get_section_by_name(".dynstr")
        assert isinstance(strtab, StringTableSection)
        for _ in range(sec.num_versions()):
            _v, cnt, _file, aux, nxt = struct.unpack_from("<HHIII", data, at)
            a = at + aux
            for _ in range(cnt):
                _h, _flags, _other, name, anext = struct.unpack_from("<IHHII", data, a)
                if strtab.get_string(name) == version:
                    struct.pack_into("<H", data, a + 4, 2)   # VER_FLG_WEAK
                a += anext
            at += nxt
    path.write_bytes(bytes(data))


def test_versions_of_an_unshipped_library(versioned: Path, tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    shutil.copy(versioned / "ext.so", tmp_path / "pkg/_ext.so")
    needs = scan(tmp_path, ["pkg/_ext.so"])
    assert needs.versions["libebtest.so.1"] == {"EBTEST_1.0": ["pkg/_ext.so"],
                                                "EBTEST_2.0": ["pkg/_ext.so"]}
    shutil.copy(versioned / "libebtest.so.1", tmp_path / "pkg/libebtest.so.1")
    shipped = scan(tmp_path, ["pkg/_ext.so", "pkg/libebtest.so.1"])
    assert "libebtest.so.1" not in shipped.versions and "libebtest.so.1" not in shipped.libraries
    assert "libc.so.6" in shipped.versions   # the env's own library needs the host's libc


def test_weak_version_needs_are_not_host_needs(versioned: Path, tmp_path: Path) -> None:
    """The loader runs a file whose weak version need is missing, so it is no need."""
    assert _readelf_needs(versioned / "weak.so")["libebtest.so.1"] == {
        "EBTEST_1.0": False, "EBTEST_2.0": True}
    shutil.copy(versioned / "weak.so", tmp_path / "weak.so")
    needs = scan(tmp_path, ["weak.so"])
    assert needs.versions["libebtest.so.1"] == {"EBTEST_1.0": ["weak.so"]}


def test_host_records(env: Path, tmp_path: Path, versioned: Path) -> None:
    for i in range(5):
        shutil.copy(versioned / "ext.so", tmp_path / f"m{i}.so")
    needs = scan(tmp_path, [f"m{i}.so" for i in range(5)])
    records = host_records(needs, ["libcuda.so.1", "libcuda.so.1"])
    files = ("5", "m0.so", "m1.so", "m2.so")   # the count, then the first three
    assert ("lib", "libebtest.so.1", *files) in records
    assert ("libver", "libebtest.so.1", "EBTEST_2.0", *files) in records
    assert ("glibc", needs.glibc, *files) == records[0]
    assert records[-1] == ("libopt", "libcuda.so.1") and records.count(records[-1]) == 1
    assert records == host_records(scan(tmp_path, [f"m{i}.so" for i in (4, 3, 2, 1, 0)]),
                                   ["libcuda.so.1"])
    assert host_records(HostNeeds({}, None)) == []
