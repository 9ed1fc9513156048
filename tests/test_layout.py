"""layout: the one module that knows where things live."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
import pytest
from conftest import Built

from envbuild import layout
from envbuild.store import Store


def test_user_cache_root_is_platformdirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                         ) -> None:
    """Computed by hand on the launch path (platformdirs is not there); the same answer."""
    for xdg in (str(tmp_path / "xdg"), None, ""):
        if xdg is None:
            monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert layout.user_cache_root() == platformdirs.user_cache_dir("envbuild")


def test_store_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENVBUILD_STORE", str(tmp_path / "from-env"))
    assert layout.store_root(tmp_path / "explicit") == str(tmp_path / "explicit")
    assert layout.store_root() == str(tmp_path / "from-env")
    monkeypatch.delenv("ENVBUILD_STORE")
    assert layout.store_root() == platformdirs.user_cache_dir("envbuild")
    monkeypatch.chdir(tmp_path)
    assert layout.store_root("rel/../store") == str(tmp_path / "store")
    assert Store.path_for(None) == Path(platformdirs.user_cache_dir("envbuild"))


def test_store_paths() -> None:
    s = layout.StoreLayout("/s")
    key = "sha256:" + "ab" * 32
    assert s.wheel_dir(key) == "/s/wheels/" + "ab" * 32
    assert s.built_dir(key, "cp311", "linux_x86_64") == f"/s/built/{'ab' * 32}-cp311-linux_x86_64"
    assert s.pyc_dir(key, "cp311", "3.11.7") == f"/s/pycs/{'ab' * 32}-cp311-3.11.7"
    assert s.env_dir("demo", key) == "/s/envs/demo-" + "ab" * 8
    assert s.build_lock("demo", key) == "/s/locks/demo-" + "ab" * 8 + ".lock"
    assert s.runlog("node1") == "/s/runs/node1.jsonl"
    assert os.path.basename(s.env_dir("demo", key)).startswith("demo-")
    assert s.tmp_env_prefix("demo", key) == ".tmp-demo-" + "ab" * 8 + "-"


def test_the_store_an_env_was_built_in(built: Built, tmp_path: Path) -> None:
    assert layout.store_of_env(str(built.env)) == str(built.store)
    # `envs/` beside `runs/` alone is a common project layout, not a store
    (tmp_path / "envs" / "x").mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    assert layout.store_of_env(str(tmp_path / "envs" / "x")) is None


def test_staging_paths() -> None:
    s = layout.StagingLayout("/shared")
    key = "sha256:" + "cd" * 32
    version = s.version_dir("demo", key)
    assert version == "/shared/.envs/demo-" + "cd" * 8
    assert s.archive("demo", key) == version + ".tar"
    assert s.pointer("demo") == "/shared/demo"
    assert layout.staging_root_of(version) == "/shared"
    assert layout.staging_root_of("/somewhere/envs/demo-x") is None
