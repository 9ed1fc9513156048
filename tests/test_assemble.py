"""assemble: the empty venv a build copies from the store is, once relocated, the very venv
`python -m venv` makes at the env's own path, on every Python (3.12 changed the activate
scripts, 3.13 added a .gitignore); and so is its start, where site-packages takes no part."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from test_interpreter import pyenv_python

from envbuild.assemble import _relocate_venv, _venv
from envbuild.interpreter import probe
from envbuild.proc import hermetic_env
from envbuild.startup import probe_startup, startup_of
from envbuild.store import Store


def _tree(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every path under root: its kind and bytes (a symlink's target), and its mode."""
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = (f"dir {stat.S_IMODE(st.st_mode):o}", b"")
            else:
                out[rel] = (f"file {stat.S_IMODE(st.st_mode):o}", path.read_bytes())
    return out


@pytest.mark.parametrize("version", ["3.9", "3.10", "3.11", "3.12", "3.13"])
def test_the_stored_venv_is_the_one_venv_makes_there(tmp_path: Path, version: str) -> None:
    interp = probe(str(pyenv_python(version)))
    store = Store.locate(tmp_path / "store")
    copied = tmp_path / "envs" / "first"
    copied.mkdir(parents=True)
    _venv(copied, interp, "demo", store)           # made in the store, then copied
    again = tmp_path / "envs" / "a-second-and-longer-name"
    again.mkdir()
    _venv(again, interp, "demo", store)            # copied
    (stored,) = Path(store.layout.venvs).iterdir()
    made = tmp_path / "elsewhere" / "made-by-venv-here"
    subprocess.run([interp.executable, "-I", "-m", "venv", "--without-pip", "--prompt", "demo",
                    str(made)], env=hermetic_env(), check=True)
    _relocate_venv(made)
    assert _tree(copied) == _tree(again) == _tree(made) == _tree(stored)
    assert b"demo" in (made / "bin" / "activate").read_bytes()
    for tree in (copied, made):
        assert str(tree).encode() not in (tree / "bin" / "activate").read_bytes()


def test_another_prompt_is_another_venv(tmp_path: Path) -> None:
    interp = probe(str(pyenv_python("3.11")))
    store = Store.locate(tmp_path / "store")
    for prompt in ("one", "two"):
        env = tmp_path / prompt
        env.mkdir()
        _venv(env, interp, prompt, store)
        assert f"prompt = '{prompt}'" in (env / "pyvenv.cfg").read_text()
    assert len([p for p in Path(store.layout.venvs).iterdir()
                if not p.name.startswith(".")]) == 2


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_a_start_site_packages_takes_no_part_in_is_the_stored_venvs(tmp_path: Path,
                                                                     version: str) -> None:
    """With nothing in site-packages that takes part in the start, the env's start is its
    stored venv's: probed there once, kept, read back; a .pth file or a sitecustomize takes
    part, and the env's own interpreter is asked."""
    interp = probe(str(pyenv_python(version)))
    store = Store.locate(tmp_path / "store")
    env = tmp_path / "envs" / "env"
    env.mkdir(parents=True)
    stored = _venv(env, interp, "demo", store)
    site = env / interp.site
    (site / "plain.py").write_text("x = 1\n")
    (site / "pkg").mkdir()
    (site / "pkg" / "__init__.py").write_text("")
    kept = startup_of(env, interp.site, stored)
    assert kept == probe_startup(env, interp.site)
    assert len(list(Path(store.layout.venvs).glob("*.startup-*.json"))) == 1
    assert startup_of(env, interp.site, stored) == kept   # read back
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (site / "extra.pth").write_text(f"{elsewhere}\n")
    with_pth = startup_of(env, interp.site, stored)
    assert with_pth == probe_startup(env, interp.site) != kept
    assert any(path == str(elsewhere) for path, _, _ in with_pth.dirs)
    (site / "extra.pth").unlink()
    (site / "sitecustomize.py").write_text("import plain\n")
    customized = startup_of(env, interp.site, stored)
    assert "plain" in customized.names and "plain" not in kept.names
