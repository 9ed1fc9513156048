"""verify_files: the files level, whether by GNU find (two of them, one per half of the
subtrees), on two processes (a forked helper takes half of the subtrees) or on one, finds
exactly what the full level's walk finds, but for content."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Built
from test_verify import SITE, add_file, freeze, rewrite, tampered_copy

from envbuild import findwalk, verify_files
from envbuild.verify import verify


def _reference(env: Path) -> list[str]:
    """The full level's differences but those of content: its walk maps the whole tree,
    then compares every parsed sidecar line with it."""
    report = verify(str(env), level="full")
    return sorted(d.line() for d in report.differences
                  if not (d.kind == "modified" and d.expected.startswith("sha256:")))


def _lines(env: Path, how: str, monkeypatch: pytest.MonkeyPatch,
           finds: tuple[str, ...] = findwalk.FINDS) -> list[str]:
    """The files level's differences, walked `how`: "one" process, "two", or by "find"
    (`finds` the programs it tries, "find-failed" where each of them fails)."""
    monkeypatch.setattr(verify_files, "_MIN_LINES", 1 << 30 if how == "one" else 0)
    monkeypatch.setattr(verify_files, "_FANOUT", 4)   # subtrees to share out, in a small env
    monkeypatch.setattr(findwalk, "FINDS", finds if how.startswith("find") else ())
    forks, spawns = [], []
    real_on_two, real_spawn = verify_files._on_two, findwalk._spawn

    def counting_on_two(*args: Any) -> bool:
        forks.append(1)
        return real_on_two(*args)

    def counting_spawn(*args: Any) -> int:
        spawns.append(1)
        return real_spawn(*args)

    monkeypatch.setattr(verify_files, "_on_two", counting_on_two)
    monkeypatch.setattr(findwalk, "_spawn", counting_spawn)
    report = verify(str(env), level="files")
    assert (bool(forks), bool(spawns)) == {"one": (False, False), "two": (True, False),
                                           "find": (False, True),
                                           "find-failed": (True, True)}[how]
    return sorted(d.line() for d in report.differences)


@pytest.mark.parametrize("how", ["two", "find"])
def test_intact_env(built: Built, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _lines(built.env, how, monkeypatch) == []


def test_every_walk_finds_what_the_full_level_finds(built: Built, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    env = tampered_copy(built, tmp_path)
    add_file(env / "top-level-added", b"x")                            # upper levels
    add_file(env / SITE / "alpha" / "added.py", b"x = 1\n")             # inside a subtree
    rewrite(env / SITE / "delta.py", b"grown " * 10)                    # size
    (env / SITE / "gamma.py").unlink()                                   # missing
    (env / "bin" / "alpha").chmod(0o777)                                 # permissions
    rewrite(env / SITE / "alpha" / "__init__.py", b"x")                 # size, in a subtree
    (env / SITE / "alpha-2.0.dist-info" / "RECORD").chmod(0o664)        # group-writable
    (env / SITE / "delta-1.0.dist-info" / "METADATA").chmod(0o446)      # world-writable
    (env / SITE / "alpha-2.0.dist-info" / "METADATA").chmod(0o400)      # another mode
    os.chown(env / SITE / "alpha-2.0.dist-info" / "WHEEL", 12345, -1)   # owner
    (env / "bin" / "python3").unlink()                                   # a symlink ...
    (env / "bin" / "python3").symlink_to("/bin/sh")                      # ... retargeted
    (env / SITE / "delta-1.0.dist-info" / "RECORD").unlink()             # a file ...
    (env / SITE / "delta-1.0.dist-info" / "RECORD").mkdir()              # ... now a dir
    (env / SITE / "alpha-2.0.dist-info" / "INSTALLER").unlink()          # missing, in one
    freeze(env)
    one = _lines(env, "one", monkeypatch)
    two = _lines(env, "two", monkeypatch)
    by_find = _lines(env, "find", monkeypatch)
    assert one == two == by_find == _reference(env)
    for subject in ("top-level-added", f"{SITE}/alpha/added.py", f"{SITE}/delta.py",
                    f"{SITE}/gamma.py", "bin/alpha", f"{SITE}/alpha/__init__.py",
                    f"{SITE}/alpha-2.0.dist-info/RECORD", f"{SITE}/alpha-2.0.dist-info/METADATA",
                    f"{SITE}/alpha-2.0.dist-info/WHEEL", "bin/python3",
                    f"{SITE}/delta-1.0.dist-info/RECORD",
                    f"{SITE}/alpha-2.0.dist-info/INSTALLER",
                    f"{SITE}/delta-1.0.dist-info/METADATA"):
        assert any(f": {subject}: " in line for line in two), (subject, two)


def test_a_find_that_fails_leaves_it_to_python(built: Built, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A find without `-printf` (BusyBox's), or one that meets a dir it cannot read: the
    walk in Python reports what it would have."""
    env = tampered_copy(built, tmp_path)
    rewrite(env / SITE / "delta.py", b"grown " * 10)
    (env / SITE / "gamma.py").unlink()
    freeze(env)
    busybox = tmp_path / "find"
    busybox.write_text("#!/bin/sh\necho 'find: unrecognized: -printf' >&2\nexit 1\n")
    busybox.chmod(0o755)
    failed = _lines(env, "find-failed", monkeypatch, (str(busybox),))
    assert failed == _lines(env, "one", monkeypatch) == _reference(env)
    assert any(f": {SITE}/gamma.py: " in line for line in failed)


def test_other_threads_leave_it_to_python(built: Built, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """While another thread runs, forking is not safe: no find is started, no helper
    forked, and the walk in this process reports the same."""
    import threading

    env = tampered_copy(built, tmp_path)
    rewrite(env / SITE / "alpha" / "__init__.py", b"x")
    freeze(env)
    monkeypatch.setattr(verify_files, "_MIN_LINES", 0)
    spawns, forks = [], []
    real_spawn, real_fork = findwalk._spawn, os.fork

    def counting_spawn(*args: Any) -> int:
        spawns.append(1)
        return real_spawn(*args)

    def counting_fork() -> int:
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(findwalk, "_spawn", counting_spawn)
    monkeypatch.setattr(os, "fork", counting_fork)
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        report = verify(str(env), level="files")
    finally:
        release.set()
        other.join()
    assert spawns and not forks   # a find tried, refused before any fork
    assert sorted(d.line() for d in report.differences) == _reference(env)
    assert any(f": {SITE}/alpha/__init__.py: " in d.line() for d in report.differences)
