"""The image's own bytes, without an engine: the env of a real build archived as the engine
exports it, written into layers twice, and the config."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from conftest import Built

from envbuild import imagelayers
from envbuild.imagelayers import BaseImage, ImageConfig, env_layers, write_config, write_loadable

ENV_DIR = "/opt/envbuild/demo"


def _exported(env: Path, out: Path) -> Path:
    """The env as `container.get_archive(ENV_DIR)` gives it: its dir's name first."""
    with tarfile.open(out, "w") as tf:
        tf.add(env, arcname="demo")
    return out


def test_layers_are_deterministic_and_complete(tmp_path: Path, built: Built) -> None:
    archive = _exported(built.env, tmp_path / "env.tar")
    runs = []
    for n in (1, 2):
        parts = tmp_path / f"parts{n}"
        parts.mkdir()
        runs.append(env_layers(archive, ENV_DIR, parts, 315532800))
    (first, manifest), (second, _) = runs
    assert [layer.diff_id for layer in first] == [layer.diff_id for layer in second]
    assert manifest == (built.env / "envbuild-manifest.json").read_bytes()
    names: list[str] = []
    for layer in first:
        assert layer.diff_id == "sha256:" + hashlib.sha256(layer.path.read_bytes()).hexdigest()
        with tarfile.open(layer.path) as tf:
            members = tf.getmembers()
        listed = [m.name for m in members]
        assert listed == sorted(listed, key=lambda n: n.split("/")), layer.created_by
        assert listed[:2] == ["opt", "opt/envbuild"]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (315532800, 0, 0, "", "")
            assert not m.pax_headers, m.name
            parent = m.name.rsplit("/", 1)[0]
            assert "/" not in m.name or parent in listed, m.name   # explicit parents
        names += [m.name for m in members if not m.isdir()]
    on_disk = sorted(f"opt/envbuild/demo/{p.relative_to(built.env)}"
                     for p in built.env.rglob("*") if not p.is_dir() or p.is_symlink())
    assert sorted(names) == on_disk           # every file once, in exactly one layer
    assert first[-1].created_by == "env: manifest, sidecars and guard"
    with tarfile.open(first[-1].path) as tf:
        last = {m.name for m in tf.getmembers()}
    assert "opt/envbuild/demo/envbuild-manifest.json" in last
    assert "opt/envbuild/demo/bin/envbuild-guard" in last


def test_large_distributions_get_layers_of_their_own(tmp_path: Path, built: Built) -> None:
    """With the threshold at one byte every distribution is "large": each gets a layer, in
    name order, and its files (RECORD's, and its pycs) are there and nowhere else."""
    archive = _exported(built.env, tmp_path / "env.tar")
    saved = imagelayers.MIN_OWN_LAYER
    imagelayers.MIN_OWN_LAYER = 1
    try:
        layers, _ = env_layers(archive, ENV_DIR, tmp_path, 0)
    finally:
        imagelayers.MIN_OWN_LAYER = saved
    dists = sorted(json.loads(built.env.joinpath("envbuild-manifest.json").read_text())
                   ["distributions"], key=lambda d: d["name"])
    own = [layer.created_by[len("env: "):] for layer in layers[1:-1]]
    assert own == [d["name"] for d in dists][:imagelayers.MAX_DIST_LAYERS]
    with tarfile.open(layers[own.index("alpha") + 1].path) as tf:
        files = [m.name for m in tf.getmembers() if m.isfile()]
    assert any(n.endswith("/alpha/__init__.py") for n in files)
    assert any("/alpha/__pycache__/" in n for n in files)
    assert all("alpha" in n for n in files), files


def test_config_and_loadable_archive(tmp_path: Path, built: Built) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    layers, _ = env_layers(_exported(built.env, tmp_path / "env.tar"), ENV_DIR, parts, 0)
    base = BaseImage({"architecture": "amd64", "os": "linux",
                      "config": {"Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]}}, [])
    spec = ImageConfig(name="demo", env_dir=ENV_DIR, epoch=0, manifest_digest=built.digest,
                       user="65532:65532", cmd=["python"])
    config = write_config(parts, base, layers, spec)
    data = config.path.read_bytes()
    assert config.image_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert write_config(parts, base, layers, spec).image_id == config.image_id
    cfg = json.loads(data)
    assert cfg["created"] == "1970-01-01T00:00:00Z"
    assert cfg["config"]["Entrypoint"] == [f"{ENV_DIR}/bin/envbuild-guard"]
    assert cfg["config"]["Env"][0] == f"PATH={ENV_DIR}/bin:/usr/bin:/bin"
    assert cfg["config"]["Labels"]["io.envbuild.manifest"] == built.digest
    assert cfg["config"]["User"] == "65532:65532"
    assert cfg["rootfs"]["diff_ids"] == [layer.diff_id for layer in layers]
    out = write_loadable(parts, config, tmp_path / "image.tar", "localhost/demo:1")
    with tarfile.open(out) as tf:
        index = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert index[0]["RepoTags"] == ["localhost/demo:1"]
        for name, layer in zip(index[0]["Layers"], layers):
            blob = tf.extractfile(name)
            assert blob is not None
            assert hashlib.sha256(blob.read()).hexdigest() == layer.diff_id[7:]
