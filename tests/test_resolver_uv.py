"""`envbuild lock --resolver uv` and `[lock] resolver = "uv"`: real uv against the local
index, the same lock as pip-tools writes, pins kept and upgraded, ambient uv configuration
ignored; the recipes/ directory locked with uv from PyPI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest
from conftest import DEMO_DEPS, ROOT, cli, envbuild, write_recipe
from pkgindex import LocalIndex, clean_pip_env
from test_interpreter import pyenv_python
from test_lock import _rogue_index, header, lock, pins, requirement_lines

from envbuild.resolve_uv import MISSING

UV_HEADER = f"uv {dist_version('uv')}"
RECIPES = ROOT / "recipes"


def body(text: str) -> str:
    """The lock without its header (everything after the `#` line that ends it)."""
    return text.split("\n#\n", 1)[1]


def without_resolver(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("# resolver: ")]


def recipe_pair(tmp_path: Path, index: LocalIndex, deps: list[str],
                extra: str = "") -> tuple[Path, Path]:
    """The same recipe twice, in two directories: one to lock with each resolver."""
    return (write_recipe(tmp_path / "pip-tools", index, deps=deps, extra=extra),
            write_recipe(tmp_path / "uv", index, deps=deps, extra=extra))


# --- the same lock as pip-tools ------------------------------------------------------------



def built_and_verified(recipe: Path, store: Path) -> Path:
    """The env of `recipe`'s lock, built into `store` and verified at the full level."""
    res = envbuild("build", recipe, "--store", store, "--json")
    assert res.returncode == 0, res.stderr
    env = Path(json.loads(res.stdout.strip().splitlines()[-1])["path"])
    res = envbuild("verify", env, "--level", "full")
    assert res.returncode == 0, res.stdout + res.stderr
    return env

def test_uv_lock_is_the_pip_tools_lock(tmp_path: Path, index: LocalIndex) -> None:
    by_pip_tools, by_uv = recipe_pair(tmp_path, index, DEMO_DEPS)
    expected = lock(by_pip_tools)
    text = lock(by_uv, "--resolver", "uv")
    assert header(text)["resolver"] == UV_HEADER
    assert header(expected)["resolver"] == f"pip-tools {dist_version('pip-tools')}"
    # requirement lines, hashes and annotations alike: only the resolver line differs
    assert without_resolver(text) == without_resolver(expected)
    assert body(text) == body(expected)
    assert pins(text) == {"alpha": "2.0", "beta": "1.0", "gamma": "1.1", "delta": "1.0",
                          "pthpkg": "1.0", "sdistonly": "1.0"}
    assert "# via -r recipe.in" in text     # the control: annotations are there to compare


def test_uv_lock_with_find_links_is_the_pip_tools_lock(tmp_path: Path,
                                                       index: LocalIndex) -> None:
    """find-links beside the index (the same files twice): the same hashes, once each."""
    by_pip_tools, by_uv = recipe_pair(tmp_path, index, ["beta[fast]", "sdistonly"])
    for recipe in (by_pip_tools, by_uv):
        recipe.write_text(recipe.read_text() + f'find-links = ["{index.find_links}"]\n')
    expected = lock(by_pip_tools)
    text = lock(by_uv, "--resolver", "uv")
    assert header(text)["find-links"] == str(index.find_links)
    assert without_resolver(text) == without_resolver(expected)


# top-level markers, as pip-compile keeps them: on the pin when they hold for the target
# (alpha), dropped with the requirement when they do not (delta), and on the pin even where
# another requirement pulls it in without one (gamma, below 3.10, through beta[fast])
MARKED = ["beta[fast]", "gamma; python_version < '3.10'",
          "alpha; sys_platform == 'linux' and python_version >= '3'", "delta; os_name == 'nt'",
          "pthpkg>=0.1; python_version >= '3.8'", "pthpkg; implementation_name == 'cpython'"]


def test_uv_lock_keeps_top_level_markers_as_pip_tools_does(tmp_path: Path,
                                                          index: LocalIndex) -> None:
    by_pip_tools, by_uv = recipe_pair(tmp_path, index, MARKED)
    expected = lock(by_pip_tools)
    text = lock(by_uv, "--resolver", "uv")
    assert without_resolver(text) == without_resolver(expected)
    assert "alpha==2.0 ; sys_platform == \"linux\" and python_version >= \"3\" \\\n" in text
    assert 'pthpkg==1.0 ; implementation_name == "cpython" \\\n' in text
    assert "gamma==1.1 \\\n" in text and "delta" not in pins(text)


@pytest.mark.slow
def test_uv_lock_builds_verifies_and_runs(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index)
    res = envbuild("lock", recipe, "--resolver", "uv")
    assert res.returncode == 0, res.stderr
    assert header(recipe.with_suffix(".lock").read_text())["resolver"] == UV_HEADER
    env = built_and_verified(recipe, tmp_path / "store")
    res = envbuild("run", env, "--", "python", "-c",
                   "import alpha, beta, gamma, sdistonly; "
                   "print(alpha.__version__, gamma.__version__, sdistonly.__version__)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["2.0", "1.1", "1.0"]
    res = envbuild("export", env, "--format", "requirements")
    assert res.returncode == 0, res.stderr
    assert "alpha==2.0" in res.stdout


def test_check_on_a_uv_lock(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    text = lock(recipe, "--resolver", "uv")
    assert cli("lock", "--check", recipe).exit_code == 0
    recipe.write_text(recipe.read_text().replace('"alpha"', '"alpha", "gamma"'))
    res = cli("lock", "--check", recipe)
    assert res.exit_code == 1
    assert "stale" in res.stderr
    assert recipe.with_suffix(".lock").read_text() == text      # --check writes nothing
    lock(recipe, "--resolver", "uv")
    assert cli("lock", "--check", recipe).exit_code == 0


# --- pins ---------------------------------------------------------------------------------


def test_uv_keeps_pins_until_upgrade(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha<2", "gamma<1.1"])
    assert pins(lock(recipe, "--resolver", "uv")) == {"alpha": "1.0", "gamma": "1.0"}
    write_recipe(tmp_path, index, deps=["alpha", "gamma"])
    assert pins(lock(recipe, "--resolver", "uv")) == {"alpha": "1.0", "gamma": "1.0"}
    assert pins(lock(recipe, "--resolver", "uv", "--upgrade-package", "alpha")) == {
        "alpha": "2.0", "gamma": "1.0"}
    assert pins(lock(recipe, "--resolver", "uv", "-P", "gamma")) == {
        "alpha": "2.0", "gamma": "1.1"}
    write_recipe(tmp_path, index, deps=["alpha<2", "gamma<1.1"])
    lock(recipe, "--resolver", "uv")
    write_recipe(tmp_path, index, deps=["alpha", "gamma"])
    assert pins(lock(recipe, "--resolver", "uv", "--upgrade")) == {"alpha": "2.0", "gamma": "1.1"}


def test_uv_keeps_the_pins_of_a_pip_tools_lock(tmp_path: Path, index: LocalIndex) -> None:
    """Switching resolvers is not an upgrade: uv starts from the lock pip-tools wrote."""
    recipe = write_recipe(tmp_path, index, deps=["alpha<2"])
    lock(recipe)
    write_recipe(tmp_path, index, deps=["alpha"])
    text = lock(recipe, "--resolver", "uv")
    assert pins(text) == {"alpha": "1.0"}
    assert header(text)["resolver"] == UV_HEADER


# --- choosing the resolver ----------------------------------------------------------------


def test_recipe_key_chooses_uv_and_the_cli_wins(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"], extra='[lock]\nresolver = "uv"\n')
    assert header(lock(recipe))["resolver"] == UV_HEADER
    assert header(lock(recipe, "--resolver", "pip-tools"))["resolver"].startswith("pip-tools ")
    plain = write_recipe(tmp_path / "plain", index, deps=["alpha"])
    assert header(lock(plain))["resolver"].startswith("pip-tools ")


@pytest.mark.parametrize("args,extra,words", [
    (["--resolver", "poetry"], "", ["--resolver", "poetry", "pip-tools, uv"]),
    ([], '[lock]\nresolver = "poetry"\n', ["lock.resolver", "line 9", "poetry"]),
], ids=["cli", "recipe"])
def test_bad_resolver_name_exits_2_and_writes_nothing(
        tmp_path: Path, index: LocalIndex, args: list[str], extra: str,
        words: list[str]) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"], extra=extra)
    res = cli("lock", recipe, *args)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    for word in words:
        assert word in res.stderr, (word, res.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.toml"]


def test_without_the_uv_package_exits_2_naming_the_extra(tmp_path: Path,
                                                         index: LocalIndex) -> None:
    """An envbuild installed without the `uv` extra: `import uv` fails as it does when the
    package is absent (a None entry in sys.modules is Python's own "not importable")."""
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    store = tmp_path / "store"
    code = ("import sys; sys.modules['uv'] = None; sys.argv[0] = 'envbuild'; "
            "from envbuild.__main__ import main; main()")
    res = subprocess_run([sys.executable, "-c", code, "lock", str(recipe), "--resolver", "uv",
                          "--store", str(store)])
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"envbuild: error: {MISSING}"
    assert MISSING == ("--resolver uv: expected the uv package, found none; "
                       "pip install 'envbuild[uv]'")
    assert not recipe.with_suffix(".lock").exists()
    assert not store.exists()
    # the control: the same command with uv importable locks
    res = subprocess_run([sys.executable, "-c", code.replace("sys.modules['uv'] = None; ", ""),
                          "lock", str(recipe), "--resolver", "uv", "--store", str(store)])
    assert res.returncode == 0, res.stderr
    assert recipe.with_suffix(".lock").exists()


def subprocess_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


# --- failures -----------------------------------------------------------------------------


def test_unsatisfiable_with_uv_keeps_the_old_lock(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    before = lock(recipe, "--resolver", "uv")
    recipe.write_text(recipe.read_text().replace('"alpha"', '"alpha>=9"'))
    res = cli("lock", recipe, "--resolver", "uv")
    assert res.exit_code == 2, "nothing on the index satisfies it: bad input"
    assert f"{recipe}: dependencies: cannot be satisfied" in res.stderr
    assert "alpha>=9" in res.stderr
    assert recipe.with_suffix(".lock").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.lock", "demo.toml"]


def test_unreachable_index_with_uv_exits_1(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha"])
    recipe.write_text(recipe.read_text().replace(index.simple_url,
                                                 "http://127.0.0.1:9/simple"))
    res = cli("lock", recipe, "--resolver", "uv")
    assert res.exit_code == 1, res.stderr
    assert "127.0.0.1:9" in res.stderr
    assert not recipe.with_suffix(".lock").exists()


# --- ambient uv configuration ---------------------------------------------------------------


def _hostile_uv(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """This process's environment plus uv settings (variables, a uv.toml in the cwd and in
    XDG config, a pyproject.toml) each of which, if read, changes or breaks the lock."""
    extra_links, extra_url = _rogue_index(tmp_path / "rogue-extra", "3.0")
    conf_links, conf_url = _rogue_index(tmp_path / "rogue-conf", "4.0")
    user_links, user_url = _rogue_index(tmp_path / "rogue-user", "5.0")
    find_links, _ = _rogue_index(tmp_path / "rogue-links", "6.0")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("alpha==1.0\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "uv.toml").write_text(
        f'[pip]\nextra-index-url = ["{conf_url}"]\nfind-links = ["{conf_links}"]\n'
        'index-strategy = "unsafe-best-match"\n')
    (cwd / "pyproject.toml").write_text(
        f'[project]\nname = "x"\nversion = "0"\n\n[tool.uv.pip]\nno-build = true\n'
        f'extra-index-url = ["{conf_url}"]\n')
    xdg = tmp_path / "xdg"
    (xdg / "uv").mkdir(parents=True)
    (xdg / "uv" / "uv.toml").write_text(
        f'[pip]\nextra-index-url = ["{user_url}"]\nfind-links = ["{user_links}"]\n'
        'no-build = true\n')
    env = dict(os.environ)
    env.update({
        "UV_INDEX_URL": "http://127.0.0.1:9/bogus/simple",
        "UV_DEFAULT_INDEX": "http://127.0.0.1:9/bogus/simple",
        "UV_EXTRA_INDEX_URL": extra_url,
        "UV_INDEX": extra_url,
        "UV_FIND_LINKS": str(find_links),
        "UV_CONSTRAINT": str(constraints),
        "UV_OVERRIDE": str(constraints),
        "UV_RESOLUTION": "lowest",
        "UV_NO_BUILD": "1",          # would make the sdist-only package unresolvable
        "UV_OFFLINE": "1",
        "UV_INDEX_STRATEGY": "unsafe-best-match",
        "UV_PYTHON": "/nonexistent/python",
        "UV_CONFIG_FILE": str(cwd / "uv.toml"),
        "UV_CACHE_DIR": str(tmp_path / "their-cache"),
        "XDG_CONFIG_HOME": str(xdg),
        "PIP_INDEX_URL": "http://127.0.0.1:9/bogus/simple",
        "PIP_CONSTRAINT": str(constraints),
    })
    return env, cwd


def test_ambient_uv_config_is_ignored(tmp_path: Path, index: LocalIndex) -> None:
    ambient, cwd = _hostile_uv(tmp_path)
    deps = ["beta[fast]", "sdistonly"]
    with_ambient = write_recipe(tmp_path / "ambient", index, deps=deps)
    res = envbuild("lock", with_ambient, "--resolver", "uv", env=ambient, cwd=cwd)
    assert res.returncode == 0, res.stderr
    clean = write_recipe(tmp_path / "clean", index, deps=deps)
    clean_env = {k: v for k, v in clean_pip_env().items() if not k.startswith("UV_")}
    res = envbuild("lock", clean, "--resolver", "uv", env=clean_env)
    assert res.returncode == 0, res.stderr

    text = with_ambient.with_suffix(".lock").read_text()
    assert text == clean.with_suffix(".lock").read_text()
    assert pins(text) == {"alpha": "2.0", "beta": "1.0", "gamma": "1.1", "sdistonly": "1.0"}
    for leaked in (str(tmp_path), "rogue", "127.0.0.1:9", "bogus", "constraints"):
        assert leaked not in text, leaked
    assert not (tmp_path / "their-cache").exists()
    # the control: uv run plainly reads them (and fails); without them, the same command works
    requirements = tmp_path / "recipe.in"
    requirements.write_text("\n".join(deps) + "\n")
    plain = [str(Path(sys.executable).parent / "uv"), "pip", "compile", "--quiet",
             "--no-header", "--python", sys.executable, "--index-url", index.simple_url,
             str(requirements)]
    control = subprocess.run(plain, env=ambient, cwd=cwd, capture_output=True, text=True,
                             timeout=300)
    assert control.returncode != 0, control.stdout
    assert "No solution found" in control.stderr, control.stderr
    clean_env["UV_CACHE_DIR"] = str(tmp_path / "control-cache")
    files_only = dict(clean_env, XDG_CONFIG_HOME=ambient["XDG_CONFIG_HOME"])
    control = subprocess.run(plain, env=files_only, cwd=cwd, capture_output=True, text=True,
                             timeout=300)
    assert "building from source is disabled" in control.stderr, control.stderr
    control = subprocess.run(plain, env=clean_env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert control.returncode == 0, control.stderr
    assert "alpha==2.0" in control.stdout


# --- another Python -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_uv_locks_for_another_python_as_pip_tools_does(tmp_path: Path, index: LocalIndex,
                                                        tools_store: Path) -> None:
    """Markers are the target's: gamma applies below 3.10 only. (pip-tools needs its tool
    venv for 3.9, from PyPI; uv resolves for the interpreter directly.)"""
    python = str(pyenv_python("3.9"))
    by_pip_tools, by_uv = recipe_pair(tmp_path, index, MARKED)
    expected = lock(by_pip_tools, "--python", python, "--store", str(tools_store))
    text = lock(by_uv, "--python", python, "--resolver", "uv", "--store", str(tools_store))
    assert header(text)["python"] == "3.9 (cpython)"
    assert "gamma" in pins(text)
    assert without_resolver(text) == without_resolver(expected)
    assert 'gamma==1.1 ; python_version < "3.10" \\\n' in text    # 3.11 has no marker


# --- the recipes users start from (PyPI) ------------------------------------------------------


@pytest.mark.network
@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES.glob("*.toml")))
def test_uv_relock_of_a_committed_recipe_keeps_its_pins(tmp_path: Path, name: str) -> None:
    """uv, starting from the committed pip-tools lock, keeps every pin: the same versions,
    each with (at least) the hashes pip-tools recorded, and the annotations pip-tools
    wrote."""
    shutil.copy(RECIPES / f"{name}.toml", tmp_path)
    committed = (RECIPES / f"{name}.lock").read_text()
    (tmp_path / f"{name}.lock").write_text(committed)
    text = lock(tmp_path / f"{name}.toml", "--resolver", "uv")
    assert header(text)["resolver"] == UV_HEADER
    assert cli("lock", "--check", tmp_path / f"{name}.toml").exit_code == 0
    assert pins(text) == pins(committed)
    ours = {line.split(" ")[0]: set(line.split(" --hash=")[1:]) for line in
            requirement_lines(text)}
    for line in requirement_lines(committed):
        assert set(line.split(" --hash=")[1:]) <= ours[line.split(" ")[0]], line
    assert [ln for ln in body(text).splitlines() if "#" in ln] == [
        ln for ln in body(committed).splitlines() if "#" in ln]


@pytest.mark.slow
@pytest.mark.network
def test_uv_lock_of_the_smallest_recipe_builds_and_verifies(tmp_path: Path) -> None:
    smallest = min(RECIPES.glob("*.toml"), key=lambda p: len(pins(p.with_suffix(".lock")
                                                                    .read_text())))
    recipe = Path(shutil.copy(smallest, tmp_path))
    res = envbuild("lock", recipe, "--resolver", "uv", "--upgrade")
    assert res.returncode == 0, res.stderr
    env = built_and_verified(recipe, tmp_path / "store")
    manifest = json.loads((env / "envbuild-manifest.json").read_bytes())
    assert {d["name"]: d["version"] for d in manifest["distributions"]} == pins(
        recipe.with_suffix(".lock").read_text())
