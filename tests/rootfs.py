"""A Debian bullseye root file system (glibc 2.31, Python 3.9), entered with chroot, for
tests that need a host older than this one.

The rootfs is made once per machine by ``debootstrap --variant=minbase
--include=python3,python3-venv bullseye`` from this machine's own Debian mirror (read from
APT's sources) and kept as a tarball in the test cache: ``$ENVBUILD_TEST_CACHE``, else
``/var/cache/envbuild-tests``, outside the clone so it outlives test and CI runs. Beside it,
the wheels of envbuild's dependencies for CPython 3.9, fetched once from PyPI. Both are
made in a temporary dir in the cache and renamed into place under a lock, so a killed run
leaves nothing half made and two sessions never debootstrap at once. A cache entry's name
carries a digest of what made it: change the recipe below or envbuild's dependencies and a
new entry is made.

Each session unpacks the tarball into its own tmp dir, mounts ``/proc`` and a tmpfs
``/dev/shm`` there (see _MOUNTS) and unmounts them by those paths at teardown.
``bullseye_envbuild`` adds envbuild itself, built from this checkout, installed offline
into ``/opt/eb`` by the rootfs's own ``python3``.

A test module imports the fixture functions (``from rootfs import bullseye_fixture,
bullseye_envbuild_fixture``, with ``# noqa: F401``); its tests take them as ``bullseye``
and ``bullseye_envbuild``. conftest.py is left alone: only the glibc tests pay for them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pkgindex import clean_pip_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the test venv's Python is 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CACHE_VAR = "ENVBUILD_TEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/envbuild-tests")
PYPI = "https://pypi.org/simple"

SUITE = "bullseye"
DEBOOTSTRAP_ARGS = ("--variant=minbase", "--include=python3,python3-venv")
# The rootfs's interpreter, as pip and uv name its platform: bullseye's glibc is 2.31.
TARGET_PYTHON = "3.9"
TARGET_PLATFORM = ("x86_64-manylinux_2_31", "manylinux_2_31_x86_64")   # uv's, pip's

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "XDG_CACHE_HOME": "/tmp/xdg-cache",
}
ENVBUILD = "/opt/eb/bin/envbuild"    # envbuild inside the rootfs (bullseye_envbuild)

DEBOOTSTRAP_TIMEOUT = 420.0
FETCH_TIMEOUT = 180.0


class RootfsError(Exception):
    """The rootfs or its wheels could not be made; the message says why and what to do."""


# --- the cache ----------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where the tarball and the wheels are kept across runs."""
    return Path(os.environ.get(CACHE_VAR, "").strip() or DEFAULT_CACHE)


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def tarball_path(cache: Path) -> Path:
    return cache / f"{SUITE}-minbase-{digest(SUITE, DEBOOTSTRAP_ARGS)}.tar"


@contextmanager
def cache_lock(cache: Path) -> Iterator[int]:
    """One session at a time makes cache entries; the others wait, then reuse them.

    Yields the lock's fd, which the tools writing into the cache inherit: a session killed
    while debootstrap runs keeps the cache locked until that debootstrap is gone too, so
    the next session never clears a dir that something still writes in.
    """
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield fh.fileno()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def clear_leftovers(cache: Path) -> None:
    """Temporary dirs of a killed run (held under the lock, so no live run owns them)."""
    for left in sorted(cache.glob(".tmp-*")):
        if left.is_dir():
            # debootstrap mounts proc and sys in its target; killed, it leaves them there
            for mount in mounts_under(left):
                umount(mount)
            remove_tree(left)
        else:
            left.unlink()


def cached_tarball() -> Path:
    """The bullseye rootfs tarball, made now if this machine has none."""
    cache = cache_dir()
    with cache_lock(cache) as lock:
        final = tarball_path(cache)
        if final.is_file():
            return final
        clear_leftovers(cache)
        work = Path(tempfile.mkdtemp(prefix=".tmp-rootfs-", dir=cache))
        try:
            target = work / "root"
            debootstrap(SUITE, target, debian_mirror(), lock)
            tmp_tar = work / "rootfs.tar"
            check_run(["tar", "--numeric-owner", "-C", str(target), "-cf", str(tmp_tar), "."],
                      "tar of the rootfs", 300, keep=lock)
            with open(tmp_tar, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_tar, final)
        finally:
            for mount in mounts_under(work):
                umount(mount)
            remove_tree(work)
        return final


# --- debootstrap ----------------------------------------------------------------------------


def _sources_files() -> list[Path]:
    apt = Path("/etc/apt")
    files = [apt / "sources.list"] if (apt / "sources.list").is_file() else []
    listed = apt / "sources.list.d"
    if listed.is_dir():
        files += sorted(p for p in listed.iterdir() if p.suffix in (".list", ".sources"))
    return files


def _deb822_mirrors(text: str) -> list[str]:
    mirrors = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if (fields.get("enabled", "yes").lower() != "no"
                and "deb" in fields.get("types", "").split()
                and "main" in fields.get("components", "").split()
                and any("-" not in s for s in fields.get("suites", "").split())):
            mirrors += fields.get("uris", "").split()
    return mirrors


def _one_line_mirrors(text: str) -> list[str]:
    mirrors = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):   # [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 3 and "-" not in words[1] and "main" in words[2:]:
            mirrors.append(words[0])
    return mirrors


def debian_mirror() -> str:
    """The Debian archive this machine's APT uses (the release suite's, not security's)."""
    for path in _sources_files():
        text = path.read_text(errors="replace")
        found = _deb822_mirrors(text) if path.suffix == ".sources" else _one_line_mirrors(text)
        if found:
            return found[0]
    raise RootfsError("no Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/"
                      " (expected a `deb` source with a release suite and `main`); the "
                      f"{SUITE} rootfs for the glibc tests is made from it")


def debootstrap(suite: str, target: Path, mirror: str, lock: int) -> None:
    """``debootstrap DEBOOTSTRAP_ARGS suite target mirror``, inheriting the cache lock."""
    if os.geteuid() != 0:
        raise RootfsError(f"debootstrap and chroot need root; found uid {os.geteuid()}")
    exe = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(exe):
        raise RootfsError("debootstrap is not installed (tests/run installs it: "
                          "apt-get install debootstrap)")
    check_run([exe, *DEBOOTSTRAP_ARGS, suite, str(target), mirror],
              f"debootstrap of {suite} from {mirror}", DEBOOTSTRAP_TIMEOUT, keep=lock)


# --- wheels for the rootfs's Python ---------------------------------------------------------


def _runtime_dependencies() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def _tool_env() -> dict[str, str]:
    """pip's and uv's environment with no ambient configuration of either."""
    env = {k: v for k, v in clean_pip_env().items() if not k.startswith("UV_")}
    env["UV_NO_CONFIG"] = "1"
    return env


def cached_wheels() -> Path:
    """A dir of wheels for envbuild's runtime dependencies on CPython 3.9 (the rootfs's)."""
    deps = _runtime_dependencies()
    cache = cache_dir()
    final = cache / f"py39-wheels-{digest(deps, TARGET_PYTHON, TARGET_PLATFORM)}"
    with cache_lock(cache) as lock:
        if final.is_dir():
            return final
        clear_leftovers(cache)
        work = Path(tempfile.mkdtemp(prefix=".tmp-wheels-", dir=cache))
        try:
            _fetch_wheels(deps, work, lock)
            os.rename(work / "wheels", final)
        finally:
            remove_tree(work)
        return final


def _fetch_wheels(deps: list[str], work: Path, lock: int) -> None:
    # pip download evaluates markers for the running Python, not for --python-version (so
    # it would leave out tomli and importlib-metadata); uv resolves for the target itself.
    from uv import find_uv_bin

    (work / "in.txt").write_text("".join(f"{d}\n" for d in deps))
    check_run(
        [find_uv_bin(), "pip", "compile", "--no-config", "--no-python-downloads",
         "--only-binary", ":all:", "--python-version", TARGET_PYTHON,
         "--python-platform", TARGET_PLATFORM[0], "--index-url", PYPI, "--no-header",
         "--no-annotate", "--quiet", "--cache-dir", str(work / "uv-cache"),
         "-o", str(work / "pins.txt"), str(work / "in.txt")],
        "uv pip compile of envbuild's dependencies for Python 3.9", FETCH_TIMEOUT, keep=lock)
    check_run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", TARGET_PYTHON, "--implementation", "cp",
         "--platform", TARGET_PLATFORM[1], "--index-url", PYPI, "--no-cache-dir",
         "-q", "-d", str(work / "wheels"), "-r", str(work / "pins.txt")],
        "pip download of envbuild's dependencies for Python 3.9", FETCH_TIMEOUT, keep=lock)


def envbuild_wheel(wheels: Path, out: Path) -> Path:
    """A wheel of this checkout's envbuild, built offline (setuptools from `wheels`).

    Built from a copy, so the build leaves no build/ or egg-info in the clone.
    """
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "envbuild", src / "envbuild",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dest = out / "dist"
    check_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
               "--find-links", str(wheels), "-q", "-w", str(dest), str(src)],
              "pip wheel of envbuild", FETCH_TIMEOUT)
    (built,) = dest.glob("envbuild-*.whl")
    return built


# --- processes, mounts, trees --------------------------------------------------------------


def run_bounded(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                timeout: float, keep: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv in a session of its own; on timeout kill that session's group, then raise."""
    args = [str(a) for a in argv]
    with subprocess.Popen(args, env=dict(env) if env is not None else None,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, errors="replace",
                          start_new_session=True,
                          pass_fds=(keep,) if keep is not None else ()) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # the leader is not reaped yet: still ours
            proc.communicate()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def check_run(argv: Sequence[str], what: str, timeout: float, keep: int | None = None) -> str:
    """argv run to completion, its stdout; `keep`: an fd it inherits (the cache lock)."""
    try:
        proc = run_bounded(argv, env=_tool_env(), timeout=timeout, keep=keep)
    except subprocess.TimeoutExpired:
        raise RootfsError(f"{what}: expected to finish, still running after {timeout:.0f}s"
                          ) from None
    except OSError as exc:
        raise RootfsError(f"{what}: cannot start {argv[0]}: {exc}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RootfsError(f"{what}: expected exit 0, found {proc.returncode}:\n{tail}")
    return proc.stdout


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            point = line.split()[4]
            for esc, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"),
                              ("\\134", "\\")):
                point = point.replace(esc, char)
            if point == base or point.startswith(base + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def umount(point: Path) -> None:
    if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
        # still busy (a process left in the chroot): detach it, by this path only
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=True)


def remove_tree(path: Path) -> None:
    """Remove a tree, refusing if anything is mounted in it (rmtree would descend there)."""
    if not path.exists():
        return
    mounted = mounts_under(path)
    if mounted:
        raise RootfsError(f"{path}: expected nothing mounted inside before removing it, "
                          f"found {', '.join(map(str, mounted))}")
    shutil.rmtree(path)


# --- the rootfs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rootfs:
    path: Path  # the rootfs's / on this host

    def host_path(self, inner: str) -> Path:
        """Where a path inside the rootfs is on this host."""
        return self.path / inner.lstrip("/")

    def run(self, *argv: str, env: Mapping[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """argv inside the rootfs, as root, with CHROOT_ENV plus `env` and nothing else."""
        return run_bounded(["chroot", str(self.path), *argv],
                           env={**CHROOT_ENV, **(env or {})}, timeout=timeout)

    def check(self, *argv: str, env: Mapping[str, str] | None = None,
              timeout: float = 300) -> str:
        proc = self.run(*argv, env=env, timeout=timeout)
        assert proc.returncode == 0, (
            f"in the {SUITE} rootfs, {' '.join(argv)}: expected exit 0, found "
            f"{proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout


# What a real bullseye host has and a launch uses: /proc/self/maps (the loaded libpython),
# and a tmpfs /dev/shm, without which glibc 2.31's sem_open (multiprocessing's locks, used
# by envbuild's parallel compile) fails with ENOSYS.
_MOUNTS = (("proc", ("-t", "proc", "proc")),
           ("dev/shm", ("-t", "tmpfs", "-o", "mode=1777,size=64m,nosuid,nodev", "tmpfs")))


@contextmanager
def unpacked_rootfs(tarball: Path, where: Path) -> Iterator[Rootfs]:
    """The tarball unpacked at `where/root` with /proc mounted; unmounted and removed after."""
    root = where / "root"
    root.mkdir()
    mounted: list[Path] = []
    try:
        check_run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)],
                  f"unpacking {tarball}", 300)
        for point, how in _MOUNTS:
            path = root / point
            path.mkdir(parents=True, exist_ok=True)
            check_run(["mount", *how, str(path)], f"mounting {path}", 30)
            mounted.append(path)
        yield Rootfs(root)
    finally:
        for path in reversed(mounted):
            umount(path)
        remove_tree(root)


@pytest.fixture(scope="session", name="bullseye")
def bullseye_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rootfs]:
    """A bullseye rootfs (glibc 2.31, /usr/bin/python3 = 3.9 with venv), /proc mounted.

    Fails, never skips, when it cannot be made: the glibc rule would go untested.
    """
    try:
        tarball = cached_tarball()
    except RootfsError as exc:
        pytest.fail(f"cannot make the {SUITE} rootfs: {exc}", pytrace=False)
    with unpacked_rootfs(tarball, tmp_path_factory.mktemp(SUITE)) as rootfs:
        yield rootfs


@pytest.fixture(scope="session", name="bullseye_envbuild")
def bullseye_envbuild_fixture(bullseye: Rootfs, tmp_path_factory: pytest.TempPathFactory
                              ) -> Rootfs:
    """The bullseye rootfs with this checkout's envbuild in /opt/eb, installed offline by
    the rootfs's own python3; ENVBUILD is its command."""
    try:
        wheels = cached_wheels()
        own = envbuild_wheel(wheels, tmp_path_factory.mktemp("envbuild-wheel"))
    except RootfsError as exc:
        pytest.fail(f"cannot make envbuild's wheels for the {SUITE} rootfs: {exc}",
                    pytrace=False)
    inner = bullseye.host_path("/wheels")
    shutil.copytree(wheels, inner)
    shutil.copy2(own, inner / own.name)
    bullseye.check("/usr/bin/python3", "-m", "venv", "/opt/eb")
    bullseye.check("/opt/eb/bin/python", "-m", "pip", "install", "--no-index",
                   "--find-links", "/wheels", "-q", f"/wheels/{own.name}",
                   env={"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return bullseye
