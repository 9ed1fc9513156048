"""One wheel installed into a directory laid out as a venv's root, by pypa's `installer`
(the wheel as its source), with a destination that writes what pip writes into a venv:
its scheme (headers under `include/site/pythonX.Y/NAME`), its console-script body (that of
the pip beside envbuild: `pipscripts`), its `INSTALLER` and `REQUESTED` files and its
`RECORD` (rows and order), with the scripts' interpreter lines already in their relocated
form. So an env assembled from such trees is byte for byte the env pip installs and
`assemble` relocates."""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Union

from installer import install
from installer.destinations import WheelDestination
from installer.records import RecordEntry
from installer.sources import WheelContentElement, WheelFile
from installer.utils import Scheme

from .carried import TRAMPOLINE
from .errors import BuildError
from .hashing import record_digest
from .pipscripts import pip_body

_VERSIONED = {"pip": re.compile(r"pip(\d+(\.\d+)?)?$"),
              "easy_install": re.compile(r"easy_install(-\d+\.\d+)?$")}


class PipLayout(WheelDestination):
    """Writes one wheel under `root` as pip writes it into a venv at `root`."""

    def __init__(self, root: Path, site: str, version: str, name: str,
                 source: _Wheel) -> None:
        xy = ".".join(version.split(".")[:2])
        self.root, self.site, self.xy = root, site, xy
        self.dirs = {"purelib": site, "platlib": site, "scripts": "bin",
                     "headers": f"include/site/python{xy}/{name}", "data": ""}
        self.source, self.info_dir = source, source.dist_info_dir
        self.record_text = source.read_dist_info("RECORD")
        self.entry_points = _entry_points(source)
        self.installed: dict[str, str] = {}   # archive path -> RECORD path
        self.changed: set[str] = set()
        self.generated: list[str] = []        # RECORD paths of what pip generates
        self.rewritten = False                # a script's interpreter line was relocated

    def _place(self, scheme: str, path: str) -> tuple[Path, str]:
        rel = posixpath.normpath(posixpath.join(self.dirs[scheme], path))
        if rel.startswith("../") or rel == ".." or posixpath.isabs(rel):
            raise BuildError(f"{self.info_dir}: the wheel installs {path!r} outside the env")
        return self.root / rel, posixpath.relpath(rel, self.site)

    def write_file(self, scheme: Scheme, path: Union[str, os.PathLike[str]],
                   stream: BinaryIO, is_executable: bool) -> RecordEntry:
        path = os.fspath(path)
        archive = self.source.current or path   # the dist-info files pip generates: None
        top = archive.split("/", 1)[0]
        if top.endswith(".data") and top != self.source.data_dir:
            # pip takes any top-level .data dir as the data dir; the installer only the
            # one the file name gives: rather no tree than one that differs from pip's
            raise BuildError(f"{archive}: expected the wheel's .data dir to be named "
                             f"{self.source.data_dir}, as its file name says")
        if scheme == "scripts" and _is_wrapper(posixpath.basename(path), self.entry_points):
            return RecordEntry(path, None, None)   # setuptools' own wrapper: pip skips it
        data = stream.read()
        if scheme == "scripts" and data.startswith(b"#!python"):
            data = TRAMPOLINE + data.partition(b"\n")[2]
            self.rewritten = True
            changed = True
        else:
            changed = False
        target, record_path = self._place(scheme, path)
        self._write(target, data, executable=is_executable)
        self.installed[archive] = record_path
        if changed:
            self.changed.add(record_path)
        return RecordEntry(path, None, len(data))

    def write_script(self, name: str, module: str, attr: str, section: str) -> RecordEntry:
        if not self.entry_points.get((section, name)):
            return RecordEntry(name, None, None)   # a versioned pip/easy_install name
        for script in _script_names(name, section, self.entry_points, self.xy):
            body = pip_body()[1].format(module=module, import_name=attr.split(".")[0],
                                        func=attr)
            target, record_path = self._place("scripts", script)
            self._write(target, TRAMPOLINE + body.encode("utf-8"), executable=True)
            self.generated.append(record_path)
            self.rewritten = True
        return RecordEntry(name, None, None)

    def finalize_installation(self, scheme: Scheme, record_file_path: str,
                              records: Iterable[tuple[Scheme, RecordEntry]]) -> None:
        for name, data in (("INSTALLER", b"pip\n"), ("REQUESTED", b"")):
            target, record_path = self._place("purelib", f"{self.info_dir}/{name}")
            self._write(target, data, executable=False)
            self.generated.append(record_path)
        rows = []
        installed = dict(self.installed)
        for row in csv.reader(self.record_text.splitlines()):
            path = installed.pop(row[0], row[0])
            digest = row[1] if len(row) > 1 else ""
            size = row[2] if len(row) > 2 else ""
            if path in self.changed:
                digest, size = self._rehash(path)
            rows.append((path, digest, size))
        rows += [(path, *self._rehash(path)) for path in self.generated]
        rows += [(path, "", "") for path in installed.values()]
        out = io.StringIO()
        # pip writes "\r\n"; a RECORD whose scripts were relocated is rewritten with "\n"
        csv.writer(out, lineterminator="\n" if self.rewritten else "\r\n").writerows(
            sorted((p, d, str(s)) for p, d, s in rows))
        target, _ = self._place("purelib", record_file_path)
        self._write(target, out.getvalue().encode("utf-8"), executable=False)

    def _rehash(self, record_path: str) -> tuple[str, str]:
        data = (self.root / self.site / record_path).read_bytes()
        return record_digest(data), str(len(data))

    @staticmethod
    def _write(target: Path, data: bytes, executable: bool) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()   # a later file of the same wheel wins, as in pip
        target.write_bytes(data)
        target.chmod(0o555 if executable else 0o444)


class _Wheel(WheelFile):
    """The wheel as installer reads it, naming the archive path of the file being written
    (a destination is told only the scheme and the path within it)."""

    current: str | None = None

    def get_contents(self) -> Iterator[WheelContentElement]:
        for element in super().get_contents():
            self.current = element[0][0]
            yield element
        self.current = None


def _entry_points(source: WheelFile) -> dict[tuple[str, str], str]:
    """{(section, name): value} of the wheel's console and gui scripts (last one wins)."""
    from installer.utils import parse_entrypoints

    if "entry_points.txt" not in source.dist_info_filenames:
        return {}
    return {(section, name): f"{module}:{attr}" for name, module, attr, section
            in parse_entrypoints(source.read_dist_info("entry_points.txt"))}


def _is_wrapper(name: str, entry_points: dict[tuple[str, str], str]) -> bool:
    """A script setuptools generated for an entry point (EP, EP.exe, EP-script.py, EP.pya),
    which pip leaves out in favour of its own."""
    lower = name.lower()
    for suffix in (".exe", "-script.py", ".pya"):
        if lower.endswith(suffix):
            name = name[:-len(suffix)]
            break
    return any(ep_name == name for _section, ep_name in entry_points)


def _script_names(name: str, section: str, entry_points: dict[tuple[str, str], str],
                  xy: str) -> list[str]:
    """The scripts pip writes for one entry point: pip and easy_install get versioned
    names for the target Python, and their other versioned names none."""
    if section != "console":
        return [name]
    if name == "pip":
        return ["pip", f"pip{xy.split('.')[0]}", f"pip{xy}"]
    if name == "easy_install":
        return ["easy_install", f"easy_install-{xy}"]
    for base, pattern in _VERSIONED.items():
        if pattern.match(name) and ("console", base) in entry_points:
            return []
    return [name]


def install_wheel(wheel: Path, root: Path, site: str, version: str, name: str) -> None:
    """`wheel` installed under `root` (a venv's root layout, for Python `version`)."""
    from installer.exceptions import InstallerError

    try:
        with _Wheel.open(wheel) as source:
            assert isinstance(source, _Wheel)
            install(source, PipLayout(root, site, version, name, source), {})
    except (InstallerError, ValueError, KeyError, zipfile.BadZipFile, BuildError) as exc:
        found = str(exc) if isinstance(exc, BuildError) else f"{type(exc).__name__}: {exc}"
        raise BuildError(f"{wheel.name}: expected a wheel the installer can read, found "
                         f"{found}; `--installer pip` installs it as pip does") from None
