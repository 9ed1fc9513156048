"""host: the host as a launch sees it (glibc's version, what the loader would find)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import Built

from envbuild.host import version_tuple

REPO = Path(__file__).resolve().parents[1]


def test_version_tuple_compares_numerically() -> None:
    assert version_tuple("2.17") > version_tuple("2.9")
    assert version_tuple("2.2.5") < version_tuple("2.3")
    assert max(["2.9", "2.17", "2.2.5"], key=version_tuple) == "2.17"


def test_launch_side_does_not_import_elftools() -> None:
    code = (
        "import sys, envbuild.host as h; h.host_glibc(); "
        "assert 'elftools' not in sys.modules, 'elftools imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_a_warm_host_check_does_not_import_the_loader(built: Built) -> None:
    """At a launch whose host answer is cached, the loader's code is not even imported; the
    first check (a miss) does use it, and both answer alike."""
    code = ("import sys; sys.path.insert(0, sys.argv[1] + '/lib/envbuild-launch'); "
            "from envbuild.verify import verify; r = verify(sys.argv[1]); "
            "print(r.ok, 'envbuild.loader' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    runs = [subprocess.run([str(built.env / "bin" / "python"), "-I", "-S", "-c", code,
                            str(built.env)], capture_output=True, text=True, env=env,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[1] == ["True", "False"], runs
