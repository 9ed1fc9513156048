"""The re-push row of the image bench: an image pushed to an empty registry, then the same
recipe with one package upgraded pushed again; what the second push sends against the env's
own compressed layers (the base's excluded).

Both images come from copies of the recipe in bench/out/image/upgrade/ that pin every locked
distribution to its locked version, except the upgraded package: the "old" copy asks for a
release below the locked one (`<`), the "new" copy for the locked one. So the two locks
differ in that package alone, and the upgrade is old → new."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from common import ENVBUILD, base_env, ensure_lock
from engines import Engine, Registry, fail
from imagetasks import json_line, phases, run_marked

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.M)


def locked(lock: Path) -> dict[str, str]:
    """{name: version} of a lock."""
    return {name.lower(): version for name, version in _PIN.findall(lock.read_text())}


def recipe_copy(recipe: Path, where: Path, pins: dict[str, str]) -> Path:
    """`recipe` in `where` (same name, so the same env dir in the image), with `pins` (a
    requirement's version part per name) added to its dependencies; locked if stale."""
    text = recipe.read_text()
    anchor = "dependencies = [\n"
    if anchor not in text:
        fail(f"{recipe}: expected a line `dependencies = [` to add the pins after")
    lines = "".join(f'    "{name}{spec}",\n' for name, spec in sorted(pins.items()))
    text = text.replace(anchor, anchor + lines, 1)
    where.mkdir(parents=True, exist_ok=True)
    copy = where / recipe.name
    if not copy.exists() or copy.read_text() != text:
        copy.write_text(text)
    ensure_lock(copy)
    return copy


def compressed(store: Path, diff_id: str) -> int:
    """The size of envbuild's cached gzip blob of a layer (`blobs/<diff>-<blob>.tar.gz`)."""
    found = sorted((store / "blobs").glob(f"{diff_id.split(':', 1)[1]}-*.tar.gz"))
    if not found:
        fail(f"no compressed blob of {diff_id} in {store / 'blobs'}")
    return found[0].stat().st_size


def push(recipe: Path, tag: str, base: str, store: Path, engine: Engine
         ) -> tuple[dict[str, Any], dict[str, float], float]:
    got = run_marked([ENVBUILD, "image", str(recipe), "--tag", tag, "--base", base,
                      "--store", str(store), "--push", "--json"], engine.env(base_env()))
    return json_line(got.stdout), phases([got.marks]), got.ms


def push_rows(engine: Engine, registry: Registry, recipe: Path, work: Path, store: Path,
              base: str, package: str) -> dict[str, Any]:
    versions = locked(recipe.with_suffix(".lock"))
    name = package.lower()
    if name not in versions:
        fail(f"--upgrade-package {package}: not in {recipe.with_suffix('.lock')} "
             f"(expected one of {', '.join(sorted(versions))})")
    pins = {n: f"=={v}" for n, v in versions.items()}
    where = work / "upgrade"
    new = recipe_copy(recipe, where / "new", pins)
    old = recipe_copy(recipe, where / "old", {**pins, name: f"<{versions[name]}"})
    before, after = locked(old.with_suffix(".lock")), locked(new.with_suffix(".lock"))
    differ = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
    if differ != [name]:
        fail(f"the two locks should differ in {name} alone, found: {differ}")
    repo = f"{registry.host}/bench/webclient"
    first, first_phases, first_ms = push(old, f"{repo}:1", base, store, engine)
    second, second_phases, second_ms = push(new, f"{repo}:2", base, store, engine)
    client = engine.client()
    try:
        base_layers = len(client.images.get(base).attrs["RootFS"]["Layers"])
        # history() is newest first; its env entries, bottom first, match the env diff_ids
        history = [h for h in reversed(client.images.get(f"{repo}:2").history())
                   if str(h["CreatedBy"]).startswith("env: ")]
    finally:
        client.close()
    env1, env2 = first["diff_ids"][base_layers:], second["diff_ids"][base_layers:]
    env_bytes = sum(compressed(store, d) for d in env1)
    base_bytes = sum(compressed(store, d) for d in first["diff_ids"][:base_layers])
    changed = [d for d in env2 if d not in env1]
    layers = [{"created_by": h["CreatedBy"], "size": int(h["Size"]), "diff_id": d,
               "blob_bytes": compressed(store, d), "changed": d in changed}
              for h, d in zip(history, env2)]
    upgrade = f"{name} {before[name]} → {after[name]}"
    result: dict[str, Any] = {
        "upgrade": upgrade, "first": first, "second": second,
        "base_blob_bytes": base_bytes, "env_blob_bytes": env_bytes,
        "env_layers": len(env1), "changed_env_layers": len(changed),
        "changed_blob_bytes": sum(compressed(store, d) for d in changed),
        "new_env_layers": layers,
        "ratio": second["pushed_bytes"] / env_bytes,
        "first_push_ms": round(first_ms, 1), "second_push_ms": round(second_ms, 1),
        "first_phases": first_phases, "second_phases": second_phases}
    result["table"] = push_table(result)
    shutil.rmtree(where / "scratch", ignore_errors=True)
    return result


def push_table(r: dict[str, Any]) -> str:
    first, second = r["first"], r["second"]
    mb = 1e6
    return "\n".join([
        "| push | blobs sent | bytes sent | vs the env's layers | note |",
        "|---|---|---|---|---|",
        f"| first push, empty registry | {first['pushed_blobs']} | "
        f"{first['pushed_bytes'] / mb:,.2f} MB | — | base layer {r['base_blob_bytes'] / mb:,.1f}"
        f" MB + env's {r['env_layers']} layers {r['env_blob_bytes'] / mb:,.2f} MB + config "
        "(gzip, as pushed) |",
        f"| re-push after upgrading {r['upgrade']} | {second['pushed_blobs']} | "
        f"{second['pushed_bytes'] / mb:,.3f} MB | {r['ratio']:.3f}× | "
        f"{r['changed_env_layers']} of {r['env_layers']} env layers changed "
        f"({r['changed_blob_bytes'] / mb:,.3f} MB) + config |",
        "", "The env's layers after the upgrade (uncompressed / gzip):", "",
        *(f"- {x['created_by']}: {x['size'] / mb:,.2f} / {x['blob_bytes'] / mb:,.2f} MB"
          f"{' (changed)' if x['changed'] else ''}" for x in r["new_env_layers"]),
    ])
