"""The re-push row of the image bench: an image pushed to an empty registry, then the same
recipe with one package upgraded pushed again; what the second push sends against the env's
own compressed layers (the base's excluded).

Both images come from copies of the recipe in bench/out/image/upgrade/ that pin every locked
distribution to its locked version, except the upgraded package: the "old" copy asks for a
release below the locked one (`<`), the "new" copy for the locked one. So the two locks
differ in that package alone, and the upgrade is old → new."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from common import ENVBUILD, base_env, upgrade_pair
from engines import Engine, Registry, fail
from imagetasks import json_line, phases, run_marked


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
    where = work / "upgrade"
    old, new, upgrade = upgrade_pair(recipe, where, package)
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
