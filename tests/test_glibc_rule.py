"""The glibc rule end to end: an env whose extension needs a newer glibc than the host has
is refused there, naming the version and the file, and nothing in the caller's hands
(variables, flags) talks the launch out of it.

A wheel `glibcpkg` ships `pkg/_ext.so`, compiled on this host (glibc >= 2.34) so that it
needs GLIBC_2.34 (`pthread_create` moved into libc in 2.34). In a bullseye rootfs (glibc
2.31, see rootfs.py) entered with chroot, envbuild run by that rootfs's own python3 locks
and builds an env from it; the env is then refused there. The same wheel's env built on
this host verifies and runs: the control that shows the refusal comes from glibc alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import envbuild
from rootfs import ENVBUILD, Rootfs, bullseye_envbuild_fixture, bullseye_fixture  # noqa: F401

pytestmark = pytest.mark.slow

NEEDED = "2.34"      # what _ext.so needs
BULLSEYE = "2.31"    # what the rootfs has
EXT = "pkg/_ext.so"
# The line; the file may be named relative to site-packages or to the env.
REFUSAL = re.compile(r"host: glibc: expected >= 2\.34 \(for (?:[^\s()]+/)?pkg/_ext\.so\), "
                     r"found 2\.31(?![\d.])")
PROGRAM = ("python", "-c", "print(1)")

_EXT_C = r"""
#include <pthread.h>

static void *echo(void *arg) { return arg; }

/* 42 from a thread: pthread_create is GLIBC_2.34 on glibc >= 2.34 */
int glibcpkg_spawn(void) {
    pthread_t thread;
    void *out = 0;
    if (pthread_create(&thread, 0, echo, (void *)42L) != 0) return -1;
    pthread_join(thread, &out);
    return (int)(long)out;
}
"""

_INIT_PY = """\
import ctypes
import os

_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "_ext.so"))


def spawn():
    return _lib.glibcpkg_spawn()
"""


# --- the test wheel and its index -----------------------------------------------------------


def _write_platform_wheel(dest: Path, name: str, version: str, files: dict[str, bytes],
                          executable: set[str]) -> Path:
    """A platlib wheel `{name}-{version}-py3-none-linux_x86_64.whl` of binary files."""
    tag = "py3-none-linux_x86_64"
    dist_info = f"{name}-{version}.dist-info"
    contents = dict(sorted(files.items()))
    contents[f"{dist_info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\n"
                                         f"Version: {version}\n").encode()
    contents[f"{dist_info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: test_glibc_rule\n"
                                      f"Root-Is-Purelib: false\nTag: {tag}\n").encode()
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(data)}\n")
    record.append(f"{dist_info}/RECORD,,\n")
    contents[f"{dist_info}/RECORD"] = "".join(record).encode()
    wheel = dest / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in contents.items():
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (0o100755 if path in executable else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return wheel


def _glibc_versions_needed(path: Path) -> set[str]:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection

    with path.open("rb") as fh:
        elf = ELFFile(fh)
        return {aux.name for sec in elf.iter_sections() if isinstance(sec, GNUVerNeedSection)
                for _need, auxes in sec.iter_versions() for aux in auxes
                if aux.name.startswith("GLIBC_")}


@dataclass(frozen=True)
class GlibcIndex:
    root: Path     # files/ and simple/ (a PEP 503 index with relative links)
    ext: Path      # the compiled _ext.so


@pytest.fixture(scope="module")
def glibc_index(tmp_path_factory: pytest.TempPathFactory) -> GlibcIndex:
    work = tmp_path_factory.mktemp("glibcpkg")
    (work / "ext.c").write_text(_EXT_C)
    ext = work / "_ext.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-pthread", "-o", str(ext),
                    str(work / "ext.c")], check=True, capture_output=True)
    root = work / "index"
    (root / "files").mkdir(parents=True)
    wheel = _write_platform_wheel(root / "files", "glibcpkg", "1.0",
                                  {"pkg/__init__.py": _INIT_PY.encode(),
                                   EXT: ext.read_bytes()}, executable={EXT})
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "simple" / "glibcpkg").mkdir(parents=True)
    (root / "simple" / "glibcpkg" / "index.html").write_text(
        f'<!DOCTYPE html>\n<html><body>\n<a href="../../files/{wheel.name}#sha256={sha}">'
        f"{wheel.name}</a>\n</body></html>\n")
    (root / "simple" / "index.html").write_text(
        '<!DOCTYPE html>\n<html><body>\n<a href="glibcpkg/">glibcpkg</a>\n</body></html>\n')
    return GlibcIndex(root, ext)


def _recipe(directory: Path, index_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    recipe = directory / "glibcdemo.toml"
    recipe.write_text('name = "glibcdemo"\nrequires-python = ">=3.9"\n'
                      'dependencies = ["glibcpkg"]\n\n'
                      f'[index]\nurl = "{index_url}"\n')
    return recipe


# --- the env built in the bullseye rootfs ---------------------------------------------------


@dataclass(frozen=True)
class ChrootEnv:
    rootfs: Rootfs
    env: str        # the env's path inside the rootfs
    digest: str     # its manifest digest, from `verify --json`


@pytest.fixture(scope="module")
def chroot_env(bullseye_envbuild: Rootfs, glibc_index: GlibcIndex) -> ChrootEnv:
    rootfs = bullseye_envbuild
    shutil.copytree(glibc_index.root, rootfs.host_path("/index"))
    _recipe(rootfs.host_path("/work"), "file:///index/simple")
    rootfs.check(ENVBUILD, "lock", "/work/glibcdemo.toml")
    # not `build --json`: on Python 3.9 typer drops cli.py's Annotated option names
    env = rootfs.check(ENVBUILD, "build", "/work/glibcdemo.toml", "--store", "/work/store"
                       ).strip().splitlines()[-1]
    report = rootfs.run(ENVBUILD, "verify", env, "--json")
    return ChrootEnv(rootfs, env, json.loads(report.stdout)["manifest_digest"])


def test_the_extension_needs_glibc_2_34(glibc_index: GlibcIndex) -> None:
    needed = _glibc_versions_needed(glibc_index.ext)
    assert f"GLIBC_{NEEDED}" in needed, needed


def test_the_rootfs_has_glibc_2_31_and_python_3_9(bullseye: Rootfs) -> None:
    out = bullseye.check("/usr/bin/python3", "-c", "import os, sys; "
                         "print(os.confstr('CS_GNU_LIBC_VERSION'), sys.version_info[:2])")
    assert out.split() == ["glibc", BULLSEYE, "(3,", "9)"], out


def test_the_env_built_there_records_the_need(chroot_env: ChrootEnv) -> None:
    manifest = json.loads(chroot_env.rootfs.host_path(
        f"{chroot_env.env}/envbuild-manifest.json").read_bytes())
    assert manifest["host"]["glibc"] == NEEDED
    assert manifest["interpreter"]["version"].startswith("3.9."), manifest["interpreter"]


def test_the_rootfs_cannot_load_the_extension(chroot_env: ChrootEnv) -> None:
    """What the refusal spares a user: the loader fails at the first import."""
    site = f"{chroot_env.env}/lib/python3.9/site-packages"
    proc = chroot_env.rootfs.run("/usr/bin/python3", "-I", "-c",
                                 f"import sys; sys.path.insert(0, {site!r}); import pkg")
    assert proc.returncode != 0
    assert f"version `GLIBC_{NEEDED}' not found" in proc.stderr, proc.stderr


# Variables someone might try to talk a launch out of the check; none may work.
OVERRIDES = {
    "none": {},
    "LD_LIBRARY_PATH": {"LD_LIBRARY_PATH": "/usr/lib/x86_64-linux-gnu:/usr/lib:/lib"},
    "GLIBC_VERSION": {"GLIBC_VERSION": "2.40", "LIBC_VERSION": "2.40"},
    "ENVBUILD_GLIBC": {"ENVBUILD_GLIBC": "2.40", "ENVBUILD_HOST_GLIBC": "2.40",
                       "ENVBUILD_GLIBC_VERSION": "2.40"},
    "ENVBUILD_SKIP": {"ENVBUILD_SKIP_HOST": "1", "ENVBUILD_NO_HOST_CHECK": "1",
                      "ENVBUILD_HOST_CHECK": "0", "ENVBUILD_VERIFY": "0",
                      "ENVBUILD_LEVEL": "none", "ENVBUILD_HOST_OPTIONAL": "libc.so.6"},
    "_PYTHON_HOST_PLATFORM": {"_PYTHON_HOST_PLATFORM": "manylinux_2_40_x86_64",
                              "AUDITWHEEL_PLAT": "manylinux_2_40_x86_64"},
    "GLIBC_TUNABLES": {"GLIBC_TUNABLES": "glibc.rtld.nns=4"},
}
FLAGS = {
    "default": (),
    "quick": ("--level", "quick"),
    "files": ("--level", "files"),
    "full": ("--level", "full"),
}


def _problems(proc: subprocess.CompletedProcess[str], what: str, code: int,
              stream: str) -> list[str]:
    """What is wrong with a refusal: exit `code`, the issue's line on `stream`, no output of
    the program (it must not have started)."""
    text = proc.stdout if stream == "stdout" else proc.stderr
    wrong = []
    if proc.returncode != code:
        wrong.append(f"exit: expected {code}, found {proc.returncode}")
    if not REFUSAL.search(text):
        wrong.append(f"{stream}: expected a line matching {REFUSAL.pattern!r}")
    if "1" in proc.stdout.split():
        wrong.append("stdout: expected the program not to run, found its output")
    if not wrong:
        return []
    return [f"{what}: {'; '.join(wrong)}\n  stdout: {proc.stdout!r}\n  stderr: {proc.stderr!r}"]


def _all_refused(rootfs: Rootfs, env: str, args: tuple[str, ...],
                 variables: dict[str, str]) -> list[str]:
    """envbuild run, the guard and verify, each checked; every problem, one entry each."""
    run = rootfs.run(ENVBUILD, "run", env, *args, "--", *PROGRAM, env=variables)
    guard = rootfs.run(f"{env}/bin/envbuild-guard", *args, "--", *PROGRAM, env=variables)
    verify = rootfs.run(ENVBUILD, "verify", env, *args, env=variables)
    return (_problems(run, "envbuild run", 125, "stderr")
            + _problems(guard, "envbuild-guard", 125, "stderr")
            + _problems(verify, "envbuild verify", 1, "stdout"))


@pytest.mark.parametrize("override", list(OVERRIDES), ids=list(OVERRIDES))
def test_refused_whatever_the_variables(chroot_env: ChrootEnv, override: str) -> None:
    problems = _all_refused(chroot_env.rootfs, chroot_env.env, (), OVERRIDES[override])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("flags", list(FLAGS), ids=list(FLAGS))
def test_refused_whatever_the_flags(chroot_env: ChrootEnv, flags: str) -> None:
    args = (*FLAGS[flags], "--expect", chroot_env.digest)
    problems = _all_refused(chroot_env.rootfs, chroot_env.env, args, {})
    assert not problems, "\n".join(problems)


def test_refused_in_json_too(chroot_env: ChrootEnv) -> None:
    proc = chroot_env.rootfs.run(ENVBUILD, "verify", chroot_env.env, "--json")
    assert proc.returncode == 1, proc.stderr
    host = [d for d in json.loads(proc.stdout)["differences"] if d["subject"] == "glibc"]
    assert [(d["kind"], d["found"]) for d in host] == [("host", BULLSEYE)], proc.stdout
    assert host[0]["expected"].startswith(f">= {NEEDED}"), host


# --- the control: the same wheel's env on this host -----------------------------------------


def test_the_same_env_built_on_this_host_runs(glibc_index: GlibcIndex, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path / "work", (glibc_index.root / "simple").as_uri())
    locked = envbuild("lock", recipe)
    assert locked.returncode == 0, locked.stderr
    built = envbuild("build", recipe, "--store", tmp_path / "store")
    assert built.returncode == 0, built.stderr
    env = built.stdout.strip().splitlines()[-1]
    manifest = json.loads((Path(env) / "envbuild-manifest.json").read_bytes())
    assert manifest["host"]["glibc"] == NEEDED
    verified = envbuild("verify", env, "--level", "full")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "host:" not in verified.stdout
    ran = envbuild("run", env, "--", "python", "-c", "import pkg; print(pkg.spawn())")
    assert (ran.returncode, ran.stdout) == (0, "42\n"), ran.stderr
    guard = subprocess.run([f"{env}/bin/envbuild-guard", "--", *PROGRAM],
                           capture_output=True, text=True, timeout=120)
    assert (guard.returncode, guard.stdout) == (0, "1\n"), guard.stderr
