"""What every env carries so that it can be verified and launched where envbuild is not
installed: `bin/envbuild-guard` (a /bin/sh script), the stdlib-only launch modules in
`lib/envbuild-launch/envbuild/`, and, with `[launch] hook = true`, the `.pth` hook line."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from .hashing import sha256_bytes
from .interpreter import Interpreter
from .layout import GUARD, LAUNCH_PKG

_GUARD = """#!/bin/sh
# envbuild-guard: verify this env against its manifest, then run CMD; 125 if refused.
# usage: envbuild-guard [--level quick|files|full] [--expect sha256:HEX] [--] CMD ARGS...
case $0 in */*) b=${0%/*} ;; *) b=$(command -v -- "$0") && b=${b%/*} || b=. ;; esac
if [ ! -x "$b/python" ]; then
  echo "envbuild-guard: refused: interpreter: $b/python: expected an executable, found none" >&2
  exit 125
fi
@PYLIB@exec "$b/python" -I -S -c 'import sys
try:
    sys.path.insert(0, sys.argv[1] + "/../lib/envbuild-launch")
    from envbuild.launch import guard_main
except BaseException as e:
    sys.stderr.write("envbuild-guard: refused: cannot load the launch modules: %r\\n" % (e,))
    sys.exit(125)
guard_main()' "$b" "$@"
"""
# the launch path: stdlib only, carried into every env (a test holds this list whole)
LAUNCH_MODULES = ("children.py", "elfread.py", "errors.py", "filessince.py", "findwalk.py",
                  "hashing.py", "hashpool.py", "host.py", "launch.py", "layout.py", "loader.py",
                  "runlog.py", "sidecars.py", "verify.py", "verify_files.py")

HOOK_PTH = "000-envbuild-hook.pth"
# `site` runs a venv's .pth files twice (Python 3.11 adds the venv's site-packages both in
# venv() and with the other prefixes): once per process is enough
_HOOK_CODE = """\
import os as _o, sys as _s
if not getattr(_s, "_envbuild_hook_checked", False):
    _p = _o.path.join(_s.prefix, "lib", "envbuild-launch")
    try:
        _s.path.insert(0, _p)
        from envbuild.launch import hook_check as _h
        _h(_s.prefix)
        _s._envbuild_hook_checked = True
    except BaseException as _e:
        _s.stderr.write("envbuild-hook: refused: internal error: %r\\n" % (_e,))
        _o._exit(125)
"""


def hook_line() -> str:
    """The one line of the opt-in `.pth` hook: `site` runs lines that start with `import`,
    and swallows their exceptions, hence `os._exit`."""
    return f"import sys; exec({_HOOK_CODE!r})\n"


def launcher_digest() -> str:
    """The launch code copied into every env: when it changes, so does every env key."""
    here = Path(__file__).parent
    parts = [_GUARD.encode(), hook_line().encode()]
    parts += [name.encode() + b"\0" + (here / name).read_bytes() for name in LAUNCH_MODULES]
    return sha256_bytes(b"\0".join(parts))


# Console scripts start their own interpreter from beside themselves, wherever the env is.
TRAMPOLINE = (b"#!/bin/sh\n"
              b"'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")\"/python \"$0\" \"$@\"\n"
              b"' '''\n")


def install_launcher(tmp: Path, interp: Interpreter) -> None:
    """The stdlib-only launch modules and `bin/envbuild-guard`, carried inside the env."""
    here = Path(__file__).parent
    pkg = tmp / LAUNCH_PKG
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""envbuild launch path, carried inside the env."""\n')
    for name in LAUNCH_MODULES:
        shutil.copyfile(here / name, pkg / name)
    guard = tmp / GUARD
    guard.write_text(_GUARD.replace("@PYLIB@", _pylib_check(interp)))
    guard.chmod(0o755)


def _pylib_check(interp: Interpreter) -> str:
    """Shell lines refusing (125) when what the interpreter needs before it runs any code
    is gone: a shared build's libpython (the dynamic loader would fail with 127) and the
    stdlib (Python would stop with a fatal error, 1 or 134), before any check could run."""
    needed = [(os.path.join(interp.stdlib, "os.py"), "present")]
    if interp.libpython:
        needed.append((interp.libpython["path"], interp.libpython["sha256"]))
    lines = []
    for path, expected in needed:
        quoted = shlex.quote(path)
        lines.append(f"if [ ! -e {quoted} ]; then\n"
                     f"  echo \"envbuild-guard: refused: interpreter: \"{quoted}\": expected "
                     f"{expected}, found missing\" >&2\n"
                     f"  exit 125\nfi\n")
    return "".join(lines)
