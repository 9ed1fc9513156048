"""Shared fixtures: a real local package index, a session store with a built env, and ways
to call envbuild in-process (fast) or as a real subprocess (end to end)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pkgindex import LocalIndex, build_index
from typer.testing import CliRunner
from xfsmount import xfs_dir_fixture, xfs_tmp_path_fixture  # noqa: F401

from envbuild.cli import app

ROOT = Path(__file__).resolve().parent.parent
DEMO_DEPS = ["beta[fast]", "sdistonly", "delta", "pthpkg"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_host_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep per-host caches, downloads and run records out of the user's home."""
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "ENVBUILD_STORE",
                                            "ENVBUILD_RUNLOG", "ENVBUILD_INDEX_URL",
                                            "ENVBUILD_CACHE")}
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    os.environ["ENVBUILD_CACHE"] = str(tmp_path_factory.mktemp("session-downloads") / "cache")
    for key in ("ENVBUILD_STORE", "ENVBUILD_RUNLOG", "ENVBUILD_INDEX_URL"):
        os.environ.pop(key, None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _own_download_cache(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own download cache, made by the first build that needs it: tests count
    downloads, corrupt cached files and build offline into new stores, each from nothing.
    (The session's fixtures, set up before this, share the session's.)"""
    cache = tmp_path_factory.mktemp("downloads") / "cache"
    monkeypatch.setenv("ENVBUILD_CACHE", str(cache))


@pytest.fixture(scope="session")
def index(tmp_path_factory: pytest.TempPathFactory) -> LocalIndex:
    return build_index(tmp_path_factory.mktemp("index"))


def write_recipe(directory: Path, index: LocalIndex, deps: list[str] | None = None,
                 name: str = "demo", extra: str = "") -> Path:
    """A recipe against the local index; `extra` is appended TOML (tables)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    dep_list = ", ".join(f'"{d}"' for d in (deps or DEMO_DEPS))
    path.write_text(f'name = "{name}"\nrequires-python = ">=3.9"\n'
                    f"dependencies = [{dep_list}]\n\n"
                    f'[index]\nurl = "{index.simple_url}"\n\n{extra}')
    return path


@pytest.fixture(scope="session")
def tools_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the tests that lock for another Python: its `tools/` venvs (pip-tools
    for each target interpreter, from PyPI) are built once per session."""
    return tmp_path_factory.mktemp("tools-store")


def hostile_pip_env(tmp: Path) -> dict[str, str]:
    """This process's environment plus ambient pip configuration that would break any pip
    or pip-compile that read it (no index, a bogus one, an unsatisfiable constraint)."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "constraints.txt").write_text("pip-tools==0.0.1\nalpha==0.1\n")
    (tmp / "pip.conf").write_text("[global]\nno-index = true\n")
    env = dict(os.environ)
    env.update({"PIP_INDEX_URL": "http://127.0.0.1:9/bogus/simple", "PIP_NO_INDEX": "1",
                "PIP_CONSTRAINT": str(tmp / "constraints.txt"),
                "PIP_CONFIG_FILE": str(tmp / "pip.conf"), "PYTHONPATH": str(tmp)})
    return env


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def cli(*args: str | Path) -> Result:
    """envbuild in-process, through typer."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


def ignore_sigchld() -> None:
    """A `preexec_fn`: the child starts as under a parent that ignores SIGCHLD (exec passes
    that on)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)


def envbuild(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout: float = 600, preexec_fn: Callable[[], None] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """envbuild as a real subprocess, the way CI and job scripts call it (`preexec_fn`: as
    a parent that set up its child so would, e.g. `ignore_sigchld`)."""
    return subprocess.run([sys.executable, "-m", "envbuild", *map(str, args)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


@dataclass(frozen=True)
class Built:
    recipe: Path
    store: Path
    env: Path
    digest: str


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex) -> Built:
    """The demo recipe locked and built once per session. Never modify it: copy it."""
    work = tmp_path_factory.mktemp("built")
    recipe = write_recipe(work, index, extra='[environment]\nset = { OMP_NUM_THREADS = "1" }\n')
    assert cli("lock", recipe).exit_code == 0
    res = cli("build", recipe, "--store", work / "store", "--json")
    assert res.exit_code == 0, res.stderr
    import json

    info = json.loads(res.stdout)
    return Built(recipe, work / "store", Path(info["path"]), info["manifest_digest"])


@pytest.fixture(scope="session")
def second(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex, built: Built) -> Path:
    """Another version of the demo env (fewer packages), in the same store: the same name,
    another key. Never modify it."""
    work = tmp_path_factory.mktemp("second")
    recipe = write_recipe(work, index, deps=["alpha", "delta"])
    assert cli("lock", recipe).exit_code == 0
    res = cli("build", recipe, "--store", built.store)
    assert res.exit_code == 0, res.stderr
    return Path(res.stdout.strip().splitlines()[-1])


def copy_env(src: Path, dst: Path) -> Path:
    """A copy of a built env at another path, with its read-only modes kept."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def make_writable(path: Path) -> None:
    from envbuild.fsutil import make_writable as mw

    mw(path)
