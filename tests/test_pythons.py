"""Every CPython envbuild supports, end to end: a lock made for it (`lock --python`), a
build, `verify --level full`, `envbuild run`, and the env moved elsewhere and activated
with bash. Each venv module writes its own activate scripts (3.12 exports VIRTUAL_ENV in a
cygwin test, later patch levels shlex-quote the path): none may keep the build's path."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import copy_env, envbuild, write_recipe
from pkgindex import LocalIndex
from test_interpreter import pyenv_python
from test_lock import header, pins

# (version, what --python says): versions, a command on PATH, and Debian's own build
PYTHONS = [("3.9", "3.9"), ("3.10", "3.10"), ("3.11", "3.11"), ("3.12", "python3.12"),
           ("3.13", "3.13"), ("3.11", "/usr/bin/python3.11")]
DEPS = ["beta", "gamma; python_version < '3.10'"]


def run_ok(*args: str | Path, env: dict[str, str]) -> str:
    res = envbuild(*args, env=env)
    assert res.returncode == 0, f"{args}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("version,python", PYTHONS,
                         ids=["3.9", "3.10", "3.11", "python3.12", "3.13", "debian-3.11"])
def test_lock_build_verify_run_move(tmp_path: Path, index: LocalIndex, tools_store: Path,
                                    version: str, python: str) -> None:
    environ = dict(os.environ)
    if not os.path.isabs(python):
        pyenv_python(version)           # fails, naming it, when this Python is missing
    if python.startswith("python"):     # a command name, found on PATH
        (tmp_path / "bin").mkdir()
        os.symlink(pyenv_python(version), tmp_path / "bin" / python)
        environ["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{environ['PATH']}"
    recipe = write_recipe(tmp_path / "r", index, deps=DEPS, name="py")
    store = tools_store     # its tools/ venvs are shared with the other lock tests
    run_ok("lock", recipe, "--python", python, "--store", store, env=environ)
    text = recipe.with_suffix(".lock").read_text()
    assert header(text)["python"] == f"{version} (cpython)"
    assert ("gamma" in pins(text)) == (version == "3.9")

    info = json.loads(run_ok("build", recipe, "--python", python, "--store", store, "--json",
                             env=environ).strip().splitlines()[-1])
    env = Path(info["path"])
    manifest = json.loads((env / "envbuild-manifest.json").read_bytes())
    full = manifest["interpreter"]["version"]
    assert full.startswith(version + ".")
    # before 3.11 the pycs' bytes changed when their compile stopped using a pool: what
    # holds them is keyed apart from what was made before
    serial = "-serial" if version in ("3.9", "3.10") else ""
    assert any(re.search(rf"-{re.escape(full + serial)}-s\d+$", tree.name)
               for tree in (store / "trees").iterdir()), sorted((store / "trees").iterdir())
    assert (store / "pycs" / f"by-source-{manifest['interpreter']['abi']}-{full}{serial}").is_dir()
    if os.path.isabs(python):
        assert manifest["interpreter"]["path"] == python
    for name in ("bin/activate", "bin/activate.fish", "bin/Activate.ps1", "pyvenv.cfg"):
        data = (env / name).read_text()
        assert str(store) not in data and ".tmp-" not in data, (name, data)
    assert not (env / "bin" / "activate.csh").exists()
    run_ok("verify", env, "--level", "full", env=environ)
    out = run_ok("run", env, "--", "python", "-c",
                 "import beta, sys; print('%d.%d' % sys.version_info[:2], sys.prefix)",
                 env=environ)
    assert out.split() == [version, str(env)]

    moved = copy_env(env, tmp_path / "moved" / "env")
    activated = subprocess.run(
        ["bash", "-c", '. moved/env/bin/activate && echo "$VIRTUAL_ENV" && command -v python '
         '&& python -c "import beta, sys; print(sys.prefix)"'],
        cwd=tmp_path, capture_output=True, text=True, check=True,
        env={k: v for k, v in environ.items() if k != "PYTHONPATH"}).stdout.split()
    assert activated == [str(moved), str(moved / "bin" / "python"), str(moved)]
    run_ok("verify", moved, "--level", "full", env=environ)
