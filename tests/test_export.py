"""`envbuild export`: each document read back by the tool named for it. pylock.toml by
`uv pip sync` into a fresh venv (and packaging's PEP 751 reader), the CycloneDX SBOM by
cyclonedx-python-lib's strict JSON validator, requirements by `pip install --require-hashes`
from the local index; each gives exactly the env's distributions and versions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Built, cli
from pkgindex import LocalIndex, clean_pip_env

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

MANIFEST = "envbuild-manifest.json"


def _dists(built: Built) -> dict[str, str]:
    manifest = json.loads((built.env / MANIFEST).read_text())
    return {d["name"]: d["version"] for d in manifest["distributions"]}


def _installed(venv: Path) -> dict[str, str]:
    """What a venv holds, as its own interpreter reads it (pip and setuptools aside)."""
    code = ("import importlib.metadata as m, json, re; print(json.dumps({re.sub(r'[-_.]+', '-', "
            "d.metadata['Name']).lower(): d.version for d in m.distributions()}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", code], check=True,
                         capture_output=True, text=True).stdout
    return {k: v for k, v in json.loads(out).items() if k not in ("pip", "setuptools")}


def _venv(where: Path, built: Built) -> Path:
    manifest = json.loads((built.env / MANIFEST).read_text())
    subprocess.run([manifest["interpreter"]["path"], "-m", "venv", str(where)], check=True)
    return where


def test_requirements_install_with_real_pip(built: Built, index: LocalIndex,
                                            tmp_path: Path) -> None:
    out = tmp_path / "requirements.txt"
    res = cli("export", built.env, "--format", "requirements", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert all(" --hash=sha256:" in line for line in out.read_text().splitlines()[1:])
    venv = _venv(tmp_path / "venv", built)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--require-hashes", "--no-index", "--find-links", str(index.find_links),
                    "-r", str(out)], check=True, env=clean_pip_env())
    assert _installed(venv) == _dists(built)


def test_pylock_synced_by_uv(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "pylock.toml"
    res = cli("export", built.env, "--format", "pylock", "-o", out)
    assert res.exit_code == 0, res.stderr
    data = tomllib.loads(out.read_text())
    assert data["lock-version"] == "1.0"
    manifest = json.loads((built.env / MANIFEST).read_text())
    for dist in manifest["distributions"]:
        package = next(p for p in data["packages"] if p["name"] == dist["name"])
        artifacts = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert [a["name"] for a in artifacts] == [dist["artifact"]]
        assert artifacts[0]["hashes"]["sha256"] == dist["sha256"].removeprefix("sha256:")
        assert Path(artifacts[0].get("path", "/nowhere")).is_file() or "url" in artifacts[0]
    try:
        from packaging.pylock import Pylock
    except ImportError:
        pass   # a packaging older than 25.1 has no PEP 751 reader: uv below still reads it
    else:
        Pylock.from_dict(data).validate()
    venv = _venv(tmp_path / "venv", built)
    uv = shutil.which("uv", path=os.path.dirname(sys.executable))
    assert uv is not None, "uv (test extras) not installed beside the test interpreter"
    env = {**clean_pip_env(), "UV_NO_CONFIG": "1", "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
           "UV_OFFLINE": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("UV_") or k in
           ("UV_NO_CONFIG", "UV_CACHE_DIR", "UV_OFFLINE")}
    res2 = subprocess.run([uv, "pip", "sync", str(out), "--python", str(venv / "bin" / "python")],
                          env=env, capture_output=True, text=True)
    assert res2.returncode == 0, res2.stderr
    assert _installed(venv) == _dists(built)


def test_cyclonedx_validated(built: Built, tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    res = cli("export", built.env, "--format", "cyclonedx")
    assert res.exit_code == 0, res.stderr
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(res.stdout) is None
    sbom = json.loads(res.stdout)
    purls = {c.get("purl") for c in sbom["components"]}
    assert {f"pkg:pypi/{n}@{v}" for n, v in _dists(built).items()} <= purls
    python = next(c for c in sbom["components"] if c["type"] == "platform")
    manifest = json.loads((built.env / MANIFEST).read_text())
    assert python["version"] == manifest["interpreter"]["version"]
    assert {"name": "envbuild:manifest_digest", "value": built.digest} in \
        sbom["metadata"]["component"]["properties"]


@pytest.mark.parametrize("args, words", [
    (["--format", "spdx"], "--format: expected one of pylock, cyclonedx, requirements"),
    (["--format", "pylock"], "export describes an env"),
])
def test_bad_input(built: Built, args: list[str], words: str) -> None:
    target = built.env / MANIFEST if "pylock" in args else built.env
    res = cli("export", target, *args)
    assert res.exit_code == 2 and words in res.stderr, res.stderr
