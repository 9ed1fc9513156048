"""Tool venvs: pip-tools for a target interpreter other than the one running envbuild.

pip-compile evaluates markers and chooses wheels for the interpreter it runs in, so a lock
for another Python is resolved by pip-compile running in that Python: a venv of it with
pip-tools and pip at the versions envbuild itself runs, installed hermetically from PyPI
(or `$ENVBUILD_TOOLS_INDEX_URL`; never the recipe's index, which holds the recipe's
packages), once per store and interpreter, and reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from .errors import ToolError
from .fsutil import publish_dir, remove_tree
from .interpreter import Interpreter, probe
from .lock import Target, running_target
from .pipfail import unreachable
from .proc import hermetic_env, pip_argv, run_tool
from .recipe import PYPI_SIMPLE, Recipe
from .store import Store, exclusive
from .trust import find_trust

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
TOOLS_INDEX_ENV = "ENVBUILD_TOOLS_INDEX_URL"


def tools_index_url() -> str:
    """Where tool venvs install from: `$ENVBUILD_TOOLS_INDEX_URL`, else PyPI."""
    return os.environ.get(TOOLS_INDEX_ENV) or PYPI_SIMPLE


def tool_requirements() -> list[str]:
    """pip-tools and pip pinned to the versions running envbuild: one resolver, one answer."""
    return [f"pip-tools=={version('pip-tools')}", f"pip=={version('pip')}"]


def tool_name(interp: Interpreter) -> str:
    """The tool venv's directory name: what it holds, for which interpreter's bytes."""
    material = json.dumps({"requirements": tool_requirements(), "executable": interp.executable,
                           "sha256": interp.sha256, "libpython": interp.libpython},
                          sort_keys=True, separators=(",", ":"))
    key = hashlib.sha256(material.encode()).hexdigest()[:16]
    return f"pip-tools-{version('pip-tools')}-{interp.abi}-{key}"


def lock_target(recipe: Recipe, python: str | None, store_dir: Path | None = None,
                progress: Progress = lambda _msg: None, resolver: str = "pip-tools") -> Target:
    """The Python `lock --python` names (see `interpreter.find_python`), checked against
    the recipe's requires-python before anything is installed, with the interpreter that
    runs pip-compile for it (for uv, which needs no tool venv: the one it resolves for)."""
    if python is None:
        return running_target()
    interp = probe(python)
    recipe.check_python(interp.version, f"{interp.executable} (Python {interp.version})",
                        "pass --python naming a matching Python")
    runner = (interp.executable if resolver == "uv"
              else pip_tools_python(interp, store_dir, progress))
    return Target(interp.version, interp.implementation, runner)


def pip_tools_python(interp: Interpreter, store_dir: Path | None = None,
                     progress: Progress = lambda _msg: None) -> str:
    """The Python that runs pip-compile for `interp`: the one running envbuild if that is
    `interp`, else the python of `interp`'s tool venv in the store, built first if the
    store has none."""
    if os.path.realpath(sys.executable) == interp.executable:
        return sys.executable
    store = Store.locate(store_dir)
    name = tool_name(interp)
    final = Path(store.layout.tool_dir(name))
    python = final / "bin" / "python"
    if python.exists():
        return str(python)
    Path(store.layout.tools).mkdir(exist_ok=True)
    with exclusive(Path(store.layout.tool_lock(name)),
                   on_wait=lambda: progress(f"waiting for another build of {final}")):
        if python.exists():     # built meanwhile
            return str(python)
        for leftover in Path(store.layout.tools).glob(f".tmp-{name}-*"):
            log.info("removing the leftover of an interrupted tool build: %s", leftover)
            remove_tree(leftover)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=store.layout.tools))
        try:
            os.chmod(tmp, 0o755)    # as a venv is made: other users of the store run it
            _make_tool_venv(tmp, interp, progress)
            progress(f"publishing {final}")
            if not publish_dir(tmp, final):
                remove_tree(tmp)
        except BaseException:
            remove_tree(tmp)
            raise
    return str(python)


def _make_tool_venv(tmp: Path, interp: Interpreter, progress: Progress) -> None:
    wanted = tool_requirements()
    progress(f"installing {' and '.join(wanted)} for Python {interp.version} "
             f"({interp.executable}) from {tools_index_url()} (once per store; "
             f"{TOOLS_INDEX_ENV} names a mirror)")
    run_tool([interp.executable, "-I", "-m", "venv", "--without-pip", str(tmp)],
             env=hermetic_env())
    try:
        run_tool(pip_argv("--python", str(tmp / "bin" / "python"), "install", "--index-url",
                          tools_index_url(), "--progress-bar", "off",
                          "--no-warn-script-location", *find_trust("install").pip_args(),
                          *wanted),
                 env=hermetic_env())
    except ToolError as exc:    # name what was wanted, from where, for which Python
        unreached = unreachable(exc.output, tools_index_url(), find_trust("install"),
                                f"${TOOLS_INDEX_ENV}")
        if unreached is not None:
            raise unreached from None
        raise ToolError([f"pip install {' '.join(wanted)} (for {interp.executable}, from "
                         f"{tools_index_url()})"], exc.returncode, exc.output) from None
