"""The console-script bodies are pip's own: read from pip's code, for the pip beside envbuild
and for the first release of each body (pip runs from its wheel, so each is imported from
the wheel as PyPI serves it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pip
import pytest

from envbuild.pipscripts import body_for, pip_body, pip_style
from envbuild.proc import hermetic_env, pip_argv, run_tool
from envbuild.recipe import PYPI_SIMPLE
from envbuild.trust import find_trust

# what pip itself fills into its template (a `%` template, where ours is `str.format`)
_FIELDS = {"module": "pkg.cli", "import_name": "main", "func": "main"}

_READ_TEMPLATE = """\
import sys
from pip._internal.operations.install import wheel
from pip._vendor.distlib.scripts import ScriptMaker
maker = getattr(wheel, "PipScriptMaker", ScriptMaker)
sys.stdout.write(maker.script_template)
"""


def _template_of(path_entry: str) -> str:
    """The template pip's installer writes console scripts with, from the pip on
    `path_entry` (a site dir or a wheel)."""
    return subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {path_entry!r})\n"
         + _READ_TEMPLATE], check=True, capture_output=True, text=True).stdout


def test_the_body_is_the_one_the_pip_beside_envbuild_writes() -> None:
    pip_dir = str(Path(pip.__file__).parent.parent)
    style, body = pip_body()
    assert style == pip_style() == body_for(pip.__version__)[0]
    assert body.format(**_FIELDS) == _template_of(pip_dir) % _FIELDS


@pytest.mark.network
@pytest.mark.parametrize("version,style", [("25.1.1", "s1"), ("25.2", "s2"),
                                           ("25.3", "s2"), ("26.0", "s3")])
def test_each_body_is_the_one_its_pip_writes(tmp_path: Path, version: str,
                                              style: str) -> None:
    """The releases at each edge of the table: the last of one body, the first of the next."""
    run_tool(pip_argv("download", "--no-deps", "--only-binary=:all:", "--index-url",
                      PYPI_SIMPLE, *find_trust("download").pip_args(), "--dest", str(tmp_path),
                      f"pip=={version}"), env=hermetic_env())
    wheel = next(tmp_path.glob("pip-*.whl"))
    got_style, body = body_for(version)
    assert got_style == style
    assert body.format(**_FIELDS) == _template_of(str(wheel)) % _FIELDS


def test_a_version_before_any_edge_has_distlibs_body() -> None:
    style, body = body_for("20.0")
    assert style == "s1" and "import re" in body
