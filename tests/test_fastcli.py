"""`run` and `verify` are parsed without typer; bad input still gets a clear error and 2
(verify) or 125 (run), both through `python -m envbuild` and through typer's shell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Built, cli


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envbuild", "verify", *args],
                          capture_output=True, text=True)


@pytest.mark.parametrize(("args", "message"), [
    ([], "missing ENV"),
    (["--level", "deep"], "--level: expected one of quick, files, full, found 'deep'"),
    (["--expect", "md5:abc"], "--expect: expected sha256: and 64 hex digits"),
    (["--expect", "sha256:zz"], "found 'sha256:zz'"),
    (["--bogus"], "unexpected argument '--bogus'"),
])
def test_bad_verify_input_exits_2(built: Built, args: list[str], message: str) -> None:
    argv = args if args == [] else [str(built.env), *args]
    for result in (_verify(*argv), cli("verify", *argv)):
        code = getattr(result, "returncode", getattr(result, "exit_code", None))
        assert code == 2
        assert message in result.stderr
        assert "usage: envbuild verify ENV" in result.stderr


def test_verify_option_spellings(built: Built) -> None:
    proc = _verify("--level=files", str(built.env), "--json", f"--expect={built.digest}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["level"] == "files"
    assert report["manifest_digest"] == built.digest
    assert report["differences"] == []


def test_verify_help_is_typers(tmp_path: Path) -> None:
    proc = _verify("--help")
    assert proc.returncode == 0
    assert "quick (default)" in proc.stdout


def test_run_without_command_is_refused(built: Built) -> None:
    proc = subprocess.run([sys.executable, "-m", "envbuild", "run", str(built.env)],
                          capture_output=True, text=True)
    assert proc.returncode == 125
    assert "no command given" in proc.stderr
