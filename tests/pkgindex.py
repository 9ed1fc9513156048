"""A tiny, deterministic, offline package index for tests.

``build_index(root)`` writes a handful of pure-Python distributions under ``root``:

* ``root/files/``  -- flat "find-links" directory with every wheel and the one sdist
* ``root/simple/`` -- a PEP 503 simple index pointing at ``../../files/NAME#sha256=HEX``

so that real ``pip`` and ``pip-compile`` can resolve and install from it with no network.
Every archive is byte-reproducible: fixed timestamps (1980-01-01), sorted entries, fixed
permissions and owners.  ``clean_pip_env()`` gives a subprocess environment that ignores
this machine's ambient pip configuration.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LocalIndex", "build_index", "bulk_dist", "clean_pip_env", "write_sdist",
           "write_wheel"]

# What clean_pip_env() sets after dropping every ambient PIP_* variable.
_PIP_ENV_DEFAULTS = {
    "PIP_CONFIG_FILE": os.devnull,  # pip skips every config file when this is os.devnull
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",  # the self-check would contact PyPI even offline
    "PIP_NO_INPUT": "1",
}


def clean_pip_env() -> dict[str, str]:
    """``os.environ`` without any ``PIP_*`` variable and with pip config files disabled.

    SSL_CERT_FILE / REQUESTS_CA_BUNDLE and everything else not starting with ``PIP_`` is kept.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(_PIP_ENV_DEFAULTS)
    return env


# --- archive writers --------------------------------------------------------------------
# These two functions are self-contained (stdlib imports inside, no module globals) because
# their source is copied verbatim into the in-tree build backend of the ``sdistonly`` sdist.


def write_wheel(
    dest: str, name: str, version: str, metadata: str, files: dict[str, str], entry_points: str
) -> str:
    """Write ``{name}-{version}-py3-none-any.whl`` into ``dest``; return its file name."""
    import base64
    import hashlib
    import os
    import zipfile

    dist_info = f"{name}-{version}.dist-info"
    wheel_meta = (
        "Wheel-Version: 1.0\nGenerator: pkgindex\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    contents = {path: text.encode() for path, text in sorted(files.items())}
    contents[f"{dist_info}/METADATA"] = metadata.encode()
    contents[f"{dist_info}/WHEEL"] = wheel_meta.encode()
    if entry_points:
        contents[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}\n")
    record.append(f"{dist_info}/RECORD,,\n")
    contents[f"{dist_info}/RECORD"] = "".join(record).encode()

    filename = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(dest, filename), "w") as archive:
        for path, data in contents.items():
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3  # unix, so external_attr carries the mode below
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return filename


def write_sdist(dest: str, name: str, version: str, files: dict[str, str]) -> str:
    """Write ``{name}-{version}.tar.gz`` (files under ``{name}-{version}/``); return its name."""
    import gzip
    import io
    import os
    import tarfile

    base = f"{name}-{version}"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for path, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{path}")
            info.size = len(data)
            info.mtime = 315532800  # 1980-01-01T00:00:00Z
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    filename = f"{base}.tar.gz"
    with open(os.path.join(dest, filename), "wb") as out:
        out.write(gzip.compress(raw.getvalue(), mtime=0))
    return filename


# --- the packages -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    name: str
    version: str
    files: dict[str, str]
    requires: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    scripts: dict[str, str] = field(default_factory=dict)  # script name -> "module:function"

    def metadata(self) -> str:
        lines = ["Metadata-Version: 2.1", f"Name: {self.name}", f"Version: {self.version}"]
        lines.append(f"Summary: {self.name}, a test package of envbuild's local index")
        lines += [f"Provides-Extra: {extra}" for extra in self.extras]
        lines += [f"Requires-Dist: {requirement}" for requirement in self.requires]
        return "\n".join(lines) + "\n"

    def entry_points(self) -> str:
        if not self.scripts:
            return ""
        lines = [f"{script} = {target}" for script, target in sorted(self.scripts.items())]
        return "[console_scripts]\n" + "\n".join(lines) + "\n"


def _main_module(name: str, version: str) -> str:
    return f'__version__ = "{version}"\n\n\ndef main() -> None:\n    print("{name}", __version__)\n'


def _wheel_dists() -> list[_Dist]:
    dists = [
        _Dist(
            "alpha",
            version,
            {"alpha/__init__.py": _main_module("alpha", version)},
            scripts={"alpha": "alpha:main"},
        )
        for version in ("1.0", "2.0")
    ]
    dists.append(
        _Dist(
            "beta",
            "1.0",
            {"beta/__init__.py": _main_module("beta", "1.0")},
            requires=("alpha>=1.0", 'gamma; extra == "fast"'),
            extras=("fast",),
            scripts={"beta-tool": "beta:main"},
        )
    )
    dists += [_Dist("gamma", v, {"gamma.py": f'__version__ = "{v}"\n'}) for v in ("1.0", "1.1")]
    dists.append(
        _Dist(
            "delta",
            "1.0",
            {"delta.py": '__version__ = "1.0"\n'},
            requires=('gamma; python_version < "3"', "alpha"),
        )
    )
    dists.append(
        _Dist(
            "pthpkg",
            "1.0",
            {"pthpkg.pth": "pthpkg_extra\n", "pthpkg_extra/pthmod.py": 'VALUE = "pthmod"\n'},
        )
    )
    # a .pth that imports a module at every interpreter start, as coverage or
    # distutils-precedence do
    dists.append(
        _Dist(
            "startpkg",
            "1.0",
            {"startpkg.pth": "import startmod\n", "startmod.py": "STARTED = True\n"},
        )
    )
    return dists


_SDIST = _Dist(
    "sdistonly",
    "1.0",
    {"sdistonly.py": _main_module("sdistonly", "1.0")},
    scripts={"sdistonly": "sdistonly:main"},
)

_PYPROJECT = """\
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]
"""

_BACKEND_HEAD = '''\
"""In-tree PEP 517 build backend of {name} (stdlib only, no setuptools, no network)."""

from __future__ import annotations

NAME = "{name}"
VERSION = "{version}"
MODULES = {modules!r}
ENTRY_POINTS = {entry_points!r}
SDIST_FILES = ["PKG-INFO", "backend.py", "pyproject.toml", *MODULES]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    modules = {{path: _read(path) for path in MODULES}}
    return write_wheel(wheel_directory, NAME, VERSION, _read("PKG-INFO"), modules, ENTRY_POINTS)


def build_sdist(sdist_directory, config_settings=None):
    return write_sdist(sdist_directory, NAME, VERSION, {{p: _read(p) for p in SDIST_FILES}})

'''


def _sdist_files(dist: _Dist) -> dict[str, str]:
    """The source tree of ``dist`` with its in-tree backend; PKG-INFO doubles as METADATA."""
    backend = _BACKEND_HEAD.format(
        name=dist.name,
        version=dist.version,
        modules=sorted(dist.files),
        entry_points=dist.entry_points(),
    )
    backend += "\n" + inspect.getsource(write_wheel) + "\n\n" + inspect.getsource(write_sdist)
    return {
        "PKG-INFO": dist.metadata(),
        "pyproject.toml": _PYPROJECT,
        "backend.py": backend,
        **dist.files,
    }


# --- the index --------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalIndex:
    root: Path  # everything lives under here
    find_links: Path  # flat directory with every wheel and the sdist
    simple_url: str  # file:// URL of the PEP 503 simple index

    def wheel(self, filename: str) -> Path:
        """Path of ``filename`` (a wheel or the sdist) in ``find_links``."""
        path = self.find_links / filename
        if not path.is_file():
            available = ", ".join(sorted(p.name for p in self.find_links.iterdir()))
            raise FileNotFoundError(f"{filename} is not in the local index ({available})")
        return path


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _write_simple_index(simple: Path, files: list[Path]) -> None:
    projects: dict[str, list[Path]] = {}
    for path in files:
        projects.setdefault(_normalize(path.name.split("-")[0]), []).append(path)
    for project, paths in sorted(projects.items()):
        links = [
            f'<a href="../../files/{p.name}#sha256={hashlib.sha256(p.read_bytes()).hexdigest()}">'
            f"{p.name}</a><br>"
            for p in sorted(paths)
        ]
        (simple / project).mkdir(parents=True, exist_ok=True)
        (simple / project / "index.html").write_text(
            _html(f"Links for {project}", links), encoding="utf-8"
        )
    top = [f'<a href="{project}/">{project}</a><br>' for project in sorted(projects)]
    (simple / "index.html").write_text(_html("Simple index", top), encoding="utf-8")


def _html(title: str, body: list[str]) -> str:
    lines = ["<!DOCTYPE html>", "<html>", f"<head><title>{title}</title></head>", "<body>"]
    return "\n".join([*lines, f"<h1>{title}</h1>", *body, "</body>", "</html>", ""])


def bulk_dist(version: str, count: int) -> _Dist:
    """``bulk``: one module and ``count`` - 1 small data files, 100 to a directory (no
    bytecode to compile): an env of many files whose top level stays the same."""
    files = {"bulk/__init__.py": f'__version__ = "{version}"\n'}
    files.update({f"bulk/d{n // 100:04d}/f{n % 100:02d}.txt": f"{n}\n"
                  for n in range(count - 1)})
    return _Dist("bulk", version, files)


def build_index(root: Path, extra: tuple[_Dist, ...] = ()) -> LocalIndex:
    """Build (or rebuild, byte-identically) the local index under ``root``; ``extra``:
    distributions beside the usual ones."""
    root = Path(root).resolve()
    files, simple = root / "files", root / "simple"
    files.mkdir(parents=True, exist_ok=True)
    simple.mkdir(parents=True, exist_ok=True)
    built = [
        write_wheel(str(files), d.name, d.version, d.metadata(), d.files, d.entry_points())
        for d in (*_wheel_dists(), *extra)
    ]
    built.append(write_sdist(str(files), _SDIST.name, _SDIST.version, _sdist_files(_SDIST)))
    _write_simple_index(simple, [files / name for name in built])
    return LocalIndex(root=root, find_links=files, simple_url=simple.as_uri())
