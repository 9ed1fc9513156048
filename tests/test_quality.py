"""The code stays typed (mypy --strict) and lint-clean (ruff); the launch path stays stdlib."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_mypy_strict() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "envbuild", "tests", "bench"],
                          cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_launch_path_imports_only_the_stdlib() -> None:
    """The guard's modules import nothing outside the stdlib (and not json, re, hashlib,
    subprocess or signal, which cost milliseconds at every launch)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import envbuild.launch, envbuild.runlog,"
            " envbuild.verify_files, envbuild.hashpool; print(' '.join(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)],
                          capture_output=True, text=True, check=True)
    loaded = set(proc.stdout.split())
    for heavy in ("json", "re", "hashlib", "subprocess", "signal", "typer", "packaging",
                  "dataclasses", "socket", "datetime"):
        assert heavy not in loaded, heavy


def test_launch_modules_parse_as_python_3_9() -> None:
    """The guard runs the env's own interpreter, which may be as old as 3.9: the modules
    it carries must not use newer syntax, nor the newer calls that slip past the parser."""
    import ast

    from envbuild.carried import LAUNCH_MODULES

    newer_keywords = {("zip", "strict")}                       # 3.10
    newer_attributes = {"bit_count", "aiter", "anext"}         # 3.10
    for name in LAUNCH_MODULES:
        path = ROOT / "envbuild" / name
        tree = ast.parse(path.read_text(), str(path), feature_version=(3, 9))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                for kw in node.keywords:
                    assert (node.func.id, kw.arg) not in newer_keywords, (
                        f"{name}:{node.lineno}: {node.func.id}({kw.arg}=) needs Python 3.10")
            if isinstance(node, ast.Attribute):
                assert node.attr not in newer_attributes, (
                    f"{name}:{node.lineno}: .{node.attr} needs Python 3.10")


def _imports() -> dict[str, set[str]]:
    """{module: the envbuild modules it imports, at the top or inside functions}."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "envbuild").glob("*.py")):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names
                                 if (ROOT / "envbuild" / f"{alias.name}.py").exists())
        graph[path.stem] = found
    return graph


def _closure(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo += graph.get(mod, set())
    return seen


def test_build_side_never_imports_the_level_checker() -> None:
    graph = _imports()
    checker = {"verify", "verify_files"}
    build_side = {"build", "manifest", "interpreter", "wheelcache", "bytecode", "store",
                  "lock", "recipe", "hostreq", "proc", "fsutil"}
    for module in sorted(build_side):
        assert not _closure(graph, {module}) & checker, module


def test_the_env_carries_every_module_the_launch_path_imports() -> None:
    """LAUNCH_MODULES is exactly what `launch` reaches (the guard and the hook enter there)."""
    from envbuild.carried import LAUNCH_MODULES

    reached = _closure(_imports(), {"launch"})
    assert {f"{m}.py" for m in reached} == set(LAUNCH_MODULES)


def test_modules_stay_small() -> None:
    for path in sorted((ROOT / "envbuild").glob("*.py")):
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_cli_annotations_are_evaluated() -> None:
    """typer reads the CLI's annotations at run time; on Python 3.9 it cannot evaluate them
    from strings, and every option would lose its name (`--json` became `--as-json`)."""
    import ast

    tree = ast.parse((ROOT / "envbuild" / "cli.py").read_text())
    assert not any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                   for n in tree.body)
