"""The opt-in interpreter-start hook, the root policy, and who may own an env."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Built, cli, copy_env, envbuild, make_writable, write_recipe
from pkgindex import LocalIndex

HOOK = "000-envbuild-hook.pth"


def _build(tmp_path: Path, index: LocalIndex, name: str, extra: str) -> Path:
    recipe = write_recipe(tmp_path / "recipe", index, deps=["gamma"], name=name, extra=extra)
    assert cli("lock", recipe).exit_code == 0
    res = cli("build", recipe, "--store", tmp_path / "store", "--json")
    assert res.exit_code == 0, res.stderr
    return Path(json.loads(res.stdout)["path"])


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex) -> Path:
    return _build(tmp_path_factory.mktemp("hooked"), index, "hooked",
                  "[launch]\nhook = true\n")


def _site(env: Path) -> Path:
    return next((env / "lib").glob("python3.*/site-packages"))


def test_hook_lets_a_matching_env_start_and_leaves_no_trace(hooked: Path) -> None:
    assert (_site(hooked) / HOOK).exists()
    proc = subprocess.run([hooked / "bin" / "python", "-c",
                           "import sys, gamma; print('envbuild' in sys.modules, "
                           "any('envbuild-launch' in p for p in sys.path))"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_hook_checks_once_per_interpreter_start(hooked: Path) -> None:
    """`site` processes a venv's site-packages twice on some Pythons (3.11 does): the check,
    and its imports, must still run once."""
    proc = subprocess.run([hooked / "bin" / "python", "-X", "importtime", "-c", "pass"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    imports = [ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines()]
    assert imports.count("envbuild.verify") == 1, proc.stderr


def test_hook_refuses_a_tampered_env_at_interpreter_start(hooked: Path, tmp_path: Path) -> None:
    env = copy_env(hooked, tmp_path / "moved")
    make_writable(env)
    os.chmod(env, 0o755)
    (_site(env) / "planted-1.0.dist-info").mkdir()
    for path in (_site(env), _site(env) / "planted-1.0.dist-info", env):
        os.chmod(path, 0o755)
    marker = tmp_path / "ran"
    proc = subprocess.run([env / "bin" / "python", "-c",
                           f"open({str(marker)!r}, 'w').write('x')"],
                          capture_output=True, text=True)
    assert proc.returncode == 125
    assert not marker.exists()
    assert "envbuild-hook: refused: added: lib/python3." in proc.stderr
    assert "planted-1.0.dist-info" in proc.stderr
    # What the hook cannot catch, as documented: python -S skips every .pth file.
    proc = subprocess.run([env / "bin" / "python", "-S", "-c", "print('started')"],
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "started"


def test_env_without_hook_has_no_pth(built: Built) -> None:
    assert not (_site(built.env) / HOOK).exists()


@pytest.mark.slow
def test_root_refuse_policy(tmp_path: Path, index: LocalIndex) -> None:
    assert os.geteuid() == 0, "the test machine runs as root, as CI containers often do"
    env = _build(tmp_path, index, "noroot", '[launch]\nroot = "refuse"\n')
    marker = tmp_path / "ran"
    proc = envbuild("run", env, "--", "touch", marker)
    assert proc.returncode == 125
    assert "expected an unprivileged user" in proc.stderr
    guard = subprocess.run([env / "bin" / "envbuild-guard", "touch", marker],
                           capture_output=True, text=True)
    assert guard.returncode == 125
    assert "root" in guard.stderr
    assert not marker.exists()


def test_root_warns_once(built: Built, tmp_path: Path) -> None:
    proc = envbuild("run", built.env, "--", "true")
    assert proc.returncode == 0
    assert proc.stderr.count("warning: running as root") == 1


@pytest.mark.slow
def test_root_allow_policy_and_root_ok_are_silent(built: Built, tmp_path: Path,
                                                   index: LocalIndex) -> None:
    """`[launch] root = "allow"` silences the warning; so does ENVBUILD_ROOT_OK=1 (an image
    that runs as root by design), which never overrides "refuse"."""
    env = _build(tmp_path / "allow", index, "rootok", '[launch]\nroot = "allow"\n')
    launches: list[list[str | Path]] = [["run", env, "--", "true"], ["verify", env]]
    for launch in launches:
        proc = envbuild(*launch)
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    guard = subprocess.run([env / "bin" / "envbuild-guard", "true"], capture_output=True,
                           text=True)
    assert (guard.returncode, guard.stderr) == (0, "")
    quiet = {**os.environ, "ENVBUILD_ROOT_OK": "1"}
    proc = envbuild("run", built.env, "--", "true", env=quiet)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    strict = _build(tmp_path / "refuse", index, "noroot", '[launch]\nroot = "refuse"\n')
    proc = envbuild("run", strict, "--", "true", env=quiet)
    assert proc.returncode == 125 and "expected an unprivileged user" in proc.stderr


def test_staging_root_owner_is_trusted(built: Built, tmp_path: Path) -> None:
    """An env under ROOT/.envs/ may belong to ROOT's owner; any other owner is refused."""
    root = tmp_path / "stage"
    env = copy_env(built.env, root / ".envs" / built.env.name)
    os.lchown(env, 4321, 4321)
    os.chown(root, 4321, 4321)
    assert cli("verify", env).exit_code == 0
    os.chown(root, 0, 0)
    res = cli("verify", env)
    assert res.exit_code == 1
    assert "permissions: .: expected owner root, you or the staging root's owner, found uid " \
           "4321" in res.stdout
    elsewhere = tmp_path / "plain"
    shutil.copytree(env, elsewhere, symlinks=True)
    os.lchown(elsewhere, 4321, 4321)
    assert cli("verify", elsewhere).exit_code == 1
