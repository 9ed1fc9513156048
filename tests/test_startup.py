"""The quick level sees everything CPython reads or runs before a program's first line, in a
venv: one test per row of README's table of startup inputs. Each tampers with one input
and checks that the quick level (the launch default) names it, and that `envbuild run`
refuses to start CMD."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Built, cli, copy_env, envbuild, write_recipe
from pkgindex import LocalIndex
from test_verify import (
    SITE,
    add_file,
    assert_differences,
    assert_run_refused,
    freeze,
    rewrite,
    sha256_of,
    tampered_copy,
)

VER = f"python{sys.version_info[0]}.{sys.version_info[1]}"
DEPS = ["delta", "pthpkg", "startpkg"]


def _build(tmp: Path, index: LocalIndex, *args: str | Path) -> Built:
    recipe = write_recipe(tmp / "recipe", index, deps=DEPS, name="startup")
    assert cli("lock", recipe).exit_code == 0
    res = envbuild("build", recipe, "--store", tmp / "store", "--json", *args)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    return Built(recipe, tmp / "store", Path(info["path"]), info["manifest_digest"])


@pytest.fixture(scope="module")
def startup_env(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex) -> Built:
    return _build(tmp_path_factory.mktemp("startup"), index)


def _started(env: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([env / "bin" / "python", "-c", "import sys; print('startmod' in "
                           "sys.modules)"], capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("PYTHON")})


def test_the_pth_import_runs_at_start(startup_env: Built, tmp_path: Path) -> None:
    """The control: startpkg.pth really imports startmod at every start."""
    out = _started(startup_env.env, tmp_path)
    assert (out.returncode, out.stdout) == (0, "True\n"), out.stderr
    assert cli("verify", startup_env.env).exit_code == 0


# ---- inside the env ----------------------------------------------------------------------


def test_site_packages_any_new_name(startup_env: Built, tmp_path: Path) -> None:
    """sitecustomize.py in site-packages runs at every start without any .pth file."""
    env = tampered_copy(startup_env, tmp_path)
    rel = f"{SITE}/sitecustomize.py"
    marker = tmp_path / "RAN"
    add_file(env / rel, f"open({str(marker)!r}, 'w').close()\n".encode())
    freeze(env)
    lines = assert_differences(env, "quick", [("added", rel, "absent", "present")])
    assert_run_refused(env, tmp_path, lines)


def test_site_packages_name_of_another_kind(startup_env: Built, tmp_path: Path) -> None:
    """A module replaced by a package (or a link) of the same name."""
    env = tampered_copy(startup_env, tmp_path)
    rel = f"{SITE}/delta.py"
    (env / rel).unlink()
    (env / rel).mkdir()
    add_file(env / rel / "__init__.py", b"")
    freeze(env)
    lines = assert_differences(env, "quick", [
        ("modified", rel, "a regular file", "another kind of file")], exact=False)
    assert_run_refused(env, tmp_path, lines)


def test_site_packages_name_removed(startup_env: Built, tmp_path: Path) -> None:
    env = tampered_copy(startup_env, tmp_path)
    rel = f"{SITE}/delta.py"
    (env / rel).unlink()
    freeze(env)
    lines = assert_differences(env, "quick", [("missing", rel, "present", "absent")])
    assert_run_refused(env, tmp_path, lines)


def test_pth_file_content(startup_env: Built, tmp_path: Path) -> None:
    """Same name, other lines: a .pth line that starts with `import` runs."""
    env = tampered_copy(startup_env, tmp_path)
    rel = f"{SITE}/startpkg.pth"
    before = sha256_of(env / rel)
    rewrite(env / rel, b"import startmod; import os\n")
    freeze(env)
    lines = assert_differences(env, "quick", [("modified", rel, before, sha256_of(env / rel))])
    assert_run_refused(env, tmp_path, lines)


def test_module_a_pth_imports(startup_env: Built, tmp_path: Path) -> None:
    """startmod runs at every start: its bytes are checked at the quick level, even when
    only its pyc changes, or it changes without changing size."""
    env = tampered_copy(startup_env, tmp_path)
    pyc = next((env / SITE / "__pycache__").glob("startmod.*.pyc"))
    rel = str(pyc.relative_to(env))
    before = sha256_of(pyc)
    data = pyc.read_bytes()
    rewrite(pyc, data[:-1] + bytes([data[-1] ^ 1]))
    freeze(env)
    lines = assert_differences(env, "quick", [("modified", rel, before, sha256_of(pyc))])
    assert_run_refused(env, tmp_path, lines)


def test_dir_a_pth_puts_on_sys_path(startup_env: Built, tmp_path: Path) -> None:
    """pthpkg.pth puts site-packages/pthpkg_extra on sys.path: a sitecustomize there runs."""
    env = tampered_copy(startup_env, tmp_path)
    rel = f"{SITE}/pthpkg_extra/sitecustomize.py"
    add_file(env / rel, b"import os\n")
    freeze(env)
    lines = assert_differences(env, "quick", [("added", rel, "absent", "present")])
    assert_run_refused(env, tmp_path, lines)


def test_pyvenv_cfg_content(startup_env: Built, tmp_path: Path) -> None:
    """include-system-site-packages = true puts the base interpreter's site-packages on
    sys.path (and turns the user site on)."""
    env = tampered_copy(startup_env, tmp_path)
    cfg = env / "pyvenv.cfg"
    before = sha256_of(cfg)
    text = cfg.read_text()
    assert "include-system-site-packages = false" in text
    rewrite(cfg, text.replace("= false", "= true").encode())
    freeze(env)
    lines = assert_differences(env, "quick", [("modified", "pyvenv.cfg", before,
                                               sha256_of(cfg))])
    assert_run_refused(env, tmp_path, lines)


def test_bin_new_name(startup_env: Built, tmp_path: Path) -> None:
    """A launch puts bin/ first on PATH: a planted bin/ls shadows the system's."""
    env = tampered_copy(startup_env, tmp_path)
    add_file(env / "bin" / "ls", b"#!/bin/sh\necho planted\n", mode=0o555)
    freeze(env)
    lines = assert_differences(env, "quick", [("added", "bin/ls", "absent", "present")])
    assert_run_refused(env, tmp_path, lines)


def test_bin_link_retargeted(startup_env: Built, tmp_path: Path) -> None:
    """bin/python3 is not on bin/python's chain: the interpreter check alone would miss it."""
    env = tampered_copy(startup_env, tmp_path)
    link = env / "bin" / "python3"
    before = os.readlink(link)
    link.unlink()
    link.symlink_to("/usr/bin/python3.11")
    freeze(env)
    lines = assert_differences(env, "quick", [
        ("modified", "bin/python3", f"a link to {before}", "a link to /usr/bin/python3.11")])
    assert_run_refused(env, tmp_path, lines)


def test_user_site_is_not_an_input(startup_env: Built, tmp_path: Path) -> None:
    """A venv without system site-packages turns the user site off: usercustomize and
    ~/.local never run (pyvenv.cfg, checked above, is what would turn them on)."""
    user_site = tmp_path / "home" / ".local" / "lib" / VER / "site-packages"
    user_site.mkdir(parents=True)
    marker = tmp_path / "USER-RAN"
    (user_site / "usercustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (user_site / "zz.pth").write_text(f"import os; open({str(marker)!r}, 'w').close()\n")
    out = subprocess.run([startup_env.env / "bin" / "python", "-c", "pass"],
                         env={"HOME": str(tmp_path / "home"), "PATH": os.defpath},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()


# ---- outside the env: the base interpreter's own files -----------------------------------


def _private_python(root: Path) -> Path:
    """A copy of this interpreter with a stdlib of its own (the host's is never touched)."""
    stdlib = Path(sysconfig.get_path("stdlib"))
    (root / "bin").mkdir(parents=True)
    python = root / "bin" / VER
    shutil.copy2(os.path.realpath(sys.executable), python)
    shutil.copytree(stdlib, root / "lib" / VER, symlinks=True, ignore=shutil.ignore_patterns(
        "site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip"))
    with open("/proc/self/maps") as fh:
        loaded = [line.split(None, 5)[5].strip() for line in fh
                  if len(line.split(None, 5)) == 6 and "/libpython" in line]
    if loaded:   # a shared build: its libpython beside it, found through RUNPATH
        shutil.copy2(loaded[0], root / "lib" / Path(loaded[0]).name)
        subprocess.run(["patchelf", "--set-rpath", str(root / "lib"), str(python)], check=True)
    return python


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex
            ) -> Iterator[tuple[Built, Path]]:
    tmp = tmp_path_factory.mktemp("private")
    python = _private_python(tmp / "py")
    built = _build(tmp, index, "--python", python)
    yield built, tmp / "py" / "lib" / VER


def _private_copy(private: tuple[Built, Path], tmp_path: Path) -> tuple[Path, Path]:
    built, stdlib = private
    env = copy_env(built.env, tmp_path / "env")
    assert cli("verify", env, "--expect", built.digest).exit_code == 0
    return env, stdlib


@pytest.mark.slow
def test_base_sitecustomize(private: tuple[Built, Path], tmp_path: Path) -> None:
    """The base interpreter's stdlib dir is on every venv's sys.path: a sitecustomize
    planted there runs at every start of every venv made from it."""
    env, stdlib = _private_copy(private, tmp_path)
    planted = stdlib / "sitecustomize.py"
    planted.write_text("import os\n")
    try:
        lines = assert_differences(env, "quick", [("added", str(planted), "absent", "present")])
        assert_run_refused(env, tmp_path, lines)
    finally:
        planted.unlink()
    assert cli("verify", env).exit_code == 0


@pytest.mark.slow
def test_base_stdlib_module_read_at_start(private: tuple[Built, Path], tmp_path: Path) -> None:
    """encodings is read from the stdlib at every start (site, os and most of what starts
    Python are frozen into 3.11+, and files before): an edit of it is seen at quick."""
    env, stdlib = _private_copy(private, tmp_path)
    target = stdlib / "encodings" / "aliases.py"
    saved = target.read_bytes()
    before = sha256_of(target)
    target.write_bytes(saved + b"# edited\n")
    try:
        lines = assert_differences(env, "quick", [
            ("modified", str(target), before, sha256_of(target))], exact=False)
        assert_run_refused(env, tmp_path, lines)
    finally:
        target.write_bytes(saved)
    assert cli("verify", env).exit_code == 0


@pytest.mark.slow
def test_base_stdlib_zip(private: tuple[Built, Path], tmp_path: Path) -> None:
    """`lib/pythonXY.zip` comes first on sys.path: absent at build, it must stay absent."""
    env, stdlib = _private_copy(private, tmp_path)
    planted = stdlib.parent / f"python{sys.version_info[0]}{sys.version_info[1]}.zip"
    planted.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    try:
        lines = assert_differences(env, "quick", [("added", str(planted), "absent", "file")])
        assert_run_refused(env, tmp_path, lines)
    finally:
        planted.unlink()


@pytest.mark.slow
def test_base_lib_dynload(private: tuple[Built, Path], tmp_path: Path) -> None:
    """lib-dynload is searched before site-packages: a module there that shadows what the
    start imports (here the .pth's startmod) would run instead."""
    env, stdlib = _private_copy(private, tmp_path)
    planted = stdlib / "lib-dynload" / "startmod.py"
    planted.write_text("STARTED = 'planted'\n")
    try:
        lines = assert_differences(env, "quick", [("added", str(planted), "absent",
                                                   "present")])
        assert_run_refused(env, tmp_path, lines)
    finally:
        planted.unlink()


def test_run_removes_variables_that_change_what_starts(startup_env: Built,
                                                       tmp_path: Path) -> None:
    """PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONUSERBASE, PYTHONPYCACHEPREFIX (pycs
    read from elsewhere) and PYTHONPLATLIBDIR (another lib-dynload) never reach CMD."""
    names = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
             "PYTHONPYCACHEPREFIX", "PYTHONPLATLIBDIR")
    env = {**os.environ, **{n: str(tmp_path / n) for n in names}}
    # the guard (its interpreter runs -I) stands in for `envbuild run`, whose own Python
    # these variables would break before it could remove them
    res = subprocess.run([startup_env.env / "bin" / "envbuild-guard", "--",
                          "python", "-c", "import os, sys; print(sorted(k for k in os.environ "
                          "if k.startswith('PYTHON') and k != 'PYTHONDONTWRITEBYTECODE'))"],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    left = [n for n in names if n in res.stdout]
    assert not left, res.stdout


def test_every_row_has_a_test() -> None:
    """README's table of startup inputs names a test of this module in every row."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("### Startup inputs", 1)[1].split("\n\n")[2]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| input")
            and not r.startswith("|---")]
    assert len(rows) >= 12
    here = {name for name in globals() if name.startswith("test_")}
    root = Path(__file__).resolve().parent.parent
    for row in rows:
        tests = [w.strip("`,") for w in row.split() if "test_" in w]
        assert tests, row
        for test in tests:
            if "::" in test:
                path, name = test.split("::")
                assert f"def {name}(" in (root / path).read_text(), (row, test)
            else:
                assert test in here, (row, test)
