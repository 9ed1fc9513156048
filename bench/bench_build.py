"""Build speed of envbuild's installer against uv: warm builds with `--link copy`, `reflink`
and `hardlink` and with `--installer pip`, against `uv venv` + `uv pip sync` of the same lock;
a rebuild after upgrading one package; the store's size after ten one-package changes; and
for the report, uv into the same venv path every run (where its interpreter cache hits).

    python bench/bench_build.py [--runs N] [--recipe NAME ...] [--work DIR] [--store DIR]
                                [--upgrade-package P] [--size-package P] [--skip-size]

Every envbuild row and its uv baseline are timed in the same run, interleaved round by round
after one untimed round, and reported as medians. Each envbuild build goes into a fresh store
that shares the bench store's caches by hard links (so it builds, and downloads nothing); each
uv run into a fresh venv from uv's own cache, `--offline`. Prints markdown tables; writes
bench/out/build.json.

BENCH_NO_LINK=1 passes neither `--link` nor `--installer` to envbuild (every envbuild row
is then the plain build, and no link mode is checked): for an envbuild without them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from buildplaces import (  # noqa: E402
    WHEEL_CACHE,
    Places,
    Scratch,
    check_links,
    fresh_store,
    link_caches,
    only_env,
)
from buildsize import size_table, store_size  # noqa: E402
from common import (  # noqa: E402
    ENVBUILD,
    ROOT,
    UV,
    BenchEnv,
    Row,
    Task,
    base_env,
    ensure_env,
    fmt_ms,
    force_rmtree,
    interleave,
    machine,
    markdown_table,
    median,
    run_checked,
    upgrade_pair,
    uv_env,
    write_json,
)

from envbuild.trees import can_reflink  # noqa: E402

RECIPES = ("jupyter-stack", "webclient")
INDEX_URL = "https://pypi.org/simple"
NO_LINK = os.environ.get("BENCH_NO_LINK", "") not in ("", "0")
NO_REFLINK = "n/a: FS has no reflink"

E_COPY = "envbuild build --link copy"
E_REFLINK = "envbuild build --link reflink"
E_HARD = "envbuild build --link hardlink"
E_PIP = "envbuild build --installer pip"
E_UPGRADE = "envbuild build NEW --link hardlink (old lock's trees)"
U_COPY = "uv venv + uv pip sync --link-mode copy --compile-bytecode"
U_HARD = "uv venv + uv pip sync --link-mode hardlink"
U_UPGRADE = "uv venv + uv pip sync --link-mode hardlink NEW"
# uv keeps what it learns of an interpreter by the path it was given: into a new venv path
# (as every row above builds, and as envbuild builds each env at a new path) `uv pip sync`
# asks the new venv's Python first; into the same path every run it does not
U_HARD_SAME = "uv venv + uv pip sync --link-mode hardlink, one venv path every run"


def flags(*words: str) -> list[str]:
    """envbuild's options of the linked installer, or none under BENCH_NO_LINK."""
    return [] if NO_LINK else list(words)


@dataclass(frozen=True)
class Subject:
    """One recipe: its env in the bench store, the store the warm builds start from, and
    the upgrade's two copies."""

    env: BenchEnv
    warm_store: Path      # caches holding this recipe's build: where the warm builds start
    new: Path             # the recipe copy with the upgraded package (its lock differs so)
    upgrade: str          # "name old → new"
    upgrade_store: Path   # caches holding the old copy's build: where the rebuild starts


def prepare(name: str, places: Places, package: str) -> Subject:
    """The recipe's env in the bench store (fills its wheel cache), a store that built it
    and nothing else, the upgrade's copies, and a store that built the old copy."""
    recipe = ROOT / "recipes" / f"{name}.toml"
    env = ensure_env(recipe, places.store)
    old, new, upgrade = upgrade_pair(recipe, places.work / "upgrade" / name, package)
    return Subject(env, built_store(recipe, places, "warm", name), new, upgrade,
                   built_store(old, places, "upgrade", name))


def built_store(recipe: Path, places: Places, kind: str, name: str) -> Path:
    """A store holding `recipe`'s build alone (its wheels linked from the bench store, its
    trees and pycs its own): what a timed build's fresh store links. One recipe's caches,
    not the bench store's every recipe: making and removing a fresh store of every
    recipe's trees around each run churns the file system, which slows the file creations
    of whichever run comes next (a copy's most of all), and uv's runs make no such store."""
    store = places.work / f"{kind}-store-{name}"
    force_rmtree(store)
    link_caches(places.store, store, WHEEL_CACHE)
    # a first build also leaves the store's empty venv's start, as a user's store keeps it
    run_checked([ENVBUILD, "build", str(recipe), "--store", str(store), "--json"], base_env(),
                f"envbuild build {recipe}")
    return store


def fill_uv_cache(env: BenchEnv, places: Places) -> None:
    """uv's cache filled from the index for the recipe's lock."""
    scratch = Scratch(places.scratch)
    venv = scratch.new("uv-fill")
    uv = ["--no-config", "--cache-dir", str(places.uv_cache)]
    lock = env.recipe.with_suffix(".lock")   # the new copy's lock pins the same releases
    try:
        run_checked([UV, "venv", *uv, "--quiet", "--python", env.base_python, str(venv)],
                    uv_env(), "uv venv")
        run_checked([UV, "pip", "sync", *uv, "--index-url", INDEX_URL, "--python",
                     str(venv / "bin" / "python"), str(lock)], uv_env(),
                    f"uv pip sync {lock} (filling uv's cache)")
    finally:
        scratch.clear()


class Links:
    """Each task's first run is checked for its link mode (after the clock stops); the
    counts are kept for the report."""

    def __init__(self, scratch: Scratch) -> None:
        self.scratch = scratch
        self.seen: dict[str, tuple[int, int]] = {}

    def after(self, task: str, tree: Callable[[], Path], hard_links: bool | None
              ) -> Callable[[], None]:
        def cleanup() -> None:
            try:
                if task not in self.seen and hard_links is not None:
                    self.seen[task] = check_links(task, tree(), hard_links)
            finally:
                self.scratch.clear()
        return cleanup


def envbuild_task(name: str, recipe: Path, source: Path, options: list[str], links: Links,
                  hard_links: bool) -> Task:
    made: list[Path] = []

    def commands() -> list[list[str]]:
        made[:] = [fresh_store(links.scratch, source)]
        return [[ENVBUILD, "build", str(recipe), "--store", str(made[0]), "--offline",
                 "--json", *options]]

    return Task(name, commands, cleanup=links.after(name, lambda: only_env(made[0]),
                                                    None if NO_LINK else hard_links),
                settle=True)


def uv_task(name: str, lock: Path, python: str, mode: str, places: Places,
            links: Links, same_path: bool = False) -> Task:
    made: list[Path] = []

    def commands() -> list[list[str]]:
        venv = links.scratch.fixed("uv-same-venv") if same_path else links.scratch.new("uv-venv")
        made[:] = [venv]
        uv = ["--no-config", "--offline", "--cache-dir", str(places.uv_cache)]
        compile_ = ["--compile-bytecode"] if mode == "copy" else []
        return [[UV, "venv", *uv, "--quiet", "--python", python, str(venv)],
                [UV, "pip", "sync", *uv, "--link-mode", mode, *compile_,
                 "--python", str(venv / "bin" / "python"), str(lock)]]

    return Task(name, commands, env=uv_env(),
                cleanup=links.after(name, lambda: made[0], mode == "hardlink"), settle=True)


def tasks(s: Subject, places: Places, links: Links, reflink: bool) -> list[Task]:
    recipe, store, py = s.env.recipe, s.warm_store, s.env.base_python
    out = [envbuild_task(E_COPY, recipe, store, flags("--link", "copy"), links, False)]
    if reflink:   # clones have one link each, like copies
        out.append(envbuild_task(E_REFLINK, recipe, store, flags("--link", "reflink"), links,
                                 False))
    return out + [
        envbuild_task(E_HARD, recipe, store, flags("--link", "hardlink"), links, True),
        envbuild_task(E_PIP, recipe, store, flags("--installer", "pip"), links, False),
        envbuild_task(E_UPGRADE, s.new, s.upgrade_store, flags("--link", "hardlink"), links,
                      True),
        uv_task(U_COPY, recipe.with_suffix(".lock"), py, "copy", places, links),
        uv_task(U_HARD, recipe.with_suffix(".lock"), py, "hardlink", places, links),
        uv_task(U_UPGRADE, s.new.with_suffix(".lock"), py, "hardlink", places, links),
        uv_task(U_HARD_SAME, recipe.with_suffix(".lock"), py, "hardlink", places, links,
                same_path=True),
    ]


def rows(name: str, upgrade: str, s: dict[str, list[float]]) -> list[Row]:
    m = {k: median(v) for k, v in s.items()}

    def row(label: str, task: str, base: str, goal: str, limit: float | None) -> Row:
        if task not in s:
            return Row(f"{name}: {label}", math.nan, base, m[base], goal, note=NO_REFLINK)
        r = Row(f"{name}: {label}", m[task], base, m[base], goal,
                paired=[a / b for a, b in zip(s[task], s[base])])
        if limit is not None and r.ratio is not None:
            r.met = r.ratio <= limit
        return r

    return [row("warm build `--link copy`", E_COPY, U_COPY, "≤ 0.5×", 0.5),
            row("warm build `--link reflink`", E_REFLINK, U_COPY, "≤ 0.5×", 0.5),
            row("warm build `--link hardlink`", E_HARD, U_HARD, "≤ 2×", 2.0),
            row("warm build `--installer pip` (reference)", E_PIP, U_HARD, "— (report)", None),
            row(f"rebuild after upgrading {upgrade} (`--link hardlink`)", E_UPGRADE,
                U_UPGRADE, "≤ 2×", 2.0),
            row("warm build `--link hardlink`, against uv into one venv path", E_HARD,
                U_HARD_SAME, "— (report)", None)]


def row_json(r: Row) -> dict[str, Any]:
    out = r.to_json()
    if r.note == NO_REFLINK:
        out.update(median_ms=None, ratio=None, paired_ratio=None)
    return out


def table(rows_: list[Row]) -> str:
    lines = markdown_table(rows_).splitlines()
    for i, r in enumerate(rows_):
        if r.note == NO_REFLINK:
            lines[i + 2] = (f"| {r.name} | {NO_REFLINK} | {r.baseline} | "
                            f"{fmt_ms(r.baseline_ms)} | — | — | {r.goal} | — |")
    return "\n".join(lines)


def header(name: str, r: dict[str, Any], runs: int) -> str:
    load = r["load_average"]
    mode = " BENCH_NO_LINK=1: envbuild ran without `--link`/`--installer`." if NO_LINK else ""
    return (f"{name}: {r['distributions']} distributions, {r['files']:,} files; medians of "
            f"{runs} interleaved runs after one warm-up; warm wheel, tree and uv caches, "
            f"warm page cache; load average {load[0]:.2f} at start, {load[1]:.2f} at end."
            + mode)


def measure(name: str, places: Places, args: argparse.Namespace, reflink: bool
            ) -> tuple[list[Row], dict[str, Any]]:
    subject = prepare(name, places, args.upgrade_package)
    fill_uv_cache(subject.env, places)
    links = Links(Scratch(places.scratch))
    load = [os.getloadavg()[0]]
    try:
        samples = interleave(tasks(subject, places, links, reflink), args.runs, warmup=1,
                             label=name)
    finally:
        links.scratch.clear()
        force_rmtree(subject.warm_store)
        force_rmtree(subject.upgrade_store)
    load.append(os.getloadavg()[0])
    got = rows(name, subject.upgrade, samples)
    report = {"distributions": subject.env.distributions, "files": subject.env.files,
              "upgrade": subject.upgrade, "load_average": load,
              "links": {k: {"files": v[0], "hard_linked": v[1]} for k, v in links.seen.items()},
              "rows": [row_json(r) for r in got],
              "samples_ms": {k: [round(x, 2) for x in v] for k, v in samples.items()}}
    return got, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--recipe", action="append", choices=RECIPES,
                    help="a recipe of recipes/ (repeatable; default both)")
    ap.add_argument("--work", type=Path, help="put the work dir, the bench store and uv's "
                    "cache here (one file system; default bench/out)")
    ap.add_argument("--store", type=Path, help="the bench store (default bench/out/store)")
    ap.add_argument("--upgrade-package", default="requests",
                    help="the package of the upgrade row (default requests)")
    ap.add_argument("--size-package", default="urllib3",
                    help="the package whose ten releases the store-size row builds "
                    "(webclient; default urllib3)")
    ap.add_argument("--skip-size", action="store_true", help="no store-size row")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs: expected at least 3")
    places = Places.make(args.work, args.store)
    reflink = can_reflink(places.scratch)
    if NO_LINK:
        print("bench: BENCH_NO_LINK=1: envbuild runs without --link/--installer",
              file=sys.stderr)
    data: dict[str, Any] = {"machine": machine(), "runs": args.runs, "no_link": NO_LINK,
                            "reflink": reflink, "work": str(places.work), "recipes": {}}
    out: list[str] = []
    for name in args.recipe or RECIPES:
        got, data["recipes"][name] = measure(name, places, args, reflink)
        out += [header(name, data["recipes"][name], args.runs), "", table(got), ""]
    if not args.skip_size:
        data["store_size"] = store_size(ROOT / "recipes" / "webclient.toml", places,
                                        args.size_package, flags("--link", "hardlink"))
        out.append(size_table(data["store_size"]))
    force_rmtree(places.scratch)
    print("\n".join(out))
    path = write_json("build.json", data)
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
