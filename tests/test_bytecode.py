"""The compile step (`bytecode.compile_files`), in every CPython here, against what
`compileall.compile_file(PATH, stripdir=DIR)` writes with the same fixed hash seed: the
same pyc bytes, checked-hash or unchecked, alone and in a pool; the stdlib's own `json`
and `email` the same however many go at once; a file that does not compile fails the step
with its name."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from test_interpreter import pyenv_python

from envbuild.bytecode import compile_files
from envbuild.errors import ToolError

PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13", "/usr/bin/python3.11"]

# the set literals become frozenset constants: their bytes follow the hash seed
SOURCES = {
    "pkg/__init__.py": "from .mod import f\n",
    "pkg/mod.py": "def f(x):\n    return x in {'a', 'b', 'c', 'd'} or x in {b'x', b'y'}\n",
    "pkg/sub/deep.py": "'''doc'''\nimport sys\nVALUE = sys.version_info\n",
    "top.py": "class C:\n    def m(self):\n        return [i for i in range(3)]\n",
}


def python(version: str) -> str:
    return version if version.startswith("/") else str(pyenv_python(version))


def tree(root: Path, copies: int = 1) -> list[Path]:
    """SOURCES under `root/lib/site` (each `copies` times, in dirs of their own)."""
    out = []
    for n in range(copies):
        for rel, text in SOURCES.items():
            path = root / "lib" / "site" / f"c{n}" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            out.append(path)
    return out


def pycs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.pyc")}


def by_compileall(exe: str, root: Path, files: list[Path], mode: str) -> None:
    code = ("import compileall, py_compile, sys\n"
            f"mode = py_compile.PycInvalidationMode.{mode}\n"
            "for path in sys.argv[1:]:\n"
            f"    assert compileall.compile_file(path, quiet=2, stripdir={str(root)!r},\n"
            "                                   invalidation_mode=mode)\n")
    subprocess.run([exe, "-S", "-c", code, *map(str, files)], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "0"})


@pytest.mark.parametrize("version", PYTHONS)
@pytest.mark.parametrize("mode,letter", [("CHECKED_HASH", "C"), ("UNCHECKED_HASH", "U")])
def test_the_same_bytes_as_compileall(tmp_path: Path, version: str, mode: str,
                                      letter: str) -> None:
    exe = python(version)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    copies = 5 if mode == "CHECKED_HASH" else 1   # 20 files: the pool's path too
    files = tree(ours, copies)
    by_compileall(exe, theirs, tree(theirs, copies), mode)
    compile_files(exe, [(letter, str(ours), str(p)) for p in files])
    got, expected = pycs(ours), pycs(theirs)
    assert len(got) == len(files)
    assert got == expected


def stdlib_copies(exe: str, root: Path) -> list[Path]:
    """The interpreter's own `json` and `email` packages (real code: sets, f-strings and
    one-character strings such as `{`), an empty module and one that warns as it compiles,
    under `root/lib/site`."""
    site = root / "lib" / "site"
    stdlib = subprocess.run([exe, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    for package in ("json", "email"):
        shutil.copytree(Path(stdlib) / package, site / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (site / "empty.py").write_text("")
    (site / "warns.py").write_text('PATTERN = "\\d+"\nBRACES = f"{{{PATTERN}}}" + "{" + "}"\n')
    return sorted(site.rglob("*.py"))


@pytest.mark.parametrize("version", PYTHONS)
def test_the_stdlibs_own_packages_compile_the_same_however_many_go_at_once(
        tmp_path: Path, version: str) -> None:
    """16 modules (compiled one by one) and all of them (in a pool, from 3.11): the same
    pycs for the 16 either way, and from 3.11 compileall's. Before 3.11 marshal marks a
    string as shared by its count of references, which what else the compiling process
    holds decides: envbuild's are the same in every build, compileall's differ with the
    process that calls it."""
    exe = python(version)
    few, every, theirs = tmp_path / "few", tmp_path / "every", tmp_path / "theirs"
    compile_files(exe, [("C", str(few), str(p)) for p in stdlib_copies(exe, few)[:16]])
    files = stdlib_copies(exe, every)
    compile_files(exe, [("C", str(every), str(p)) for p in files])
    got = pycs(every)
    assert len(got) == len(files) >= 30
    assert pycs(few).items() <= got.items()
    if version not in ("3.9", "3.10"):
        by_compileall(exe, theirs, stdlib_copies(exe, theirs), "CHECKED_HASH")
        assert got == pycs(theirs)


@pytest.mark.parametrize("sigchld", ["default", "ignored"])
def test_a_file_that_does_not_compile_fails_with_its_name(tmp_path: Path, sigchld: str
                                                          ) -> None:
    """Also in a process that ignores SIGCHLD (a library caller's, or this test's): the
    kernel then reaps the compiler unseen and its exit status reads 0, so its last line
    is what says every file compiled."""
    files = tree(tmp_path)
    bad = tmp_path / "lib" / "site" / "broken.py"
    bad.write_text("def f(:\n")
    saved = signal.signal(signal.SIGCHLD,
                          signal.SIG_IGN if sigchld == "ignored" else signal.SIG_DFL)
    try:
        with pytest.raises(ToolError) as caught:
            compile_files(python("3.11"), [("C", str(tmp_path), str(p))
                                           for p in [*files, bad]])
    finally:
        signal.signal(signal.SIGCHLD, saved)
    assert "broken.py" in caught.value.output
