"""What a uv or docker user expects of a command line, typed as they would type it: -h,
--version, completion, -q, --debug, usage lines and help that teach."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import Built, envbuild

import envbuild as package

COMMANDS = [["lock"], ["build"], ["image"], ["diff"], ["export"], ["verify"], ["run"],
            ["stage"], ["stage", "publish"], ["stage", "list"], ["stage", "rollback"],
            ["stage", "gc"], ["stage", "fetch"], ["list"], ["show"], ["gc"]]


def test_every_help_teaches_without_type_placeholders() -> None:
    top = envbuild("-h")
    assert top.returncode == 0 and "Commands:" in top.stdout and "Start:" in top.stdout
    for words in COMMANDS:
        short, long = envbuild(*words, "-h"), envbuild(*words, "--help")
        assert short.returncode == long.returncode == 0, (words, short.stderr)
        assert short.stdout == long.stdout
        usage = short.stdout.splitlines()[0]
        assert usage.startswith("Usage: ") and " ".join(words) in usage
        assert not re.search(r"[{}]|<(str|path|int|float|list)", short.stdout), short.stdout
        if words != ["stage"]:
            assert "Example: envbuild " + " ".join(words) in short.stdout, words
        assert "-h, --help" in short.stdout
    assert "[OPTIONS] RECIPE" in envbuild("lock", "-h").stdout
    run = envbuild("run", "-h").stdout
    for option in ("--level", "--expect", "--local", "--max-readers", "CMD ARGS..."):
        assert option in run
    verify = envbuild("verify", "--help").stdout
    for option in ("--level", "--expect", "--launch", "--json"):
        assert option in verify


def test_version_and_completion() -> None:
    proc = envbuild("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"envbuild {package.__version__} ({package.BUILD_FORMAT}")
    proc = envbuild("--show-completion", "bash")
    assert proc.returncode == 0 and "complete " in proc.stdout and "COMP_WORDS" in proc.stdout


def test_quiet_leaves_only_the_result(built: Built) -> None:
    loud = envbuild("build", built.recipe, "--store", built.store)
    quiet = envbuild("-q", "build", built.recipe, "--store", built.store)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "reused" in loud.stderr
    assert quiet.stderr == "" and quiet.stdout == loud.stdout == f"{built.env}\n"


def test_errors_are_one_line_and_debug_shows_where(tmp_path: Path, built: Built) -> None:
    """A store that cannot be made, and an env whose files vanish under the command: one
    line in envbuild's style, no traceback; --debug adds the traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = envbuild("build", built.recipe, "--store", blocker / "store")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("envbuild: error: store: cannot create ")
    assert "pass --store" in proc.stderr and not (blocker / "store").exists()
    debug = envbuild("--debug", "build", built.recipe, "--store", blocker / "store")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    # An internal failure (not envbuild's own error class) through the typer layer.
    code = ("import sys, envbuild.diff as d\n"
            "def boom(*a, **k): raise FileNotFoundError(2, 'No such file or directory', "
            "'/gone/envbuild-manifest.json')\n"
            "d.diff = boom\n"
            "from envbuild.__main__ import main\n"
            "sys.argv = ['envbuild', *sys.argv[1:]]\n"
            "main()\n")
    for extra, traceback in (([], False), (["--debug"], True)):
        proc = subprocess.run([sys.executable, "-c", code, *extra, "diff", "a", "b"],
                              capture_output=True, text=True, env=dict(os.environ))
        assert proc.returncode == 2, proc.stderr
        assert ("Traceback" in proc.stderr) == traceback, proc.stderr
        assert "envbuild: error: /gone/envbuild-manifest.json: No such file or directory; " \
               "was it removed" in proc.stderr


def test_build_without_typer_says_what_typer_says(built: Built, tmp_path: Path) -> None:
    """A plain `envbuild build` (not at a terminal) is parsed without typer; `--debug` before
    it goes through typer. Both print the same, succeed or fail alike."""
    cases = [[str(built.recipe), "--store", str(built.store)],
             [str(built.recipe), f"--store={built.store}", "--json", "--verify", "full"],
             [str(tmp_path / "absent.toml"), "--store", str(built.store)],
             [str(built.recipe), "--store", str(tmp_path / "file" / "store")]]
    (tmp_path / "file").write_text("")
    for args in cases:
        fast, typed = envbuild("build", *args), envbuild("--debug", "build", *args)
        assert fast.returncode == typed.returncode, (args, fast.stderr, typed.stderr)
        assert fast.stdout == typed.stdout, args
        if typed.returncode == 0:
            assert fast.stderr == typed.stderr, args
        else:   # --debug adds the traceback before the same last lines
            assert typed.stderr.endswith(fast.stderr), (fast.stderr, typed.stderr)
    from envbuild.fastbuild import parse_build

    for odd in (["-h"], [str(built.recipe), "--stor", "x"], [str(built.recipe), "--store"],
                [], ["a.toml", "b.toml"], [str(built.recipe), "--store="]):
        assert parse_build(odd) is None, odd      # typer explains these


def test_lock_without_typer_says_what_typer_says(built: Built, tmp_path: Path) -> None:
    """A plain `envbuild lock` is parsed without typer too; the two write the same lock and
    print the same, succeed or fail alike."""
    recipe = tmp_path / built.recipe.name
    recipe.write_text(built.recipe.read_text())
    lock = recipe.with_suffix(".lock")
    cases = [[str(recipe)], [str(recipe), "--upgrade-package", "alpha", "-P", "beta"],
             [str(recipe), "--upgrade", "--resolver=pip-tools"],
             [str(tmp_path / "absent.toml")], [str(recipe), "--resolver", "nope"]]
    for args in cases:
        lock.unlink(missing_ok=True)
        fast = envbuild("lock", *args)
        fast_lock = lock.read_bytes() if lock.exists() else None
        lock.unlink(missing_ok=True)
        typed = envbuild("--debug", "lock", *args)
        assert fast.returncode == typed.returncode, (args, fast.stderr, typed.stderr)
        assert fast.stdout == typed.stdout, args
        if typed.returncode == 0:
            assert fast.stderr == typed.stderr, args
            assert fast_lock is not None and fast_lock.split(b"\n#\n")[1] == \
                lock.read_bytes().split(b"\n#\n")[1], args
        else:
            assert typed.stderr.endswith(fast.stderr), (fast.stderr, typed.stderr)
    from envbuild.fastbuild import parse_lock

    assert parse_lock([str(recipe), "-P", "a", "--upgrade-package=b"]) == {
        "recipe": str(recipe), "upgrade": False, "upgrade_package": ["a", "b"], "store": None,
        "python": None, "resolver": None}
    for odd in (["-h"], [str(recipe), "--check"], [str(recipe), "-P"], [],
                ["a.toml", "b.toml"], [str(recipe), "--resolver="]):
        assert parse_lock(odd) is None, odd      # typer explains these
