"""The local test index works with the real tools: pip and pip-compile, offline."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pkgindex import LocalIndex, build_index, clean_pip_env

REQUIREMENTS_IN = "beta[fast]\nsdistonly\ndelta\npthpkg\n"
EXPECTED_PINS = {
    "alpha": ("2.0", "alpha-2.0-py3-none-any.whl"),
    "beta": ("1.0", "beta-1.0-py3-none-any.whl"),
    "delta": ("1.0", "delta-1.0-py3-none-any.whl"),
    "gamma": ("1.1", "gamma-1.1-py3-none-any.whl"),
    "pthpkg": ("1.0", "pthpkg-1.0-py3-none-any.whl"),
    "sdistonly": ("1.0", "sdistonly-1.0.tar.gz"),
}
TIMEOUT = 300


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> LocalIndex:
    return build_index(tmp_path_factory.mktemp("index"))


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` offline-safe: no ambient pip config, caches kept inside ``tmp_path``."""
    env = {**clean_pip_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run(
        cmd, check=False, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, f"{cmd}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_build_is_byte_identical(tmp_path: Path) -> None:
    first, second = build_index(tmp_path / "a"), build_index(tmp_path / "b")
    assert _tree(first.root) == _tree(second.root)
    assert sorted(_tree(first.find_links)) == sorted(
        [filename for _, filename in EXPECTED_PINS.values()]
        + ["alpha-1.0-py3-none-any.whl", "gamma-1.0-py3-none-any.whl",
           "startpkg-1.0-py3-none-any.whl"]
    )
    rebuilt = build_index(first.root)  # building again in place changes nothing
    assert _tree(rebuilt.root) == _tree(second.root)


def test_wheel_records_match_contents(index: LocalIndex) -> None:
    for wheel in sorted(index.find_links.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            (record_name,) = [n for n in names if n.endswith(".dist-info/RECORD")]
            rows = [line.split(",") for line in archive.read(record_name).decode().splitlines()]
            assert sorted(row[0] for row in rows) == sorted(names)
            for path, digest, size in rows:
                if path == record_name:
                    assert digest == size == ""
                    continue
                data = archive.read(path)
                b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                assert (digest, size) == (f"sha256={b64.decode()}", str(len(data)))


def _compile(tmp_path: Path, *source: str) -> dict[str, tuple[str, set[str]]]:
    """pip-compile REQUIREMENTS_IN against ``source`` options; return name -> (version, hashes)."""
    req_in, req_txt = tmp_path / "requirements.in", tmp_path / "requirements.txt"
    req_in.write_text(REQUIREMENTS_IN, encoding="utf-8")
    cmd = [sys.executable, "-m", "piptools", "compile", "--generate-hashes", "--no-header"]
    cmd += ["--cache-dir", str(tmp_path / "pip-tools-cache"), "-o", str(req_txt), *source]
    cmd.append(str(req_in))
    _run(cmd, tmp_path)
    pins: dict[str, tuple[str, set[str]]] = {}
    current = ""
    for line in req_txt.read_text(encoding="utf-8").splitlines():
        if pin := re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", line):
            current = pin.group(1).lower()
            pins[current] = (pin.group(2), set())
        elif digest := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            pins[current][1].add(digest.group(1))
    return pins


def _check_pins(pins: dict[str, tuple[str, set[str]]], index: LocalIndex) -> None:
    assert {name: version for name, (version, _) in pins.items()} == {
        name: version for name, (version, _) in EXPECTED_PINS.items()
    }
    for name, (_, filename) in EXPECTED_PINS.items():
        expected = hashlib.sha256(index.wheel(filename).read_bytes()).hexdigest()
        assert pins[name][1] == {expected}, name


def test_pip_compile_find_links(index: LocalIndex, tmp_path: Path) -> None:
    pins = _compile(tmp_path, "--no-index", "--find-links", str(index.find_links))
    _check_pins(pins, index)


def test_pip_compile_simple_index(index: LocalIndex, tmp_path: Path) -> None:
    pins = _compile(tmp_path, "--index-url", index.simple_url)
    _check_pins(pins, index)


def test_pip_installs_sdist_with_in_tree_backend(index: LocalIndex, tmp_path: Path) -> None:
    assert not list(index.find_links.glob("sdistonly-*.whl"))  # pip must build it
    target = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(target)], tmp_path)
    python = target / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    pip += ["--no-index", "--find-links", str(index.find_links), "sdistonly", "pthpkg"]
    _run(pip, tmp_path)
    assert _run([str(target / "bin" / "sdistonly")], tmp_path).stdout == "sdistonly 1.0\n"
    # pthpkg.pth put pthpkg_extra/ on sys.path
    imported = _run([str(python), "-c", "import pthmod; print(pthmod.VALUE)"], tmp_path)
    assert imported.stdout == "pthmod\n"
