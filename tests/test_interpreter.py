"""`--python` for `lock` and `build`: a path, a command on PATH or a version, found among
real interpreters (pyenv's CPython 3.9-3.13) as `interpreter.find_python` finds them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from envbuild.errors import InputError
from envbuild.interpreter import find_python, probe

PYENV = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def pyenv_python(version: str) -> Path:
    found = sorted(PYENV.glob(f"versions/{version}.*/bin/python{version}"))
    assert found, f"CPython {version} is needed under {PYENV}/versions (pyenv install {version})"
    return found[-1]


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_none_is_the_running_python() -> None:
    assert find_python(None) == sys.executable


def test_a_command_name_is_looked_up_on_path(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    os.symlink(pyenv_python("3.12"), tmp_path / "bin" / "python3.12")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert find_python("python3.12") == str(tmp_path / "bin" / "python3.12")
    found = probe("python3.12")
    assert found.version.startswith("3.12.")
    assert found.executable == os.path.realpath(pyenv_python("3.12"))


def test_a_version_skips_what_does_not_answer_as_that_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyenv shim of a version that is not selected exits 127; another Python under the
    name answers with its own version: both are passed over for pyenv's install, whose
    patch levels are compared as numbers (3.12.10 before 3.12.9), free-threaded builds
    (3.12.1t) left out."""
    shims, other = tmp_path / "shims", tmp_path / "other"
    script(shims / "python3.12", 'echo "pyenv: python3.12: command not found" >&2; exit 127')
    script(other / "python3.12", f'exec "{pyenv_python("3.13")}" "$@"')
    root = tmp_path / "pyenv"
    for patch in ("3.12.9", "3.12.10", "3.12.1t"):
        (root / "versions" / patch / "bin").mkdir(parents=True)
        os.symlink(pyenv_python("3.12"), root / "versions" / patch / "bin" / "python3.12")
    monkeypatch.setenv("PATH", os.pathsep.join([str(shims), str(other), "/usr/bin", "/bin"]))
    monkeypatch.setenv("PYENV_ROOT", str(root))
    assert find_python("3.12") == str(root / "versions" / "3.12.10" / "bin" / "python3.12")
    # the command's name that says its version is read the same way, not as PATH's first
    assert find_python("python3.12") == find_python("3.12")

    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "none"))
    with pytest.raises(InputError) as err:
        find_python("3.12")
    message = str(err.value)
    assert "\n" not in message
    assert f"{shims / 'python3.12'}: it exited with status 127" in message
    assert f"{other / 'python3.12'}: Python 3.13" in message


def test_the_first_on_path_that_answers_wins(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    os.symlink(pyenv_python("3.9"), tmp_path / "bin" / "python3.9")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert find_python("3.9") == str(tmp_path / "bin" / "python3.9")


@pytest.mark.parametrize("spec,says", [
    ("/nonexistent/python3", "found '/nonexistent/python3' (no such file)"),
    ("{tmp}/data", "found '{tmp}/data' (not an executable file)"),
    ("{tmp}/binary", "found {tmp}/binary: it cannot be run (Exec format error)"),
    ("python9.99", "found 'python9.99': not on PATH"),
    ("3.99", "expected Python 3.99 as python3.99 on PATH or"),
])
def test_what_is_not_a_python_is_bad_input(tmp_path: Path, spec: str, says: str) -> None:
    (tmp_path / "data").write_bytes(b"\x7fELF not really")
    (tmp_path / "binary").write_bytes(b"\x7fELF not really")
    (tmp_path / "binary").chmod(0o755)
    with pytest.raises(InputError) as err:
        probe(spec.format(tmp=tmp_path))
    assert says.format(tmp=tmp_path) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_program_that_is_not_python_is_one_line(tmp_path: Path) -> None:
    talker = script(tmp_path / "talker", "echo one; echo two; echo three >&2; exit 3")
    with pytest.raises(InputError) as err:
        probe(str(talker))
    assert str(err.value) == (f"--python: expected a Python interpreter, found {talker}: "
                              "it exited with status 3 when run as Python (one)")
    silent = script(tmp_path / "silent", "echo '{\"version\": 3}'")
    with pytest.raises(InputError) as err:
        probe(str(silent))
    assert str(err.value) == (f"--python: expected a Python interpreter, found {silent}: "
                              "its answer was not a Python's")


def test_a_python_before_3_9_is_refused(tmp_path: Path) -> None:
    """The launch code needs 3.9; what answers as an older Python is refused by version."""
    old = script(tmp_path / "python3.8", "exec " + sys.executable + ' -c "'
                 "import json, sys; print(json.dumps({'version': '3.8.18'}))\"")
    with pytest.raises(InputError) as err:
        probe(str(old))
    assert str(err.value) == (f"--python: expected a Python 3.9 or newer, found {old} "
                              "(Python 3.8.18)")
