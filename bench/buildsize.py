"""The store-size row of bench_build.py: ten builds of one recipe into one empty store, each
with another release of one package (every other distribution at its locked version), then
the store's size (du, a hard-linked file counted once) against ten copies of the env (the
ten envs' sizes, each measured alone)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from buildplaces import Places, du
from common import ENVBUILD, base_env, force_rmtree, locked, pinned_copy, run_checked

MB = 1e6


def version_chain(recipe: Path, where: Path, package: str, count: int
                  ) -> tuple[list[Path], list[str]]:
    """`count` locked copies of `recipe` in `where/v0`, `where/v1`, ...: the first with the
    locked release of `package`, each next one with the newest release below the one before."""
    name = package.lower()
    spec = f"=={locked(recipe.with_suffix('.lock')).get(name, '')}"
    copies, versions = [], []
    for i in range(count):
        copy, version = pinned_copy(recipe, where / f"v{i}", name, spec)
        copies.append(copy)
        versions.append(version)
        spec = f"<{version}"
    return copies, versions


def store_size(recipe: Path, places: Places, package: str, flags: list[str],
               count: int = 10) -> dict[str, Any]:
    """Build the chain into a new store (its wheel cache filled from the index, so it holds
    this recipe's wheels only) and measure."""
    copies, versions = version_chain(recipe, places.work / "size" / recipe.stem, package, count)
    store = places.work / "size-store"
    force_rmtree(store)
    store.mkdir(parents=True)
    envs: list[Path] = []
    build_ms: list[float] = []
    try:
        for copy in copies:
            t0 = time.perf_counter()
            out = run_checked([ENVBUILD, "build", str(copy), "--store", str(store), "--json",
                               *flags], base_env(), f"envbuild build {copy}")
            build_ms.append(round((time.perf_counter() - t0) * 1000.0, 1))
            envs.append(Path(json.loads(out.strip().splitlines()[-1])["path"]))
        subs = sorted((p for p in store.iterdir() if p.is_dir() and p.name != "envs"),
                      key=lambda p: p.name) + [store / "envs"]
        parts = dict(zip((p.name for p in subs), du(subs)))
        total = du([store])[0]
        each = [du([env])[0] for env in envs]
    finally:
        force_rmtree(store)
    return {"recipe": recipe.stem, "package": package.lower(), "versions": versions,
            "flags": flags, "store_bytes": total, "store_parts_bytes": parts,
            "env_bytes": each, "copies_bytes": sum(each), "ratio": total / sum(each),
            "build_ms": build_ms}


def size_table(r: dict[str, Any]) -> str:
    parts = ", ".join(f"{name} {size / MB:,.1f}" for name, size in
                      r["store_parts_bytes"].items() if size >= 0.05 * MB)
    how = f"`{' '.join(r['flags'])}`" if r["flags"] else "no `--link` (BENCH_NO_LINK)"
    return "\n".join([
        "| store after ten builds | store (du) | ten copies of the env (du) | ratio |",
        "|---|---|---|---|",
        f"| {r['recipe']}, {r['package']} {r['versions'][0]} … {r['versions'][-1]} "
        f"({len(r['versions'])} releases), {how} | {r['store_bytes'] / MB:,.1f} MB "
        f"({parts}) | {r['copies_bytes'] / MB:,.1f} MB | {r['ratio']:.2f}× |"])
