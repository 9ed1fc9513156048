"""The host as the launch sees it: the C library's version and the shared libraries the
dynamic loader would find. Stdlib only and light to import (what a lookup needs is imported
when one runs: the answer is cached per host, see `verify_quick`)."""

from __future__ import annotations

import os

TYPE_CHECKING = False   # not typing's: importing typing costs the launch path `re`
if TYPE_CHECKING:
    from collections.abc import Iterable


def version_tuple(v: str) -> tuple[int, ...]:
    """`2.34` as (2, 34); parts that are not numbers are left out."""
    return tuple(int(part) for part in v.split(".") if part.isdigit())


def host_glibc() -> str | None:
    """The running C library's version if it is glibc, else None (musl, macOS)."""
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None
    if not value or not value.startswith("glibc "):
        return None
    return value.split()[1]


def _ld_so_conf_dirs(conf: str, seen: set[str]) -> list[str]:
    import glob
    import re

    if conf in seen:  # include cycles would otherwise recurse forever
        return []
    seen.add(conf)
    try:
        with open(conf, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return []
    dirs: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        words = line.split()
        if words and words[0] == "include":
            for pat in words[1:]:  # relative patterns are relative to this file, as in ldconfig
                pat = os.path.join(os.path.dirname(conf), pat)
                for inc in sorted(glob.glob(pat)):
                    dirs += _ld_so_conf_dirs(inc, seen)
        elif line and not line.startswith("hwcap"):
            dirs += [d for d in re.split(r"[\s:,]+", line) if d.startswith("/")]
    return dirs


def search_dirs() -> list[str]:
    """The loader's search order: LD_LIBRARY_PATH, ld.so.conf, the multiarch and default dirs."""
    import platform
    import sysconfig

    env = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    arch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    multiarch = [f"/lib/{arch}", f"/usr/lib/{arch}"]
    dirs = env + _ld_so_conf_dirs("/etc/ld.so.conf", set()) + multiarch
    dirs += ["/lib", "/usr/lib", "/lib64", "/usr/lib64"]
    return list(dict.fromkeys(dirs))


def missing_libraries(sonames: Iterable[str]) -> list[str]:
    """Sonames the host's dynamic loader would not find, sorted."""
    dirs = search_dirs()
    missing = []
    for soname in sorted(set(sonames)):
        if "/" in soname:  # the loader takes such names as paths, not as sonames
            found = os.path.exists(soname)
        else:
            found = any(os.path.exists(os.path.join(d, soname)) for d in dirs)
        if not found:
            missing.append(soname)
    return missing
