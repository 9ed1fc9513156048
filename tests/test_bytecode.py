"""The compile step (`bytecode.compile_files`), in every CPython here, against what
`compileall.compile_file(PATH, stripdir=DIR)` writes with the same fixed hash seed: the
same pyc bytes, checked-hash or unchecked, alone and in a pool, and compiled in envbuild's
own process where that is the same interpreter (`compile_here`, whatever its hash seed);
a file that does not compile fails the step with its name."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_interpreter import pyenv_python

from envbuild.bytecode import HERE, compile_files, compiles_here
from envbuild.children import forking_unsafe
from envbuild.errors import BuildError, EnvbuildError, ToolError

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


# runs in the CPython under test: compiles in its own process the files named on stdin
# ("MODE\tSTRIP\tPATH" lines), as envbuild does there
HERE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from envbuild.bytecode import compile_here, compiles_here
assert compiles_here(sys.executable)
compile_here([tuple(line.split("\\t")) for line in sys.stdin.read().splitlines()])
"""
ENVBUILD_PARENT = str(Path(__file__).resolve().parent.parent)


def stdlib_copies(exe: str, root: Path) -> list[Path]:
    """SOURCES, an empty module, one that warns as it compiles, and the interpreter's own
    `json` and `email` packages (real code, sets and all), under `root/lib/site`."""
    tree(root)
    site = root / "lib" / "site"
    (site / "empty.py").write_text("")
    (site / "warns.py").write_text('PATTERN = "\\d+"\n')   # an invalid escape
    stdlib = subprocess.run([exe, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    for package in ("json", "email"):
        shutil.copytree(Path(stdlib) / package, site / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return sorted(site.rglob("*.py"))


@pytest.mark.parametrize("version", [f"{major}.{minor}" for major, minor in HERE])
@pytest.mark.parametrize("mode,letter", [("CHECKED_HASH", "C"), ("UNCHECKED_HASH", "U")])
def test_compiled_here_the_same_bytes_as_compileall(tmp_path: Path, version: str, mode: str,
                                                    letter: str) -> None:
    """In a process with another hash seed, where warnings are errors."""
    exe = python(version)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    files = stdlib_copies(exe, ours)
    by_compileall(exe, theirs, stdlib_copies(exe, theirs), mode)
    jobs = "\n".join(f"{letter}\t{ours}\t{p}" for p in files)
    res = subprocess.run([exe, "-B", "-W", "error", "-c", HERE_SCRIPT, ENVBUILD_PARENT],
                         input=jobs, capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""   # the warning was not shown
    got, expected = pycs(ours), pycs(theirs)
    assert len(got) == len(files) >= 40
    assert got == expected


# run in a process of its own: no other test's threads there
ONLY_HERE = """
import sys, threading
from envbuild.bytecode import compiles_here
link, other_python = sys.argv[1:]
assert compiles_here(sys.executable) and compiles_here(link)
assert not compiles_here(other_python)
assert not compiles_here("/usr/bin/python3.11")   # the same version, another build
stop = threading.Event()
other = threading.Thread(target=stop.wait)
other.start()
assert not compiles_here(sys.executable)
stop.set()
"""


def test_compiles_here_only_with_the_binary_running_envbuild(tmp_path: Path) -> None:
    """... and where no other thread runs (its warnings would go unseen meanwhile)."""
    link = tmp_path / "python"
    link.symlink_to(sys.executable)
    res = subprocess.run([sys.executable, "-c", ONLY_HERE, str(link), python("3.12")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("version", ["3.11", "3.12"])   # compiled here; by a process
@pytest.mark.parametrize("sigchld", ["default", "ignored"])
def test_a_file_that_does_not_compile_fails_with_its_name(tmp_path: Path, version: str,
                                                          sigchld: str) -> None:
    """Also in a process that ignores SIGCHLD (a library caller's, or this test's): the
    kernel then reaps the compiler unseen and its exit status reads 0, so its last line
    is what says every file compiled."""
    here = compiles_here(python(version))
    assert here == (version == "3.11" and not forking_unsafe())   # (another test's threads)
    files = tree(tmp_path)
    bad = tmp_path / "lib" / "site" / "broken.py"
    bad.write_text("def f(:\n")
    saved = signal.signal(signal.SIGCHLD,
                          signal.SIG_IGN if sigchld == "ignored" else signal.SIG_DFL)
    try:
        with pytest.raises(EnvbuildError) as caught:
            compile_files(python(version), [("C", str(tmp_path), str(p))
                                            for p in [*files, bad]])
    finally:
        signal.signal(signal.SIGCHLD, saved)
    assert "broken.py" in str(caught.value)
    assert type(caught.value) is (BuildError if here else ToolError)   # which compiled it
