"""Who the target interpreter is: identity for the env key and manifest, marker
environment for the lock's markers, and the wheel tags it accepts."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import InputError, ToolError
from .hashing import file_digest
from .host import cached, interpreter_digest, remember
from .proc import hermetic_env, run_tool

if TYPE_CHECKING:
    from packaging.tags import Tag

# Run inside the target interpreter, which may be any CPython >= 3.9 with no packages.
_PROBE = r"""
import json, os, platform, sys, sysconfig
impl = sys.implementation.name
iver = "{0.major}.{0.minor}.{0.micro}".format(sys.implementation.version)
short = {"cpython": "cp", "pypy": "pp"}.get(impl, impl)

def libpython():
    # the shared library the dynamic linker really mapped (a copied or patched install
    # differs from the build-time LIBDIR; Debian's binary is static though its build
    # configuration says shared); LIBDIR/INSTSONAME where /proc is unavailable
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split(None, 5)
                if len(fields) == 6 and os.path.basename(fields[5]).startswith("libpython"):
                    return fields[5].rstrip("\n")
        return None   # linked statically, whatever the build's configuration says
    except OSError:
        pass
    return os.path.join(sysconfig.get_config_var("LIBDIR") or "",
                        sysconfig.get_config_var("INSTSONAME") or "")

print(json.dumps({
    "implementation": impl,
    "version": platform.python_version(),
    "abi": "%s%d%d%s" % (short, sys.version_info[0], sys.version_info[1], sys.abiflags),
    "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
    "cache_tag": sys.implementation.cache_tag,
    "libpython": libpython(),
    "libc": " ".join(platform.libc_ver()).strip(),
    "executable": os.path.realpath(sys.executable),
    "stdlib": sysconfig.get_path("stdlib"),
    "site": os.path.relpath(sysconfig.get_path(
        "purelib", "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix",
        vars={"base": "/B", "platbase": "/B"}), "/B"),
    "markers": {
        "implementation_name": impl, "implementation_version": iver,
        "os_name": os.name, "platform_machine": platform.machine(),
        "platform_release": platform.release(), "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    },
}))
"""


class Interpreter(NamedTuple):
    executable: str            # realpath of the binary
    implementation: str
    version: str
    abi: str
    platform: str
    libc: str
    stdlib: str
    site: str                  # site-packages relative to a venv root
    cache_tag: str             # pyc names: __pycache__/mod.<cache_tag>.pyc
    markers: dict[str, str]
    sha256: str
    stdlib_digest: str
    libpython: dict[str, str] | None = None   # {path, sha256} of a shared libpython
    # set for an interpreter that lives elsewhere (inside an image): the platform tags its
    # wheels may carry, since this host's own tags say nothing about it
    foreign_platforms: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        """What the manifest records and the env key hashes."""
        return {"implementation": self.implementation, "version": self.version,
                "abi": self.abi, "platform": self.platform, "libc": self.libc,
                "executable": self.executable, "sha256": self.sha256,
                "stdlib_digest": self.stdlib_digest, "libpython": self.libpython}

    @property
    def pyc_version(self) -> str:
        """Its version as what holds its compiled pycs is keyed by (trees, the pyc caches,
        env keys): before 3.11 with `-serial`, since those pycs are compiled one by one,
        never in a pool, which changed their bytes (`bytecode._COMPILE`)."""
        serial = self.version.split(".")[:2] in (["3", "9"], ["3", "10"])
        return f"{self.version}-serial" if serial else self.version

    def supported_tags(self) -> set[Tag]:
        """The wheel tags this interpreter installs (`packaging.tags`: imported here, for a
        build that picks wheels, not for one that finds its env in the store)."""
        from packaging import tags

        major, minor = (int(x) for x in self.version.split(".")[:2])
        if self.foreign_platforms:
            platforms = list(self.foreign_platforms)
            found = set(tags.cpython_tags((major, minor), [self.abi, "abi3", "none"],
                                          platforms))
            found.update(tags.compatible_tags((major, minor), self.abi[:4], platforms))
            return found
        if (major, minor) == sys.version_info[:2] and self.implementation == "cpython" \
                and sys.implementation.name == "cpython":
            return set(tags.sys_tags())
        platforms = list(tags.platform_tags())
        found = set(tags.cpython_tags((major, minor), [self.abi, "abi3", "none"], platforms))
        found.update(tags.compatible_tags((major, minor), self.abi[:4], platforms))
        return found


def probe(python: str | None) -> Interpreter:
    """Describe the interpreter `python` names (see `find_python`; default: the one running
    envbuild)."""
    exe = find_python(python)
    info = _probe_info(exe)
    real = info["executable"]
    digest = interpreter_digest(real)
    if digest is None:
        raise InputError(f"--python: {real} (from {exe}) cannot be read")
    return Interpreter(executable=real, implementation=info["implementation"],
                       version=info["version"], abi=info["abi"], platform=info["platform"],
                       libc=info["libc"], stdlib=info["stdlib"], site=info["site"],
                       cache_tag=info["cache_tag"], markers=info["markers"], sha256=digest,
                       stdlib_digest=stdlib_digest(Path(info["stdlib"]), info["libpython"]),
                       libpython=_libpython(info["libpython"]))


def image_interpreter(info: dict[str, Any]) -> Interpreter:
    """The interpreter inside an image, from the probe's answer there: enough to resolve
    the lock's markers and fetch wheels for it; its hashes are taken where it runs."""
    return Interpreter(executable=info["executable"], implementation=info["implementation"],
                       version=info["version"], abi=info["abi"], platform=info["platform"],
                       libc=info["libc"], stdlib=info["stdlib"], site=info["site"],
                       cache_tag=info["cache_tag"], markers=info["markers"], sha256="",
                       stdlib_digest="", foreign_platforms=tuple(
                           linux_platforms(info["libc"], info["markers"]["platform_machine"])))


def linux_platforms(libc: str, machine: str) -> list[str]:
    """The platform tags a Linux interpreter with this libc accepts, most specific first:
    manylinux_2_N down to 2_5 (with their legacy aliases) for glibc, then linux_ARCH."""
    out: list[str] = []
    name, _, version = libc.partition(" ")
    if name == "glibc" and version.count(".") >= 1:
        major, minor = (int(x) for x in version.split(".")[:2])
        aliases = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        for m in range(minor, 4, -1) if major == 2 else ():
            out.append(f"manylinux_{major}_{m}_{machine}")
            if m in aliases:
                out.append(f"{aliases[m]}_{machine}")
    return [*out, f"linux_{machine}"]


_VERSION = re.compile(r"3\.[0-9]+")


def find_python(spec: str | None) -> str:
    """The interpreter `--python` names, for `lock` and `build` alike: a path; a version
    such as `3.12` or `python3.12` (`python3.12` on PATH, then
    `$PYENV_ROOT/versions/3.12.*/bin/python3.12`, highest patch first; the first that
    answers as that version); or another command on PATH.
    None: the one running envbuild."""
    if not spec:
        return sys.executable
    if os.sep in spec:
        if not (os.path.isfile(spec) and os.access(spec, os.X_OK)):
            why = "not an executable file" if os.path.exists(spec) else "no such file"
            raise InputError(f"--python: expected a Python interpreter, found {spec!r} "
                             f"({why})")
        return spec
    if _VERSION.fullmatch(spec):
        return _python_of_version(spec)
    if spec.startswith("python") and _VERSION.fullmatch(spec[6:]):
        return _python_of_version(spec[6:])   # `python3.12`: as `3.12`, pyenv's installs too
    found = shutil.which(spec)
    if found is None:
        raise InputError(f"--python: expected a path, a version such as 3.12 or a command "
                         f"on PATH, found {spec!r}: not on PATH")
    return found


def _python_of_version(version: str) -> str:
    tried: list[str] = []
    for candidate in _version_candidates(version):
        try:
            have = _probe_info(candidate)["markers"]["python_version"]
        except InputError as exc:
            tried.append(f"{candidate}: {str(exc).partition(f'found {candidate}: ')[2]}")
            continue
        if have == version:
            return candidate
        tried.append(f"{candidate}: Python {have}")
    pyenv = os.path.join(_pyenv_root(), "versions", f"{version}.*", "bin", f"python{version}")
    raise InputError(f"--python {version}: expected Python {version} as python{version} on "
                     f"PATH or {pyenv}, found "
                     + ("; ".join(tried) if tried else "none"))


def _version_candidates(version: str) -> list[str]:
    """`pythonX.Y` in every PATH directory, in order, then pyenv's, highest patch first."""
    name = f"python{version}"
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK) and path not in found:
            found.append(path)
    installs = []
    for path in glob.glob(os.path.join(_pyenv_root(), "versions", f"{version}.*", "bin", name)):
        patch = os.path.basename(os.path.dirname(os.path.dirname(path)))[len(version) + 1:]
        if patch.isdigit():      # not a free-threaded or debug build's "3.13.0t"
            installs.append((int(patch), path))
    return found + [path for _patch, path in sorted(installs, reverse=True)]


def _pyenv_root() -> str:
    return os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")


def _libpython(path: str | None) -> dict[str, str] | None:
    """The shared libpython a `--enable-shared` build's small binary runs, by its real path:
    swapping it swaps the interpreter, so launches check its hash as they check the binary's."""
    if not path or not os.path.isfile(path):
        return None
    real = os.path.realpath(path)
    digest = interpreter_digest(real)
    return {"path": real, "sha256": digest} if digest else None


PROBE_SCRIPT = _PROBE


def _probe_info(exe: str) -> dict[str, Any]:
    """The probe's answer, cached per host by the interpreter's stat (and the kernel's
    release, which the marker environment names, and this probe's code): a cache hit must
    not start Python."""
    real = os.path.realpath(exe)
    st = os.stat(real)
    probe_id = hashlib.sha256(_PROBE.encode()).hexdigest()[:16]
    key = (f"{exe} {real} {st.st_ino} {st.st_size} {st.st_mtime_ns} {os.uname().release} "
           f"{probe_id}")
    name = "probe-" + hashlib.sha256(exe.encode()).hexdigest()[:24]
    stored = cached(name, key)
    if stored is not None:
        info: dict[str, Any] = json.loads(stored)
        return info
    try:
        out = run_tool([exe, "-I", "-S", "-c", _PROBE], env=hermetic_env())
        info = json.loads(out.strip().splitlines()[-1])
        version = tuple(int(x) for x in info["version"].split(".")[:2])
    except ToolError as exc:
        first = next((line.strip() for line in exc.output.splitlines() if line.strip()), "")
        raise InputError(f"--python: expected a Python interpreter, found {exe}: it exited "
                         f"with status {exc.returncode} when run as Python"
                         + (f" ({first})" if 0 < len(first) <= 120 else "")) from None
    except OSError as exc:
        raise InputError(f"--python: expected a Python interpreter, found {exe}: it cannot "
                         f"be run ({exc.strerror})") from None
    except Exception:  # noqa: BLE001 - any other answer means it is not a usable Python
        raise InputError(f"--python: expected a Python interpreter, found {exe}: its "
                         "answer was not a Python's") from None
    if version < (3, 9):
        raise InputError(f"--python: expected a Python 3.9 or newer, found {exe} (Python "
                         f"{info['version']})")
    if not _is_script(real):    # a script (a pyenv shim) may run another Python next time
        remember(name, key, json.dumps(info, sort_keys=True))
    return info


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"#!"
    except OSError:
        return False


def stdlib_digest(stdlib: Path, libpython: str | None = None) -> str:
    """One digest over the stdlib's sources and extension modules (tests excluded), and the
    shared libpython a small `python` binary links to.

    Cached per host by the stdlib dir's stat, since hashing it costs a second or so.
    """
    st = stdlib.stat()
    key = f"{stdlib} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}"
    if libpython and os.path.isfile(libpython):
        lst = os.stat(libpython)
        key += f" {libpython} {lst.st_ino} {lst.st_size} {lst.st_mtime_ns}"
    name = "stdlib-" + hashlib.sha256(str(stdlib).encode()).hexdigest()[:24]
    value = cached(name, key)
    if value is not None:
        return value
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(stdlib):
        rel_dir = os.path.relpath(dirpath, stdlib)
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
        for fname in sorted(filenames):
            if fname.endswith((".py", ".so")):
                h.update(f"{rel_dir}/{fname}\0".encode())
                with open(os.path.join(dirpath, fname), "rb") as fh:
                    h.update(hashlib.sha256(fh.read()).digest())
    if libpython and os.path.isfile(libpython):
        h.update(f"{libpython}\0".encode())
        h.update(file_digest(libpython).encode())
    value = "sha256:" + h.hexdigest()
    remember(name, key, value)
    return value


_STDLIB_SKIP = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib",
                "tkinter", "turtledemo"}
