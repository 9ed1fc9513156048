"""Launch-time verification: what `envbuild-guard` and `envbuild run` add to a bare
`ENV/bin/python -c pass`, and the quick level's syscall count on a small and a large env.

    python bench/bench_launch.py [--runs N] [--store DIR] [--skip-strace]

Prints markdown tables; writes bench/out/launch.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_STORE,
    ENVBUILD,
    OUT,
    RECIPE,
    BenchEnv,
    Task,
    base_env,
    ensure_env,
    ensure_lock,
    fmt_ms,
    interleave,
    machine,
    median,
    write_json,
)

STRACE = "/usr/bin/strace"
SMALL_DIR = OUT / "launch-small"
SMALL_DEPS = ["requests", "click", "rich"]     # 10 distributions once resolved
# Syscalls that name or read a path in the env: what "O(1) in the number of files" is about.
FS_CALLS = {"open", "openat", "openat2", "stat", "lstat", "fstat", "newfstatat", "statx",
            "access", "faccessat", "faccessat2", "getdents64", "readlink", "readlinkat", "read"}
GROWTH_LIMIT = 10     # syscalls the quick level may add from 10 to ~100 distributions
VERIFY_SNIPPET = ("import sys; sys.path.insert(0, sys.argv[1] + '/lib/envbuild-launch'); "
                  "from envbuild.verify import verify; r = verify(sys.argv[1], level=sys.argv[2]); "
                  "sys.exit(0 if r.ok else 1)")


def envbuild_python() -> str:
    """The interpreter for `python -m envbuild`: this one if it has envbuild, else the one
    beside the console script."""
    if importlib.util.find_spec("envbuild") is not None:
        return sys.executable
    return str(Path(ENVBUILD).parent / "python")


def small_env(store: Path, rebuild: bool, hook: bool = False) -> BenchEnv:
    """The 10-distribution env; with `hook`, the same with `[launch] hook = true`."""
    SMALL_DIR.mkdir(parents=True, exist_ok=True)
    name = "launch-small-hooked" if hook else "launch-small"
    recipe = SMALL_DIR / f"{name}.toml"
    text = (f'name = "{name}"\nrequires-python = ">=3.11,<3.12"\n'
            f"dependencies = {json.dumps(SMALL_DEPS)}\n"
            + ("\n[launch]\nhook = true\n" if hook else ""))
    if not recipe.exists() or recipe.read_text() != text:
        recipe.write_text(text)
    ensure_lock(recipe)
    return ensure_env(recipe, store, rebuild)


# ---- wall time --------------------------------------------------------------------------


HOOK_BARE = "small env: ENV/bin/python -c pass"
HOOK_ROW = "small env + .pth hook: ENV/bin/python -c pass"


def launch_tasks(env: BenchEnv, py_m: str, small: BenchEnv, hooked: BenchEnv) -> list[Task]:
    e = str(env.path)
    py = str(env.path / "bin" / "python")
    return [
        Task(HOOK_BARE, lambda: [[str(small.path / "bin" / "python"), "-c", "pass"]]),
        Task(HOOK_ROW, lambda: [[str(hooked.path / "bin" / "python"), "-c", "pass"]]),
        Task("bare: ENV/bin/python -c pass", lambda: [[py, "-c", "pass"]]),
        Task("ENV/bin/python -I -S -c pass", lambda: [[py, "-I", "-S", "-c", "pass"]]),
        Task("envbuild-guard -- python -c pass",
             lambda: [[str(env.path / "bin" / "envbuild-guard"), "--", "python", "-c", "pass"]]),
        Task("envbuild run (console script)",
             lambda: [[ENVBUILD, "run", e, "--", "python", "-c", "pass"]]),
        Task("envbuild run (python -m envbuild)",
             lambda: [[py_m, "-m", "envbuild", "run", e, "--", "python", "-c", "pass"]]),
    ]


GOALS = {HOOK_ROW: 5.0,
         "envbuild-guard -- python -c pass": 20.0,
         "envbuild run (console script)": 30.0,
         "envbuild run (python -m envbuild)": 30.0}


def time_rows(samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    out = []
    for name, values in samples.items():
        # the hook is measured against the same small env without it
        bare = median(samples[HOOK_BARE if name == HOOK_ROW else "bare: ENV/bin/python -c pass"])
        ms = median(values)
        goal = GOALS.get(name)
        out.append({"name": name, "median_ms": round(ms, 2),
                    "added_ms": round(ms - bare, 2),
                    "goal_added_ms": goal,
                    "met": None if goal is None else ms - bare <= goal})
    return out


def time_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| name | median ms | added over bare, ms | goal | met? |", "|---|---|---|---|---|"]
    for r in rows:
        goal = r["goal_added_ms"]
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        added = "—" if r["name"] in ("bare: ENV/bin/python -c pass", HOOK_BARE) \
            else f"{r['added_ms']:+.1f}"
        lines.append(f"| {r['name']} | {fmt_ms(float(r['median_ms']))} | {added} | "
                     f"{'—' if goal is None else f'≤ {goal:.0f} ms'} | {met} |")
    return "\n".join(lines)


# ---- syscalls ---------------------------------------------------------------------------


def strace_counts(argv: list[str]) -> dict[str, int]:
    """{syscall: calls} of argv and its children, from `strace -f -c`."""
    with tempfile.NamedTemporaryFile(prefix="strace-", suffix=".txt", dir=OUT) as fh:
        proc = subprocess.run([STRACE, "-f", "-c", "-o", fh.name, *argv], env=base_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(f"bench: strace {' '.join(argv)}: exit {proc.returncode}\n"
                     f"{proc.stderr[-2000:]}")
        counts: dict[str, int] = {}
        for line in Path(fh.name).read_text().splitlines():
            parts = line.split()
            if len(parts) in (5, 6) and parts[0][0].isdigit() and parts[-1] != "total":
                counts[parts[-1]] = int(parts[3])
        return counts


def minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) - b.get(k, 0) for k in sorted(a.keys() | b.keys())
            if a.get(k, 0) != b.get(k, 0)}


def syscall_profile(env: BenchEnv) -> dict[str, Any]:
    py, e = str(env.path / "bin" / "python"), str(env.path)
    for _ in range(2):   # warm the per-host caches (interpreter hash, host libraries)
        subprocess.run([py, "-I", "-S", "-c", VERIFY_SNIPPET, e, "quick"], env=base_env(),
                       check=True)
    floor = strace_counts([py, "-I", "-S", "-c", "pass"])
    quick = strace_counts([py, "-I", "-S", "-c", VERIFY_SNIPPET, e, "quick"])
    files = strace_counts([py, "-I", "-S", "-c", VERIFY_SNIPPET, e, "files"])
    guard = strace_counts([str(env.path / "bin" / "envbuild-guard"), "--", "true"])
    net_quick = minus(quick, floor)
    return {"env": e, "distributions": env.distributions, "files": env.files,
            "floor_total": sum(floor.values()),
            "quick_total": sum(quick.values()), "quick_net": sum(net_quick.values()),
            "quick_net_fs": sum(v for k, v in net_quick.items() if k in FS_CALLS),
            "quick_net_by_call": net_quick,
            "files_net": sum(files.values()) - sum(floor.values()),
            "guard_total": sum(guard.values())}


def syscall_table(small: dict[str, Any], big: dict[str, Any]
                  ) -> tuple[str, bool, dict[str, Any]]:
    growth = int(big["quick_net"]) - int(small["quick_net"])
    met = growth <= GROWTH_LIMIT
    lines = ["| env | dists | files | `-I -S -c pass` | quick verify | quick, net | "
             "net, path syscalls | files level, net | `guard -- true` |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, p in (("small", small), ("jupyter-stack", big)):
        lines.append(f"| {label} | {p['distributions']} | {p['files']:,} | {p['floor_total']} | "
                     f"{p['quick_total']} | {p['quick_net']} | {p['quick_net_fs']} | "
                     f"{p['files_net']:,} | {p['guard_total']} |")
    by_call = minus(big["quick_net_by_call"], small["quick_net_by_call"])
    detail = ", ".join(f"{k} {v:+d}" for k, v in by_call.items()) or "none"
    lines.append("")
    lines.append(f"quick level, net syscalls from {small['files']:,} to {big['files']:,} files: "
                 f"{growth:+d} (goal: ≤ {GROWTH_LIMIT}, not growing with files): "
                 f"{'met' if met else '**not met**'}; by call: {detail}")
    return "\n".join(lines), met, {"growth": growth, "limit": GROWTH_LIMIT, "met": met,
                                   "by_call": by_call}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=31, help="interleaved runs (default 31, "
                    "at least 20)")
    ap.add_argument("--rebuild", action="store_true",
                    help="rebuild the bench env if its carried launch modules (guard, "
                    "verify) are older than envbuild's")
    ap.add_argument("--store", type=Path, default=DEFAULT_STORE,
                    help=f"the bench store, shared with bench_spine (default {DEFAULT_STORE})")
    ap.add_argument("--skip-strace", action="store_true", help="only the wall-time table")
    args = ap.parse_args()
    if args.runs < 20:
        ap.error("--runs: expected at least 20")
    store = args.store.absolute()

    env = ensure_env(RECIPE, store, args.rebuild)
    small, hooked = small_env(store, args.rebuild), small_env(store, args.rebuild, hook=True)
    py_m = envbuild_python()
    samples = interleave(launch_tasks(env, py_m, small, hooked), args.runs, warmup=2)
    rows = time_rows(samples)
    print(f"jupyter-stack ({env.distributions} distributions, {env.files:,} files); "
          f"medians of {args.runs} interleaved runs; `python -m envbuild` with {py_m}\n")
    print(time_table(rows))
    data: dict[str, Any] = {
        "machine": machine(), "runs": args.runs, "python_m": py_m,
        "env": {"path": str(env.path), "distributions": env.distributions, "files": env.files,
                "stale_launch_modules": list(env.stale_launch)},
        "rows": rows, "samples_ms": {k: [round(x, 2) for x in v] for k, v in samples.items()}}

    if not args.skip_strace:
        prof_small, prof_big = syscall_profile(small), syscall_profile(env)
        table, _met, growth = syscall_table(prof_small, prof_big)
        print("\nsyscalls (strace -f -c), warm per-host caches:\n")
        print(table)
        data["syscalls"] = {"small": prof_small, "large": prof_big, "growth": growth}
    path = write_json("launch.json", data)
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
