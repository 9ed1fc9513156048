"""verify_files: the files level, whether on two processes (a forked helper takes half of
the subtrees) or one, finds exactly what the full level's walk finds, but for content."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Built
from test_verify import SITE, add_file, freeze, rewrite, tampered_copy

from envbuild import verify_files
from envbuild.verify import verify


def _reference(env: Path) -> list[str]:
    """The full level's differences but those of content: its walk maps the whole tree,
    then compares every parsed sidecar line with it."""
    report = verify(str(env), level="full")
    return sorted(d.line() for d in report.differences
                  if not (d.kind == "modified" and d.expected.startswith("sha256:")))


def _lines(env: Path, split: bool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(verify_files, "_MIN_LINES", 0 if split else 1 << 30)
    forks = []
    real_fork = os.fork

    def counting_fork() -> int:
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(os, "fork", counting_fork)
    report = verify(str(env), level="files")
    assert bool(forks) == split
    return sorted(d.line() for d in report.differences)


def test_intact_env_on_two_processes(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _lines(built.env, True, monkeypatch) == []


def test_two_processes_find_what_one_finds(built: Built, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    env = tampered_copy(built, tmp_path)
    add_file(env / "top-level-added", b"x")                            # upper levels
    add_file(env / SITE / "alpha" / "added.py", b"x = 1\n")             # inside a subtree
    rewrite(env / SITE / "delta.py", b"grown " * 10)                    # size
    (env / SITE / "gamma.py").unlink()                                   # missing
    (env / "bin" / "alpha").chmod(0o777)                                 # permissions
    rewrite(env / SITE / "alpha" / "__init__.py", b"x")                 # size, in a subtree
    (env / SITE / "alpha-2.0.dist-info" / "RECORD").chmod(0o666)        # writable
    (env / SITE / "alpha-2.0.dist-info" / "METADATA").chmod(0o400)      # another mode
    os.chown(env / SITE / "alpha-2.0.dist-info" / "WHEEL", 12345, -1)   # owner
    (env / "bin" / "python3").unlink()                                   # a symlink ...
    (env / "bin" / "python3").symlink_to("/bin/sh")                      # ... retargeted
    (env / SITE / "delta-1.0.dist-info" / "RECORD").unlink()             # a file ...
    (env / SITE / "delta-1.0.dist-info" / "RECORD").mkdir()              # ... now a dir
    freeze(env)
    one = _lines(env, False, monkeypatch)
    two = _lines(env, True, monkeypatch)
    assert one == two == _reference(env)
    for subject in ("top-level-added", f"{SITE}/alpha/added.py", f"{SITE}/delta.py",
                    f"{SITE}/gamma.py", "bin/alpha", f"{SITE}/alpha/__init__.py",
                    f"{SITE}/alpha-2.0.dist-info/RECORD", f"{SITE}/alpha-2.0.dist-info/METADATA",
                    f"{SITE}/alpha-2.0.dist-info/WHEEL", "bin/python3",
                    f"{SITE}/delta-1.0.dist-info/RECORD"):
        assert any(f": {subject}: " in line for line in two), (subject, two)
