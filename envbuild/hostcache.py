"""Answers kept per user and per host (`<user cache>/hosts/<node>/`), so that a launch
rarely repeats costly work: hashing the interpreter, probing it, checking host libraries.
Stdlib only. Every entry stores the key it was computed for; a different key is a miss.
"""

from __future__ import annotations

import os

from .hashing import file_digest, sha256
from .layout import host_cache_dir


def cached(name: str, key: str) -> str | None:
    """The value stored under `name` if it was stored for `key`, else None."""
    try:
        with open(os.path.join(host_cache_dir(), name), encoding="utf-8") as fh:
            stored_key, _, value = fh.read().partition("\n")
    except OSError:
        return None
    return value if stored_key == key else None


def remember(name: str, key: str, value: str) -> None:
    """Best effort: a cache that cannot be written only costs time."""
    path = os.path.join(host_cache_dir(), name)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{key}\n{value}")
        os.replace(tmp, path)
    except OSError:
        pass


def stat_key(path: str, st: os.stat_result) -> str:
    """What identifies a file's bytes without reading them: replaced or rewritten files
    change inode, size, mtime or ctime."""
    return f"{path} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


def interpreter_digest(path: str) -> str | None:
    """sha256 of an executable, cached per host by its stat so launches rarely hash it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = stat_key(path, st)
    name = "interp-" + sha256(path.encode()).hexdigest()[:24]
    value = cached(name, key)
    if value is None:
        value = file_digest(path)
        remember(name, key, value)
    return value
