"""The code stays typed (mypy --strict) and lint-clean (ruff); the launch path stays stdlib."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_mypy_strict() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "envbuild"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_launch_path_imports_only_the_stdlib() -> None:
    """The guard's modules import nothing outside the stdlib (and not json, re, hashlib,
    subprocess or signal, which cost milliseconds at every launch)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import envbuild.launch, envbuild.runlog;"
            "print(' '.join(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)],
                          capture_output=True, text=True, check=True)
    loaded = set(proc.stdout.split())
    for heavy in ("json", "re", "hashlib", "subprocess", "signal", "typer", "packaging",
                  "dataclasses", "socket", "datetime"):
        assert heavy not in loaded, heavy
