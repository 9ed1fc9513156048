"""`envbuild lock --resolver uv` against raw `uv pip compile --generate-hashes` (the same
uv, the same cache, the same flags) and against `envbuild lock` with pip-tools, on
recipes/jupyter-stack.toml and recipes/cli-tool.toml, from PyPI, caches warm.

    python bench/bench_lock.py [--runs N] [--store DIR] [--recipe NAME ...]

Each run re-locks with the committed lock in place (the everyday case: the pins are kept,
every hash is fetched again), so every run resolves the same thing and writes the same
bytes. After the runs, the three outputs' requirement lines are checked equal. Prints
markdown tables; writes bench/out/lock.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_STORE,
    ENVBUILD,
    OUT,
    ROOT,
    UV,
    Row,
    Task,
    base_env,
    interleave,
    machine,
    markdown_table,
    median,
    run_checked,
    uv_env,
    write_json,
)

WORK = OUT / "lock"
PYTHON = str(Path(ENVBUILD).parent / "python")   # the dev venv's: what envbuild locks for
RECIPES = ("jupyter-stack", "cli-tool")
ENVBUILD_UV = "`envbuild lock --resolver uv`"
RAW_UV = "`uv pip compile --generate-hashes`"
PIP_TOOLS = "`envbuild lock` (pip-tools)"


def body(text: str) -> list[str]:
    """A lock's or uv's output without comment lines (header, annotations)."""
    return [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]


def setup(name: str) -> dict[str, Path]:
    """Three dirs for `name`: a recipe copy with the committed lock for each envbuild run,
    and `recipe.in` with the committed lock's body as `recipe.txt` for raw uv."""
    recipe = ROOT / "recipes" / f"{name}.toml"
    dirs = {kind: WORK / name / kind for kind in ("uv", "pip-tools", "raw")}
    for kind in ("uv", "pip-tools"):
        dirs[kind].mkdir(parents=True, exist_ok=True)
        shutil.copy(recipe, dirs[kind])
        shutil.copy(recipe.with_suffix(".lock"), dirs[kind])
    dirs["raw"].mkdir(parents=True, exist_ok=True)
    deps = run_checked([PYTHON, "-c", "import sys; from envbuild.recipe import load_recipe; "
                        "print(*load_recipe(sys.argv[1]).dependencies, sep=chr(10))",
                        str(recipe)], base_env(), f"reading {recipe}")
    (dirs["raw"] / "recipe.in").write_text(deps)
    locked = recipe.with_suffix(".lock").read_text()
    (dirs["raw"] / "recipe.txt").write_text(locked.split("\n#\n", 1)[1])
    return dirs


def tasks(name: str, dirs: dict[str, Path], store: Path) -> list[Task]:
    uv_recipe = str(dirs["uv"] / f"{name}.toml")
    pip_recipe = str(dirs["pip-tools"] / f"{name}.toml")
    raw = [UV, "pip", "compile", "--quiet", "--no-progress", "--no-config", "--python", PYTHON,
           "--cache-dir", str(store / "uv-cache"), "--native-tls", "--generate-hashes",
           "--no-header", "--annotation-style", "split", "--index-url", "https://pypi.org/simple",
           "--output-file", str(dirs["raw"] / "recipe.txt"), str(dirs["raw"] / "recipe.in")]
    return [Task(ENVBUILD_UV, lambda: [[ENVBUILD, "lock", uv_recipe, "--resolver", "uv",
                                        "--store", str(store)]]),
            Task(RAW_UV, lambda: [raw], env=uv_env()),
            Task(PIP_TOOLS, lambda: [[ENVBUILD, "lock", pip_recipe, "--resolver", "pip-tools",
                                      "--store", str(store)]])]


def same_output(name: str, dirs: dict[str, Path]) -> None:
    ours = body((dirs["uv"] / f"{name}.lock").read_text())
    for other in (body((dirs["raw"] / "recipe.txt").read_text()),
                  body((dirs["pip-tools"] / f"{name}.lock").read_text())):
        if other != ours:
            sys.exit(f"bench: {name}: the three locks' requirement lines differ; see "
                     f"{WORK / name}")


def rows(name: str, samples: dict[str, list[float]]) -> list[Row]:
    raw, pip_tools, ours = (median(samples[k]) for k in (RAW_UV, PIP_TOOLS, ENVBUILD_UV))
    small = name != "jupyter-stack"
    return [Row(f"{name}: {ENVBUILD_UV}", ours, RAW_UV, raw,
                "— (info)" if small else "≤ 1.2×", None if small else ours <= 1.2 * raw,
                paired=[x / y for x, y in zip(samples[ENVBUILD_UV], samples[RAW_UV])]),
            Row(f"{name}: {ENVBUILD_UV}", ours, PIP_TOOLS, pip_tools, "— (info)",
                paired=[x / y for x, y in zip(samples[ENVBUILD_UV], samples[PIP_TOOLS])])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--store", type=Path, default=DEFAULT_STORE,
                    help=f"the bench store; its uv-cache/ is uv's (default {DEFAULT_STORE})")
    ap.add_argument("--recipe", action="append", choices=RECIPES,
                    help="a recipe of recipes/ (repeatable; default both)")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs: expected at least 3")
    store = args.store.absolute()
    table: list[Row] = []
    report: dict[str, Any] = {}
    for name in args.recipe or RECIPES:
        dirs = setup(name)
        load = [os.getloadavg()[0]]
        samples = interleave(tasks(name, dirs, store), args.runs, warmup=1, label=name)
        load.append(os.getloadavg()[0])
        same_output(name, dirs)
        table += rows(name, samples)
        pins = [ln for ln in body((dirs["raw"] / "recipe.txt").read_text())
                if not ln.startswith(" ")]
        report[name] = {"distributions": len(pins), "load_average": load,
                        "samples_ms": {k: [round(x, 2) for x in v] for k, v in samples.items()}}
        print(f"{name}: {report[name]['distributions']} distributions; medians of {args.runs} "
              f"interleaved runs after one warm-up; load average {load[0]:.2f} at start, "
              f"{load[1]:.2f} at end", file=sys.stderr)
    print(markdown_table(table))
    path = write_json("lock.json", {"machine": machine(), "runs": args.runs,
                                    "recipes": report, "rows": [r.to_json() for r in table]})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
