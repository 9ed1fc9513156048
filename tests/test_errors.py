"""One exception family, one mapping site: every envbuild error, raised through every entry
point (the typer CLI, the fast CLI's `verify` and `run`, the guard, the hook), comes out
with its documented exit code and its message under that entry point's name."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import ROOT

from envbuild import errors

# class -> (exit code of lock/build/verify, exit code of run/guard/hook): README's table
DOCUMENTED = {
    "EnvbuildError": (1, 125), "InputError": (2, 125), "UsageError": (2, 125),
    "RecipeError": (2, 125), "LockError": (2, 125), "CacheIntegrityError": (2, 125),
    "NotAnEnvError": (2, 125), "ManifestError": (2, 125), "BuildError": (1, 125),
    "ToolError": (1, 125), "IndexUnreachableError": (1, 125), "RegistryError": (1, 125),
    "Refused": (1, 125),
    "CommandNotExecutable": (1, 126), "CommandNotFound": (1, 127),
}

# builds one instance of a class in a subprocess too: the message is "boom <name>"
MAKE = """
from envbuild import errors
def make(name):
    cls = getattr(errors, name)
    if name == "RecipeError":
        return cls("recipe.toml", ["boom " + name])
    if name == "ToolError":
        return cls(["pip"], 3, "boom " + name)
    return cls("boom " + name)
"""
namespace: dict[str, object] = {}
exec(MAKE, namespace)


def _make(name: str) -> BaseException:
    exc = namespace["make"](name)  # type: ignore[operator]
    assert isinstance(exc, BaseException)
    return exc


def _family() -> set[str]:
    found, todo = set(), [errors.EnvbuildError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo += cls.__subclasses__()
    return found


def test_every_class_is_documented() -> None:
    assert _family() == set(DOCUMENTED)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_codes_of_each_class(name: str) -> None:
    exc = _make(name)
    assert (errors.exit_status(exc), errors.exit_status(exc, launch=True)) == DOCUMENTED[name]


def test_an_error_not_ours_is_never_1() -> None:
    exc = RuntimeError("boom")
    assert errors.exit_status(exc) == 2
    assert errors.exit_status(exc, launch=True) == 125
    assert errors.message_lines(exc, launch=True) == ["refused: internal error: "
                                                     "RuntimeError('boom')"]


# ---- through each entry point, each in a real process ------------------------------------

# `verify` and `launch` are envbuild's own functions: replaced here by ones that raise
ENTRY = {
    "cli": ("from typer.testing import CliRunner\n"
            "import envbuild.build as b, envbuild.cli as c\n"
            "def boom(*a, **k): raise make(NAME)\n"
            "b.build = boom\n"
            "r = CliRunner().invoke(c.app, ['build', 'x.toml'])\n"
            "sys.stderr.write(r.stderr); sys.exit(r.exit_code)\n", "envbuild: error: "),
    "verify": ("import envbuild.launch as L\n"
               "def boom(*a, **k): raise make(NAME)\n"
               "L.verify = boom\n"
               "import envbuild.fastcli as f\n"
               "sys.exit(f.verify_main(['/env']))\n", "envbuild verify: error: "),
    "run": ("import envbuild.launch as L\n"
            "def boom(*a, **k): raise make(NAME)\n"
            "L.verify = boom\n"
            "import envbuild.fastcli as f\n"
            "sys.exit(f.run_main(['/env', '--', 'true']))\n", "envbuild run: refused: "),
    "guard": ("import envbuild.launch as L\n"
              "def boom(*a, **k): raise make(NAME)\n"
              "L.launch = boom\n"
              "sys.argv = ['-c', ENV + '/bin', '--', 'true']\n"
              "L.guard_main()\n", "envbuild-guard: refused: "),
    "hook": ("import envbuild.launch as L\n"
             "def boom(*a, **k): raise make(NAME)\n"
             "L.verify = boom\n"
             "L.hook_check('/env')\n", "envbuild-hook: refused: "),
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(ENTRY))
def test_each_error_through_each_entry_point(entry: str, built_env_path: str) -> None:
    code, prefix = ENTRY[entry]
    launch = entry in ("run", "guard", "hook")
    for name, codes in sorted(DOCUMENTED.items()):
        script = (f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{MAKE}\n"
                  f"NAME = {name!r}\nENV = {built_env_path!r}\n{code}")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60)
        expected = codes[1] if launch else codes[0]
        assert proc.returncode == expected, (name, proc.stderr)
        if launch and name in ("CommandNotExecutable", "CommandNotFound"):
            want = prefix.replace("refused: ", "") + f"boom {name}"
        elif name == "RecipeError":
            want = prefix + f"recipe.toml: boom {name}"
        elif name == "ToolError":
            want = prefix + "pip exited with 3:"
        else:
            want = prefix + f"boom {name}"
        assert want in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, (name, proc.stderr)


@pytest.fixture(scope="module")
def built_env_path(built: object) -> str:
    return str(built.env)  # type: ignore[attr-defined]


def test_one_mapping_site() -> None:
    """Exit codes are read off errors in errors.py alone; no other module writes 125, 126
    or 127, and only the entry points call `report`."""
    entry_points = {"cliutil.py": {"handle_errors"}, "fastcli.py": {"run_main", "verify_main"},
                    "fastbuild.py": {"run_fast"},
                    "launch.py": {"guard_main", "hook_check", "verify_and_report"},
                    "inimage.py": {"main"}}
    for path in sorted((ROOT / "envbuild").glob("*.py")):
        if path.name == "errors.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("exit_code", "launch_code"), (path.name, node.lineno)
            if isinstance(node, ast.Constant) and type(node.value) is int:
                assert node.value not in (125, 126, 127), (path.name, node.lineno)
        callers = {fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                   for call in ast.walk(fn) if isinstance(call, ast.Call)
                   and isinstance(call.func, ast.Name) and call.func.id == "report"}
        assert callers <= entry_points.get(path.name, set()), (path.name, callers)
