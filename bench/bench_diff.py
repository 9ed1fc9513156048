"""`envbuild diff` of two jupyter-stack envs that differ in one package, without and with
`--files`, against `diff <(pip freeze --path A) <(pip freeze --path B)` in the same run.

    python bench/bench_diff.py [--runs N] [--store DIR] [--package NAME]

A is `recipes/jupyter-stack.toml` as it is. B is a copy of it in bench/out/diff/ that pins
every distribution of A's lock to its locked version except NAME (default `tzdata`), which
it asks for a release below A's; so B's lock differs from A's in NAME alone (checked).
Prints markdown tables; writes bench/out/diff.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_STORE,
    ENVBUILD,
    OUT,
    RECIPE,
    BenchEnv,
    Row,
    Task,
    base_env,
    ensure_env,
    ensure_lock,
    interleave,
    locked,
    machine,
    markdown_table,
    median,
    write_json,
)

WORK = OUT / "diff"
PYTHON = str(Path(ENVBUILD).parent / "python")   # the dev venv's, for `python -m pip`

DIFF = "`envbuild diff A B`"
DIFF_FILES = "`envbuild diff A B --files`"
FREEZE = "diff <(pip freeze --path A) <(pip freeze --path B)"


def pip_env() -> dict[str, str]:
    """pip with no ambient configuration: no PIP_* variables, no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def recipe_b(package: str) -> tuple[Path, str, str]:
    """The copy of the recipe with `package` one release back, locked; (copy, A's version,
    B's version). It asks for a release below A's (`<`, so the resolver takes the newest of
    those) and pins every other distribution to A's locked version."""
    versions = locked(RECIPE.with_suffix(".lock"))
    name = package.lower()
    if name not in versions:
        sys.exit(f"bench: --package {package}: not in {RECIPE.with_suffix('.lock')} "
                 f"(expected one of {', '.join(sorted(versions))})")
    pins = {n: f"=={v}" for n, v in versions.items()}
    pins[name] = f"<{versions[name]}"
    text = RECIPE.read_text()
    deps = re.compile(r"^dependencies = \[.*?\]$", re.M | re.S)
    if not deps.search(text):
        sys.exit(f"bench: {RECIPE}: expected a `dependencies = [...]` line to pin")
    listed = "".join(f'    "{n}{spec}",\n' for n, spec in sorted(pins.items()))
    text = deps.sub(lambda _: f"dependencies = [\n{listed}]", text, count=1)
    WORK.mkdir(parents=True, exist_ok=True)
    copy = WORK / RECIPE.name
    if not copy.exists() or copy.read_text() != text:
        copy.write_text(text)
    ensure_lock(copy)
    got = locked(copy.with_suffix(".lock"))
    differ = sorted(n for n in versions.keys() | got.keys() if versions.get(n) != got.get(n))
    if differ != [name]:
        sys.exit(f"bench: the two locks should differ in {name} alone, found: {differ}")
    return copy, versions[name], got[name]


def site(env: BenchEnv) -> str:
    return str(env.path / "lib" / "python3.11" / "site-packages")


def freeze_pair(a: BenchEnv, b: BenchEnv) -> list[str]:
    pip = f"{PYTHON} -m pip freeze --disable-pip-version-check --path"
    return ["bash", "-c", f"diff <({pip} {site(a)}) <({pip} {site(b)})"]


def tasks(a: BenchEnv, b: BenchEnv) -> list[Task]:
    ea, eb = str(a.path), str(b.path)
    return [Task(DIFF, lambda: [[ENVBUILD, "diff", ea, eb]], ok_codes=(1,)),
            Task(DIFF_FILES, lambda: [[ENVBUILD, "diff", ea, eb, "--files"]], ok_codes=(1,)),
            Task(FREEZE, lambda: [freeze_pair(a, b)], env=pip_env(), ok_codes=(1,))]


def outputs(a: BenchEnv, b: BenchEnv, package: str) -> dict[str, dict[str, Any]]:
    """What each command prints, run once untimed: its exit code, lines, and the lines."""
    ea, eb = str(a.path), str(b.path)
    out: dict[str, dict[str, Any]] = {}
    for name, argv, env in ((DIFF, [ENVBUILD, "diff", ea, eb], base_env()),
                            (DIFF_FILES, [ENVBUILD, "diff", ea, eb, "--files"], base_env()),
                            (FREEZE, freeze_pair(a, b), pip_env())):
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True)
        lines = proc.stdout.splitlines()
        if proc.returncode != 1:
            sys.exit(f"bench: {name}: expected exit 1 (they differ), got {proc.returncode}\n"
                     f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        if not any(package in line for line in lines):
            sys.exit(f"bench: {name}: {package} not named in its output:\n{proc.stdout[:2000]}")
        out[name] = {"exit": proc.returncode, "lines": len(lines), "stdout": lines}
    return out


def rows(samples: dict[str, list[float]]) -> list[Row]:
    base = median(samples[FREEZE])

    def paired(name: str) -> list[float]:
        return [x / y for x, y in zip(samples[name], samples[FREEZE])]

    ms = median(samples[DIFF])
    return [Row(DIFF, ms, FREEZE, base, "< 1.0×", ms < base, paired=paired(DIFF)),
            Row(DIFF_FILES, median(samples[DIFF_FILES]), FREEZE, base, "— (info)",
                paired=paired(DIFF_FILES))]


def lines_table(out: dict[str, dict[str, Any]]) -> str:
    lines = ["| command | exit | lines printed |", "|---|---|---|"]
    for name, o in out.items():
        lines.append(f"| {name.replace('|', chr(92) + '|')} | {o['exit']} | {o['lines']:,} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=21, help="interleaved rounds (default 21)")
    ap.add_argument("--store", type=Path, default=DEFAULT_STORE,
                    help=f"the bench store, shared with the other benches (default "
                    f"{DEFAULT_STORE})")
    ap.add_argument("--package", default="tzdata",
                    help="the package B has one release back (default tzdata)")
    args = ap.parse_args()
    if args.runs < 5:
        ap.error("--runs: expected at least 5")
    store = args.store.absolute()

    a = ensure_env(RECIPE, store)
    copy, va, vb = recipe_b(args.package)
    b = ensure_env(copy, store)
    out = outputs(a, b, args.package.lower())
    load = [os.getloadavg()[0]]
    samples = interleave(tasks(a, b), args.runs, warmup=1)
    load.append(os.getloadavg()[0])
    table = rows(samples)
    print(f"jupyter-stack: A {a.distributions} distributions, {a.files:,} files; B the same "
          f"with {args.package} {va} -> {vb}; medians of {args.runs} interleaved runs; "
          f"load average {load[0]:.2f} at start, {load[1]:.2f} at end\n")
    print(markdown_table(table))
    print()
    print(lines_table(out))
    path = write_json("diff.json", {
        "machine": machine(), "runs": args.runs, "package": args.package,
        "versions": {"a": va, "b": vb}, "load_average": load,
        "envs": {k: {"path": str(e.path), "distributions": e.distributions, "files": e.files,
                     "manifest_digest": e.manifest_digest} for k, e in (("a", a), ("b", b))},
        "rows": [r.to_json() for r in table], "outputs": out,
        "samples_ms": {k: [round(x, 2) for x in v] for k, v in samples.items()}})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
