"""The spine, side by side with its baselines: verify (quick, files, full), build from a warm
wheel cache, cache hit and `lock --check`, on the jupyter-stack env (~100 distributions).

    python bench/bench_spine.py [--runs N] [--light-runs M] [--store DIR]
                                [--skip-heavy | --skip-builds]

Every row and its baseline are timed in the same run, interleaved round by round, and
reported as medians. Prints a markdown table; writes bench/out/spine.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_STORE,
    ENVBUILD,
    OUT,
    RECIPE,
    UV,
    BenchEnv,
    Row,
    Task,
    base_env,
    ensure_env,
    force_rmtree,
    interleave,
    machine,
    markdown_table,
    median,
    run_checked,
    uv_env,
    write_json,
)

INDEX_URL = "https://pypi.org/simple"
UV_CACHE = OUT / "uv-cache"
SCRATCH = OUT / "scratch"
WHEEL_CACHE = ("wheels", "built")

# The launch path of `envbuild-guard`, minus the exec of CMD and the run record.
QUICK_SNIPPET = ("import sys; sys.path.insert(0, sys.argv[1] + '/lib/envbuild-launch'); "
                 "from envbuild.verify import verify; r = verify(sys.argv[1], level=sys.argv[2]); "
                 "sys.exit(0 if r.ok else 1)")


def light_tasks(env: BenchEnv) -> list[Task]:
    e, py = str(env.path), str(env.path / "bin" / "python")
    # a host cache of its own, whose record of the last clean files-level check is removed
    # after each run: every run of that task is a host's first check of the env
    first = SCRATCH / "first-check-cache"

    def forget() -> None:
        for record in first.glob("envbuild/hosts/*/files-since-*"):
            record.unlink()

    return [
        Task("quick: envbuild verify ENV", lambda: [[ENVBUILD, "verify", e]]),
        Task("quick: launch path", lambda: [[py, "-I", "-S", "-c", QUICK_SNIPPET, e, "quick"]]),
        Task("quick: envbuild-guard -- true",
             lambda: [[str(env.path / "bin" / "envbuild-guard"), "--", "true"]]),
        Task("uv pip check", lambda: [[UV, "pip", "check", "--no-config", "--cache-dir",
                                       str(UV_CACHE), "--python", py]], env=uv_env()),
        Task("files: envbuild verify --level files",
             lambda: [[ENVBUILD, "verify", e, "--level", "files"]]),
        Task("files: launch path", lambda: [[py, "-I", "-S", "-c", QUICK_SNIPPET, e, "files"]]),
        Task("files: launch path, first check", lambda: [[py, "-I", "-S", "-c", QUICK_SNIPPET,
                                                          e, "files"]],
             env={**base_env(), "XDG_CACHE_HOME": str(first)}, cleanup=forget),
        Task("find -printf (lstat every path)",
             lambda: [["find", e, "-printf", "%m %s %p\n"]]),
        Task("cache hit: envbuild build", lambda: [[ENVBUILD, "build", str(env.recipe),
                                                    "--store", str(env.store)]]),
        Task("envbuild lock --check", lambda: [[ENVBUILD, "lock", "--check", str(env.recipe)]]),
    ]


def full_tasks(env: BenchEnv) -> list[Task]:
    """Full verify and its baseline, in rounds of their own: next to builds, the writeback
    of a build's 550 MB lands on whichever of them runs next."""
    e = str(env.path)
    return [
        Task("full: envbuild verify --level full",
             lambda: [[ENVBUILD, "verify", e, "--level", "full"]]),
        Task("find | xargs -P2 sha256sum",
             lambda: [["sh", "-c", f"find {shlex.quote(e)} -type f -print0 | "
                                   "xargs -0 -P2 -n500 sha256sum > /dev/null"]]),
    ]


def heavy_tasks(env: BenchEnv) -> list[Task]:
    lock = env.recipe.with_suffix(".lock")
    counter = itertools.count()
    made: list[Path] = []

    def fresh_store(subs: tuple[str, ...]) -> list[list[str]]:
        """A new store whose caches `subs` hold the bench store's files (hard links): the
        wheel cache (wheels/, built/) so the build does everything but download, and with
        pycs/ also the per-wheel pyc cache."""
        store = SCRATCH / f"store-{os.getpid()}-{next(counter)}"
        store.mkdir(parents=True)
        for sub in subs:
            if (env.store / sub).is_dir():
                shutil.copytree(env.store / sub, store / sub, copy_function=os.link)
        made.append(store)
        return [[ENVBUILD, "build", str(env.recipe), "--store", str(store), "--json"]]

    def fresh_venv(offline: bool) -> list[list[str]]:
        venv = SCRATCH / f"uv-venv-{os.getpid()}-{next(counter)}"
        made.append(venv)
        sync = [UV, "pip", "sync", "--no-config", "--cache-dir", str(UV_CACHE),
                "--link-mode", "copy", "--compile-bytecode", "--index-url", INDEX_URL,
                "--python", str(venv / "bin" / "python"), str(lock)]
        if offline:
            sync.insert(3, "--offline")
        return [[env.base_python, "-I", "-m", "venv", "--without-pip", str(venv)], sync]

    def cleanup() -> None:
        while made:
            force_rmtree(made.pop())

    pyc_cache = env.store / "pycs"
    with_pycs = pyc_cache.is_dir() and any(pyc_cache.iterdir())
    tasks = [
        Task("build: warm wheel cache, fresh store", lambda: fresh_store(WHEEL_CACHE),
             cleanup=cleanup),
        Task("venv + uv pip sync (warm uv cache)", lambda: fresh_venv(False), env=uv_env(),
             cleanup=cleanup),
        Task("venv + uv pip sync --offline", lambda: fresh_venv(True), env=uv_env(),
             cleanup=cleanup),
    ]
    if with_pycs:   # an envbuild with a per-store pyc cache, filled by the bench env's build
        tasks.append(Task("build: warm wheel and pyc caches, fresh store",
                          lambda: fresh_store(WHEEL_CACHE + ("pycs",)), cleanup=cleanup))
    return tasks


def check_fresh_build_is_real(env: BenchEnv) -> None:
    """A fresh store with pre-filled wheels must build, not hit a cache."""
    task = next(t for t in heavy_tasks(env) if t.name == "build: warm wheel cache, fresh store")
    argv = task.commands()[0]
    try:
        out = run_checked(argv, base_env(), "a build into a fresh store")
    finally:
        task.cleanup()
    if json.loads(out.strip().splitlines()[-1])["cached"]:
        sys.exit("bench: a build into a fresh store was a cache hit; the bench is broken")


def rows(files: int, s: dict[str, list[float]]) -> list[Row]:
    m = {name: median(v) for name, v in s.items()}
    out: list[Row] = []

    def add(name: str, baseline: str = "", goal: str = "", limit: float | None = None,
            absolute: float | None = None, label: str = "") -> None:
        if name not in m:
            return
        row = Row(label or name, m[name], baseline, m.get(baseline) if baseline else None,
                  goal)
        if baseline in s:
            row.paired = [a / b for a, b in zip(s[name], s[baseline])]
        if limit is not None and row.ratio is not None:
            row.met = row.ratio <= limit if not goal.startswith("<") else row.ratio < limit
        if absolute is not None:
            row.met = row.ms <= absolute
        out.append(row)

    add("quick: envbuild verify ENV", "uv pip check", label="quick: `envbuild verify ENV` (CLI)")
    add("quick: launch path", "uv pip check", "< 1.0×", 1.0,
        label="quick: launch path (`python -I -S`, verify())")
    add("quick: envbuild-guard -- true", "uv pip check", "< 1.0×", 1.0,
        label="quick: `envbuild-guard -- true`")
    add("files: envbuild verify --level files", "find -printf (lstat every path)",
        label=f"files: `envbuild verify --level files` ({files:,} files)")
    add("files: launch path", "find -printf (lstat every path)", "≤ 1.5×", 1.5,
        label="files: launch path (`python -I -S`, verify()), after a clean check here")
    add("files: launch path, first check", "find -printf (lstat every path)",
        label="files: launch path, a host's first check (no record)")
    add("full: envbuild verify --level full", "find | xargs -P2 sha256sum", "≤ 1.0×", 1.0,
        label="full: `envbuild verify --level full`")
    add("build: warm wheel cache, fresh store", "venv + uv pip sync (warm uv cache)", "≤ 1.5×",
        1.5, label="build: warm wheel cache, fresh store (CLI)")
    add("build: warm wheel cache, fresh store", "venv + uv pip sync --offline",
        label="build, vs uv --offline (info)")
    add("build: warm wheel and pyc caches, fresh store", "venv + uv pip sync (warm uv cache)",
        label="build, pyc cache warm too (info)")
    # a cache hit verifies the env at the files level before handing it out
    files_cli = m.get("files: envbuild verify --level files")
    add("cache hit: envbuild build", "files: envbuild verify --level files",
        goal="≤ files verify + 200 ms",
        absolute=None if files_cli is None else files_cli + 200.0,
        label="cache hit: `envbuild build` (CLI; verifies at the files level)")
    add("envbuild lock --check", label="`envbuild lock --check` (CLI)")
    return out


def render(data: dict[str, Any]) -> str:
    env, runs, load = data["env"], data["runs"], data["loadavg"]
    heavy = str(runs["heavy"]) if runs["heavy"] else "skipped"
    header = (f"jupyter-stack: {env['distributions']} distributions, {env['files']:,} files; "
              f"medians of {runs['light']} (light, and full verify in rounds of its own) / "
              f"{heavy} (builds) interleaved runs, "
              f"warm page cache; load average {load['start']:.2f} at start, "
              f"{load['end']:.2f} at end")
    return markdown_table(rows(env["files"], data["samples_ms"]), header)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="runs of the heavy rows (default 7)")
    ap.add_argument("--light-runs", type=int, default=None,
                    help="runs of the light rows (default 3 × --runs, i.e. 21)")
    ap.add_argument("--rebuild", action="store_true",
                    help="rebuild the bench env if its carried launch modules (guard, "
                    "verify) are older than envbuild's")
    ap.add_argument("--store", type=Path, default=DEFAULT_STORE,
                    help=f"the bench store, reused between runs (default {DEFAULT_STORE})")
    ap.add_argument("--skip-heavy", action="store_true",
                    help="only the light rows (no full verify, no builds)")
    ap.add_argument("--skip-builds", action="store_true",
                    help="the light rows and full verify, no builds")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="measure nothing: print the table of an earlier spine.json")
    args = ap.parse_args()
    if args.report:
        print(render(json.loads(args.report.read_text())))
        return
    light_runs = args.light_runs or 3 * args.runs

    env = ensure_env(RECIPE, args.store.absolute(), args.rebuild)
    print(f"bench: env {env.path}: {env.distributions} distributions, {env.files:,} files",
          file=sys.stderr)
    load_start = os.getloadavg()[0]
    samples = interleave(light_tasks(env), light_runs, label="light")
    if not args.skip_heavy:
        os.sync()
        samples.update(interleave(full_tasks(env), light_runs, label="full"))
    if not (args.skip_heavy or args.skip_builds):
        check_fresh_build_is_real(env)
        samples.update(interleave(heavy_tasks(env), args.runs, label="heavy"))
    force_rmtree(SCRATCH)

    data = {
        "machine": machine(),
        "loadavg": {"start": load_start, "end": os.getloadavg()[0]},
        "env": {"path": str(env.path), "manifest_digest": env.manifest_digest,
                "distributions": env.distributions, "files": env.files,
                "stale_launch_modules": list(env.stale_launch)},
        "runs": {"light": light_runs,
                 "heavy": 0 if args.skip_heavy or args.skip_builds else args.runs},
        "rows": [r.to_json() for r in rows(env.files, samples)],
        "samples_ms": {k: [round(x, 2) for x in v] for k, v in samples.items()},
    }
    print(render(data))
    path = write_json("spine.json", data)
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
