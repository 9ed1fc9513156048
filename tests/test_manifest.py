"""The manifest of a real build: canonical bytes, the schema's keys, digests that bind it to
the lock, the interpreter and the tree, and provenance kept outside it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Built, cli, envbuild, write_recipe
from packaging.utils import canonicalize_name
from pkgindex import LocalIndex, write_wheel

MANIFEST = "envbuild-manifest.json"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _manifest(env: Path) -> tuple[bytes, dict[str, Any]]:
    data = (env / MANIFEST).read_bytes()
    return data, json.loads(data)


def _lock_entries(lock_path: Path) -> dict[str, tuple[str, set[str]]]:
    """{PEP 503 name: (version, {sha256:hex, ...})}, read without envbuild's reader."""
    text = re.sub(r"\\\n\s*", " ", lock_path.read_text())
    out: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)",
                     line)
        if m:
            hashes = set(re.findall(r"sha256:[0-9a-f]{64}", m.group(3)))
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = (m.group(2), hashes)
    return out


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{path}[{i}]")]
    return [(path, value)] if isinstance(value, str) else []


def test_manifest_is_canonical_json(built: Built) -> None:
    data, manifest = _manifest(built.env)
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode("utf-8")
    assert data == canonical
    assert not data.endswith(b"\n")
    assert built.digest == "sha256:" + hashlib.sha256(data).hexdigest()


def test_manifest_schema_and_keys(built: Built) -> None:
    _data, m = _manifest(built.env)
    assert m["schema"] == "envbuild.manifest/1"
    assert {"schema", "name", "env_key", "inputs", "interpreter", "distributions",
            "tree_digest", "host", "environment"} <= set(m)
    assert m["name"] == "demo"
    assert built.env.name == f"demo-{m['env_key'].removeprefix('sha256:')[:16]}"

    recipe_bytes = built.recipe.read_bytes()
    lock_path = built.recipe.with_suffix(".lock")
    assert set(m["inputs"]) == {"recipe", "lock"}
    assert m["inputs"]["lock"] == "sha256:" + hashlib.sha256(lock_path.read_bytes()).hexdigest()
    # the lock's header records the recipe digest it was made from
    assert f"# recipe: {m['inputs']['recipe']}\n" in lock_path.read_text()
    assert m["inputs"]["recipe"] != m["inputs"]["lock"] and recipe_bytes

    interp = m["interpreter"]
    assert set(interp) >= {"implementation", "version", "abi", "platform", "libc", "path",
                           "sha256", "stdlib_digest"}
    assert interp["implementation"] == sys.implementation.name
    assert interp["version"] == platform.python_version()
    assert interp["abi"] == f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert interp["platform"] == "linux_" + platform.machine()
    assert interp["libc"] == " ".join(platform.libc_ver()).strip()
    assert interp["path"] == os.path.realpath(sys.executable)
    with open("/proc/self/maps") as fh:   # what this (same) interpreter really loaded
        libs = {ln.split(None, 5)[5].strip() for ln in fh if len(ln.split(None, 5)) == 6}
    lib = [p for p in libs if os.path.basename(p).startswith("libpython")]
    assert interp["libpython"] == ({"path": lib[0], "sha256": "sha256:" + hashlib.sha256(
        Path(lib[0]).read_bytes()).hexdigest()} if lib else None)
    assert interp["sha256"] == "sha256:" + hashlib.sha256(
        Path(interp["path"]).read_bytes()).hexdigest()
    assert os.path.realpath(built.env / "bin" / "python") == interp["path"]

    assert set(m["host"]) >= {"libraries", "glibc"}
    assert isinstance(m["host"]["libraries"], dict)
    glibc = m["host"]["glibc"]
    assert glibc is None or re.fullmatch(r"2\.\d+", glibc)
    for soname, files in m["host"]["libraries"].items():
        assert isinstance(soname, str) and files and all(isinstance(f, str) for f in files)

    env = m["environment"]
    assert env["set"] == {"OMP_NUM_THREADS": "1"}
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        assert name in env["unset"]


def test_distributions_match_the_lock(built: Built) -> None:
    _data, m = _manifest(built.env)
    locked = _lock_entries(built.recipe.with_suffix(".lock"))
    dists = m["distributions"]
    assert [d["name"] for d in dists] == sorted(d["name"] for d in dists)
    assert {d["name"] for d in dists} == set(locked)
    assert {"alpha", "beta", "gamma", "delta", "pthpkg", "sdistonly"} == set(locked)
    for d in dists:
        assert set(d) >= {"name", "version", "artifact", "sha256"}
        assert d["name"] == canonicalize_name(d["name"])
        version, hashes = locked[d["name"]]
        assert d["version"] == version
        assert d["sha256"] in hashes
        # the named artifact is the file the lock hashed
        cached = built.store / "wheels" / d["sha256"].removeprefix("sha256:") / d["artifact"]
        assert "sha256:" + hashlib.sha256(cached.read_bytes()).hexdigest() == d["sha256"]
    site = next(built.env.glob("lib/python*/site-packages"))
    stems = [p.name.removesuffix(".dist-info").split("-") for p in site.glob("*.dist-info")]
    installed = {canonicalize_name(name): version for name, version in stems}
    assert installed == {d["name"]: d["version"] for d in dists}


def test_every_digest_is_sha256_hex(built: Built) -> None:
    _data, m = _manifest(built.env)
    named = [m["env_key"], m["inputs"]["recipe"], m["inputs"]["lock"],
             m["interpreter"]["sha256"], m["interpreter"]["stdlib_digest"], m["tree_digest"],
             *(d["sha256"] for d in m["distributions"])]
    for value in named:
        assert DIGEST.fullmatch(value), value
    for where, value in _strings(m):
        if "sha256" in value or re.fullmatch(r"[0-9a-f]{40,}", value):
            assert DIGEST.fullmatch(value), f"{where}: {value!r}"


def test_tree_digest_is_the_files_sidecar(built: Built) -> None:
    _data, m = _manifest(built.env)
    sidecar = (built.env / ".envbuild" / "files").read_bytes()
    assert m["tree_digest"] == "sha256:" + hashlib.sha256(sidecar).hexdigest()

    # and the sidecar lists the tree as it is: path, mode, content, symlinks by target
    listed: dict[str, tuple[str, int, int, str]] = {}
    lines = sidecar.decode().split("\n")
    assert lines[0].startswith("envbuild.files/")
    for line in lines[1:]:
        if line:
            kind, mode, size, digest, rel = line.split("\t")
            listed[rel] = (kind, int(mode, 8), int(size), digest)
    found: dict[str, tuple[str, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(built.env):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(built.env).as_posix()
            if rel == MANIFEST or rel == ".envbuild" or rel.startswith(".envbuild/"):
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path).encode()
                found[rel] = ("l", 0, len(target), hashlib.sha256(target).hexdigest())
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
                found[rel] = ("f", stat.S_IMODE(st.st_mode), len(data),
                              hashlib.sha256(data).hexdigest())
    assert listed == found


def test_provenance_lives_outside_the_manifest(built: Built) -> None:
    data, _m = _manifest(built.env)
    path = built.env / ".envbuild" / "provenance.json"
    prov = json.loads(path.read_bytes())
    assert set(prov) >= {"built_utc", "host", "user", "envbuild_version"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["built_utc"])
    import envbuild

    assert prov["envbuild_version"] == envbuild.__version__
    assert prov["built_utc"].encode() not in data
    assert b"built_utc" not in data and b"envbuild_version" not in data


@pytest.fixture()
def odd_name_env(index: LocalIndex, tmp_path: Path) -> Path:
    """A build with a project whose name needs PEP 503 normalizing (Zeta_Pkg.Name)."""
    links = tmp_path / "r" / "links"
    links.mkdir(parents=True)
    write_wheel(str(links), "Zeta_Pkg_Name", "1.0",
                "Metadata-Version: 2.1\nName: Zeta_Pkg.Name\nVersion: 1.0\n",
                {"zeta_pkg.py": "VALUE = 1\n"}, "")
    recipe = write_recipe(tmp_path / "r", index, deps=["Zeta_Pkg.Name", "Gamma"],
                          name="odd", extra='find-links = ["links"]\n')
    res = cli("lock", recipe)
    assert res.exit_code == 0, res.stderr
    built = envbuild("build", recipe, "--store", tmp_path / "store", "--json")
    assert built.returncode == 0, built.stderr
    return Path(json.loads(built.stdout.strip().splitlines()[-1])["path"])


def test_distribution_names_are_pep503_normalized(odd_name_env: Path) -> None:
    _data, m = _manifest(odd_name_env)
    by_name = {d["name"]: d for d in m["distributions"]}
    assert set(by_name) == {"zeta-pkg-name", "gamma"}
    assert by_name["zeta-pkg-name"]["artifact"] == "Zeta_Pkg_Name-1.0-py3-none-any.whl"
    assert cli("verify", odd_name_env, "--level", "full").exit_code == 0


# ---- the model ---------------------------------------------------------------------------


def test_the_model_reads_back_byte_for_byte(built: Built) -> None:
    from envbuild.manifest import read_manifest

    data = (built.env / "envbuild-manifest.json").read_bytes()
    model = read_manifest(built.env)
    assert model.to_bytes() == data
    assert model.digest == built.digest
    assert model.name == "demo"
    assert {d.name for d in model.distributions} >= {"beta", "sdistonly", "delta"}
    assert model.interpreter.path == os.path.realpath(sys.executable)


def _tampered(built: Built, tmp_path: Path, change: Any) -> Path:
    env = tmp_path / "env"
    env.mkdir()
    raw = json.loads((built.env / "envbuild-manifest.json").read_bytes())
    change(raw)
    (env / "envbuild-manifest.json").write_text(json.dumps(raw))
    return env


def test_a_newer_schema_is_refused_with_a_way_out(built: Built, tmp_path: Path) -> None:
    from envbuild.errors import ManifestError
    from envbuild.manifest import read_manifest

    env = _tampered(built, tmp_path, lambda m: m.update(schema="envbuild.manifest/2"))
    with pytest.raises(ManifestError, match="newer than 'envbuild.manifest/1'.*upgrade envbuild"):
        read_manifest(env)


def test_every_problem_is_named_at_once(built: Built, tmp_path: Path) -> None:
    from envbuild.errors import ManifestError
    from envbuild.manifest import read_manifest

    def change(m: dict[str, Any]) -> None:
        del m["tree_digest"]
        del m["interpreter"]["sha256"]
        m["distributions"] = [{"name": "x"}]

    with pytest.raises(ManifestError) as info:
        read_manifest(_tampered(built, tmp_path, change))
    message = str(info.value)
    assert "tree_digest: expected str, found nothing" in message
    assert "interpreter.sha256: expected a value, found none" in message
    assert "distributions[0]: expected name, version, artifact and sha256" in message


def test_not_json_and_not_ours(tmp_path: Path) -> None:
    from envbuild.errors import ManifestError
    from envbuild.manifest import read_manifest

    (tmp_path / "envbuild-manifest.json").write_bytes(b"\xff not json")
    with pytest.raises(ManifestError, match="expected a JSON manifest"):
        read_manifest(tmp_path)
    (tmp_path / "envbuild-manifest.json").write_text('{"schema": "other/1"}')
    with pytest.raises(ManifestError, match="not an envbuild manifest"):
        read_manifest(tmp_path)
