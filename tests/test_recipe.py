"""Recipe validation: every problem named with file, key and line, exit 2, nothing written;
and what a valid recipe parses to."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from conftest import cli
from packaging.specifiers import SpecifierSet
from pkgindex import LocalIndex

from envbuild.errors import RecipeError
from envbuild.recipe import ALWAYS_UNSET, PYPI_SIMPLE, load_recipe, meaning_digest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ALWAYS = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONPYCACHEPREFIX",
          "PYTHONPLATLIBDIR"}


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative path -> bytes): a change anywhere shows."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def valid_text(index: LocalIndex) -> str:
    """A recipe that locks fine against the local index: the base each bad case breaks."""
    return (f'name = "demo"\n'                              # line 1
            f'requires-python = ">=3.9"\n'                  # line 2
            f'dependencies = ["alpha", "beta"]\n'           # line 3
            f'\n'                                           # line 4
            f'[index]\n'                                    # line 5
            f'url = "{index.simple_url}"\n'                 # line 6
            f'\n'                                           # line 7
            f'[environment]\n'                              # line 8
            f'set = {{ OMP_NUM_THREADS = "1" }}\n'          # line 9
            f'require = ["HOME"]\n'                         # line 10
            f'\n'                                           # line 11
            f'[launch]\n'                                   # line 12
            f'root = "warn"\n')                             # line 13


def replace_line(text: str, number: int, new: str) -> str:
    lines = text.splitlines()
    lines[number - 1] = new
    return "\n".join(lines) + "\n"


# (id, line number to replace, replacement, words the message must contain)
BAD_CASES = [
    ("unknown-top-level-key", 4, "bogus = 1", ["bogus", "line 4", "unknown key"]),
    ("unknown-key-in-table", 7, 'mirror = "https://example.invalid/simple"',
     ["index.mirror", "line 7", "unknown key"]),
    ("unknown-key-in-launch", 13, "rooot = \"warn\"", ["launch.rooot", "line 13"]),
    ("bad-name", 1, 'name = "Bad Name"', ["name", "line 1", "Bad Name"]),
    ("bad-name-uppercase", 1, 'name = "Demo"', ["name", "line 1", "Demo"]),
    ("bad-requires-python", 2, 'requires-python = ">=3.x"',
     ["requires-python", "line 2", ">=3.x"]),
    ("requires-python-not-a-string", 2, "requires-python = 3.11",
     ["requires-python", "line 2"]),
    ("bad-requirement", 3, 'dependencies = ["alpha", "beta >>> 1"]',
     ["dependencies", "line 3", "beta >>> 1"]),
    ("dependencies-not-a-list", 3, 'dependencies = "alpha"', ["dependencies", "line 3"]),
    ("dependencies-empty", 3, "dependencies = []", ["dependencies", "line 3"]),
    ("bad-launch-root", 13, 'root = "maybe"', ["launch.root", "line 13", "maybe"]),
    ("bad-env-var-name-in-set", 9, 'set = { "OMP-THREADS" = "1" }',
     ["environment.set", "line 9", "OMP-THREADS"]),
    ("env-set-value-not-string", 9, "set = { OMP_NUM_THREADS = 1 }",
     ["environment.set", "line 9"]),
    ("bad-index-url", 6, 'url = "ftp://example.invalid/simple"',
     ["index.url", "line 6", "ftp://"]),
    ("bad-lock-resolver", 13, 'root = "warn"\n\n[lock]\nresolver = "poetry"',
     ["lock.resolver", "line 16", "poetry", '"pip-tools" or "uv"']),
    ("unknown-key-in-lock", 13, 'root = "warn"\n[lock]\nresolve = "uv"',
     ["lock.resolve", "line 15", "unknown key"]),
    ("lock-not-a-table", 4, 'lock = "uv"', ["lock", "line 4", "expected a table"]),
]


def assert_refused(recipe: Path, words: list[str]) -> str:
    """`envbuild lock` refuses with exit 2, naming the file and `words`, writing nothing."""
    before = snapshot(recipe.parent)
    res = cli("lock", recipe)
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    assert str(recipe) in res.stderr, res.stderr
    for word in words:
        assert word in res.stderr, (word, res.stderr)
    assert not recipe.with_suffix(".lock").exists()
    assert snapshot(recipe.parent) == before
    return res.stderr


@pytest.mark.parametrize("line,new,words", [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_bad_recipe_is_refused_with_file_key_and_line(
        tmp_path: Path, index: LocalIndex, line: int, new: str, words: list[str]) -> None:
    recipe = tmp_path / "demo.toml"
    recipe.write_text(replace_line(valid_text(index), line, new))
    assert_refused(recipe, words)
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert len(info.value.issues) == 1, info.value.issues


def test_valid_base_recipe_locks(tmp_path: Path, index: LocalIndex) -> None:
    """The control for the cases above: unbroken, the same recipe locks."""
    recipe = tmp_path / "demo.toml"
    recipe.write_text(valid_text(index))
    res = cli("lock", recipe)
    assert res.exit_code == 0, res.stderr
    assert recipe.with_suffix(".lock").is_file()


def test_malformed_toml(tmp_path: Path, index: LocalIndex) -> None:
    recipe = tmp_path / "demo.toml"
    recipe.write_text(replace_line(valid_text(index), 3, 'dependencies = ["alpha", beta]'))
    stderr = assert_refused(recipe, ["TOML", "line 3"])
    assert "Traceback" not in stderr
    with pytest.raises(RecipeError):
        load_recipe(recipe)


def test_malformed_toml_unterminated(tmp_path: Path) -> None:
    recipe = tmp_path / "demo.toml"
    recipe.write_text('name = "demo"\ndependencies = ["alpha"\n')
    assert_refused(recipe, ["TOML"])


def test_refusal_keeps_an_existing_lock_untouched(tmp_path: Path, index: LocalIndex) -> None:
    recipe = tmp_path / "demo.toml"
    recipe.write_text(valid_text(index))
    assert cli("lock", recipe).exit_code == 0
    lock_before = recipe.with_suffix(".lock").read_bytes()
    recipe.write_text(replace_line(valid_text(index), 4, "bogus = 1"))
    before = snapshot(tmp_path)
    res = cli("lock", recipe)
    assert res.exit_code == 2
    assert recipe.with_suffix(".lock").read_bytes() == lock_before
    assert snapshot(tmp_path) == before
    # --check on a bad recipe is bad input too, not "stale"
    assert cli("lock", "--check", recipe).exit_code == 2


def test_several_problems_are_all_listed(tmp_path: Path, index: LocalIndex) -> None:
    text = valid_text(index)
    text = replace_line(text, 1, 'name = "Bad Name"')
    text = replace_line(text, 2, 'requires-python = "python3"')
    text = replace_line(text, 3, 'dependencies = ["alpha", "beta >>> 1"]')
    text = replace_line(text, 4, "bogus = true")
    text = replace_line(text, 7, 'mirror = "x"')
    text = replace_line(text, 13, 'root = "maybe"')
    recipe = tmp_path / "demo.toml"
    recipe.write_text(text)
    stderr = assert_refused(recipe, ["name", "requires-python", "beta >>> 1", "bogus",
                                     "index.mirror", "launch.root"])
    for expected in ("line 1", "line 2", "line 3", "line 4", "line 7", "line 13"):
        assert expected in stderr, (expected, stderr)
    problem_lines = [ln for ln in stderr.splitlines() if "line " in ln]
    assert len(problem_lines) == 6, stderr
    assert all(str(recipe) in ln for ln in problem_lines), stderr
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert len(info.value.issues) == 6, info.value.issues


def test_bad_variable_name_in_require_names_that_key(tmp_path: Path, index: LocalIndex) -> None:
    """A bad name in `require` must point at `environment.require` and its line, not `set`."""
    recipe = tmp_path / "demo.toml"
    recipe.write_text(replace_line(valid_text(index), 10, 'require = ["NOT-A-NAME"]'))
    stderr = assert_refused(recipe, ["NOT-A-NAME"])
    assert "environment.require" in stderr, stderr
    assert "line 10" in stderr, stderr


def test_bad_variable_name_in_unset_names_that_key(tmp_path: Path, index: LocalIndex) -> None:
    recipe = tmp_path / "demo.toml"
    recipe.write_text(replace_line(valid_text(index), 11, 'unset = ["1BAD"]'))
    stderr = assert_refused(recipe, ["1BAD"])
    assert "environment.unset" in stderr, stderr
    assert "line 11" in stderr, stderr


def test_unknown_dotted_key_names_its_line(tmp_path: Path, index: LocalIndex) -> None:
    """TOML's dotted-key form of a table (`launch.bogus = 1`) still gets a line number."""
    recipe = tmp_path / "demo.toml"
    recipe.write_text(replace_line(valid_text(index), 4, "launch.bogus = true")
                      .replace("[launch]\nroot = \"warn\"\n", ""))
    assert_refused(recipe, ["launch.bogus", "line 4"])


def test_missing_recipe_file(tmp_path: Path) -> None:
    res = cli("lock", tmp_path / "nope.toml")
    assert res.exit_code == 2
    assert "nope.toml" in res.stderr
    assert list(tmp_path.iterdir()) == []


# --- valid recipes ----------------------------------------------------------------------


FULL = """\
name = "analysis.v2_x"
requires-python = ">=3.11,<3.12"
dependencies = ["numpy>=1.26", "requests[socks]>=2.31", 'tomli>=2; python_version < "3.11"']

[index]
url = "https://mirror.example/simple"
find-links = ["wheels/", "../shared/wheels"]

[environment]
set = { OMP_NUM_THREADS = "1", LANG = "C.UTF-8" }
require = ["SCRATCH"]
unset = ["LD_PRELOAD"]

[launch]
hook = true
root = "refuse"

[image]
base = "localhost/python:3.11"
user = "app"
entrypoint = ["python", "-m", "analysis"]

[lock]
resolver = "uv"
"""


def test_valid_recipe_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "project"
    sub.mkdir()
    recipe_path = sub / "analysis.toml"
    recipe_path.write_text(FULL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # find-links are relative to the recipe, not the cwd
    monkeypatch.setenv("ENVBUILD_INDEX_URL", "https://ignored.example/simple")
    r = load_recipe(Path("../project/analysis.toml"))
    assert r.path == recipe_path.resolve()
    assert r.lock_path == recipe_path.resolve().with_name("analysis.lock")
    assert r.bytes_digest == "sha256:" + hashlib.sha256(FULL.encode()).hexdigest()
    assert r.digest == meaning_digest(tomllib.loads(FULL))
    assert r.name == "analysis.v2_x"
    assert SpecifierSet(r.requires_python) == SpecifierSet(">=3.11,<3.12")
    assert r.dependencies == ("numpy>=1.26", "requests[socks]>=2.31",
                              'tomli>=2; python_version < "3.11"')
    assert r.index_url == "https://mirror.example/simple"  # the recipe beats the variable
    assert r.find_links == ((sub / "wheels").resolve(), (tmp_path / "shared/wheels").resolve())
    assert all(p.is_absolute() for p in r.find_links)
    assert r.environment.set == {"OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    assert tuple(r.environment.require) == ("SCRATCH",)
    assert set(r.environment.unset) == ALWAYS | {"LD_PRELOAD"}
    assert r.launch_hook is True
    assert r.launch_root == "refuse"
    assert r.image == {"base": "localhost/python:3.11", "user": "app",
                       "entrypoint": ["python", "-m", "analysis"]}
    assert r.resolver == "uv"


def test_minimal_recipe_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mini.toml"
    path.write_text('name = "mini"\ndependencies = ["alpha"]\n')
    r = load_recipe(path)
    assert r.index_url == PYPI_SIMPLE == "https://pypi.org/simple"
    assert r.find_links == ()
    assert r.requires_python == ""
    assert r.environment.set == {}
    assert tuple(r.environment.require) == ()
    assert set(r.environment.unset) == ALWAYS
    assert r.launch_hook is False
    assert r.launch_root == "warn"
    assert r.resolver == "pip-tools"


def test_index_url_defaults_to_envbuild_index_url(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mini.toml"
    path.write_text('name = "mini"\ndependencies = ["alpha"]\n\n[index]\nfind-links = ["w"]\n')
    monkeypatch.setenv("ENVBUILD_INDEX_URL", "https://mirror.example/pypi/simple")
    assert load_recipe(path).index_url == "https://mirror.example/pypi/simple"
    monkeypatch.delenv("ENVBUILD_INDEX_URL")
    assert load_recipe(path).index_url == PYPI_SIMPLE


def test_always_unset_even_when_recipe_lists_others(tmp_path: Path) -> None:
    path = tmp_path / "u.toml"
    path.write_text('name = "u"\ndependencies = ["alpha"]\n\n[environment]\n'
                    'unset = ["FOO", "PYTHONPATH"]\n')
    unset = load_recipe(path).environment.unset
    assert set(unset) == ALWAYS | {"FOO"}
    assert len(unset) == len(set(unset))  # listed once each
    assert set(ALWAYS_UNSET) == ALWAYS
    contract = load_recipe(path).environment.to_json()
    assert set(contract["unset"]) >= ALWAYS


def test_digest_is_of_the_meaning_not_the_bytes(tmp_path: Path) -> None:
    """Comments, whitespace, quoting and key order never stale a lock; values do."""
    plain = tmp_path / "a.toml"
    plain.write_text('name = "demo"\nrequires-python = ">=3.9"\ndependencies = ["alpha"]\n'
                     '[environment]\nset = { A = "1", B = "2" }\n')
    noisy = tmp_path / "b.toml"
    noisy.write_text("# a comment\n\ndependencies = [ 'alpha' ,]   # trailing\n"
                     "'name' = \"demo\"\nrequires-python = '>=3.9'\n\n"
                     "[environment]\nset.B = '2'\nset.A = '1'\n")
    assert load_recipe(plain).digest == load_recipe(noisy).digest
    assert load_recipe(plain).bytes_digest != load_recipe(noisy).bytes_digest
    changed = tmp_path / "c.toml"
    changed.write_text(plain.read_text().replace('B = "2"', 'B = "3"'))
    assert load_recipe(changed).digest != load_recipe(plain).digest


def test_digest_is_taken_before_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    path = tmp_path / "a.toml"
    path.write_text('name = "demo"\nrequires-python = ">=3.9"\ndependencies = ["alpha"]\n')
    before = load_recipe(path).digest
    monkeypatch.setenv("ENVBUILD_INDEX_URL", "https://elsewhere.example/simple")
    assert load_recipe(path).digest == before


def test_sound_dependencies_are_parsed_once_per_host(tmp_path: Path) -> None:
    """packaging's parser reads a recipe's dependencies the first time; a later load of the
    same dependencies (another process, the same host cache) does not import it; an
    unsound dependency is refused every time, never remembered."""
    import os
    import subprocess

    deps = '"requests[socks]>=2.31", "tomli>=2; python_version < \\"3.11\\"", "httpx"'
    good = tmp_path / "good.toml"
    good.write_text(f'name = "good"\nrequires-python = ">=3.9"\ndependencies = [{deps}]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nrequires-python = ">=3.9"\ndependencies = ["requests>>2"]\n')
    code = ("import sys\nfrom pathlib import Path\nfrom envbuild.errors import RecipeError\n"
            "from envbuild.recipe import load_recipe\n"
            "try:\n    load_recipe(Path(sys.argv[1]))\n    print('loaded', end=' ')\n"
            "except RecipeError as exc:\n    print('refused', 'requests>>2' in str(exc), end=' ')\n"
            "print('packaging.requirements' in sys.modules)\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def load(recipe: Path) -> str:
        return subprocess.run([sys.executable, "-c", code, str(recipe)], env=env, check=True,
                              capture_output=True, text=True).stdout

    assert load(good) == "loaded True\n"
    assert load(good) == "loaded False\n"
    assert load(bad) == "refused True True\n"
    assert load(bad) == "refused True True\n"


def test_requires_python_is_read_by_packaging_once_per_host(tmp_path: Path) -> None:
    """packaging's specifiers read a recipe's requires-python, and decide whether an
    interpreter matches, the first time; later (another process, the same host cache) the
    same answers come without importing them. A spec that is not PEP 440, or a Python
    outside it, is refused every time, as packaging refuses it."""
    import os
    import subprocess

    code = ("import sys\nfrom pathlib import Path\nfrom envbuild.errors import EnvbuildError\n"
            "from envbuild.recipe import load_recipe\n"
            "try:\n    load_recipe(Path(sys.argv[1])).check_python(sys.argv[2], 'it', 'fix')\n"
            "    print('ok', end=' ')\n"
            "except EnvbuildError as exc:\n    print('refused', end=' ')\n"
            "print('packaging.specifiers' in sys.modules)\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def check(spec: str, version: str) -> str:
        recipe = tmp_path / "r.toml"
        recipe.write_text(f'name = "r"\nrequires-python = "{spec}"\ndependencies = ["a"]\n')
        return subprocess.run([sys.executable, "-c", code, str(recipe), version], env=env,
                              check=True, capture_output=True, text=True).stdout

    assert check(">=3.9, <3.14", "3.11.7") == "ok True\n"
    assert check(">=3.9, <3.14", "3.11.7") == "ok False\n"
    assert check(">=3.9, <3.14", "3.14.0") == "refused True\n"   # the spec read: sound
    assert check(">=3.9, <3.14", "3.14.0") == "refused True\n"
    assert check(">=3.9, <3.14", "3.14.0rc1") == "refused True\n"
    assert check(">=3.12", "3.13.0rc1") == "ok True\n"   # a prerelease may match
    assert check(">=3.x", "3.11.7") == "refused True\n"
    assert check(">=3.x", "3.11.7") == "refused True\n"
