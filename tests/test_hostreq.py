"""hostreq against real ELF files built with gcc and the interpreter's own extensions."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envbuild.host import host_glibc, missing_libraries, version_tuple
from envbuild.hostreq import HostNeeds, scan

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
    assert needs.to_json() == {"libraries": {}, "glibc": None}


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
    assert missing_libraries(needs.libraries) == []
