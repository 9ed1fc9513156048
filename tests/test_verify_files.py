"""verify_files: the files level on two processes (a forked helper takes half of the
subtrees) finds exactly what the one-process check finds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Built
from test_verify import SITE, add_file, freeze, rewrite, tampered_copy

from envbuild import verify_files
from envbuild.verify import verify


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
    freeze(env)
    one = _lines(env, False, monkeypatch)
    two = _lines(env, True, monkeypatch)
    assert two == one
    for subject in ("top-level-added", f"{SITE}/alpha/added.py", f"{SITE}/delta.py",
                    f"{SITE}/gamma.py", "bin/alpha"):
        assert any(f": {subject}: " in line for line in two), (subject, two)
