"""The one way envbuild runs external tools (pip, pip-compile): logged, captured, typed."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from .errors import ToolError

log = logging.getLogger(__name__)

# Proxies and OpenSSL's own defaults are kept. REQUESTS_CA_BUNDLE is not: requests lets it
# override pip's `--cert`, through which envbuild passes the one trust it chose (trust.py).
_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
         "http_proxy", "https_proxy", "no_proxy",
         "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SOURCE_DATE_EPOCH")


def hermetic_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which pip sees no ambient configuration at all.

    `PIP_CONFIG_FILE=/dev/null` makes pip skip every config file (global, user, site), and
    dropping `PIP_*`/`PYTHON*` removes the rest: constraints, extra indexes, find-links.
    """
    env = {k: v for k, v in os.environ.items() if k in _KEEP}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    # pip may run under an env's own interpreter (`--python`), whose sys.path holds what
    # earlier installs put there: an import then would write a pyc naming the build dir
    # (the bytecode step compiles through py_compile, which writes regardless)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def run_tool(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
             cwd: str | os.PathLike[str] | None = None, input: str | None = None,
             on_line: Callable[[str], None] | None = None) -> str:
    """Run a tool to completion and return its combined output; raise ToolError on failure.
    `on_line` sees each line of output as it comes (for progress)."""
    import subprocess  # here: a build that starts no tool does not import it

    args = [str(a) for a in argv]
    log.debug("running %s", " ".join(args))
    environ = dict(env) if env is not None else hermetic_env()
    if on_line is None:
        proc = subprocess.run(args, env=environ, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              input=input, text=True, errors="replace")
        output, code = proc.stdout, proc.returncode
    else:
        lines: list[str] = []
        with subprocess.Popen(args, env=environ, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                              errors="replace") as child:
            assert child.stdout is not None
            for line in child.stdout:
                lines.append(line)
                on_line(line.rstrip("\n"))
        output, code = "".join(lines), child.returncode
    if code != 0:
        raise ToolError(args, code, output)
    return output


def installer_identity() -> str:
    """The pip that `pip_argv` runs, by name and version (its own `__version__`: importing
    pip's top module is cheap, unlike `importlib.metadata`)."""
    import pip

    return f"pip {pip.__version__}"


def dist_version(name: str, module: str | None = None) -> str | None:
    """An installed distribution's version, from the METADATA of its dist-info beside its
    top-level `module` (by default its name), as `importlib.metadata` finds it, which is
    imported only where that fails (importing it costs a build more than this lookup);
    None if not installed."""
    from importlib.util import find_spec

    try:
        spec = find_spec(module or name.replace("-", "_"))
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        site = os.path.dirname(os.path.dirname(spec.origin))
        prefix = name.replace("-", "_").lower() + "-"
        for entry in os.listdir(site):
            if entry.lower().startswith(prefix) and entry.endswith(".dist-info"):
                found = _metadata_version(os.path.join(site, entry, "METADATA"))
                if found is not None:
                    return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _metadata_version(path: str) -> str | None:
    """The `Version:` header of a METADATA file; None if it has none or cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip()
                if not line.strip():
                    return None   # the headers end
    except OSError:
        pass
    return None


def pip_argv(*args: str) -> list[str]:
    """pip as shipped beside envbuild, whatever interpreter it will act on."""
    return [sys.executable, "-m", "pip", *args]
