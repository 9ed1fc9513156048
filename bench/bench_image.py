"""Container images: `envbuild image` against a hand-written Dockerfile on the same engine
and base (build time with a cold and a warm wheel cache, image size), the bytes a re-push
sends after a one-package upgrade, and the guard's start inside a container.

    python bench/bench_image.py [--runs N] [--run-runs M] [--exec-runs K]
                                [--skip-builds] [--skip-push]

Starts its own dockerd (vfs, no network) and docker-registry under bench/out/, stops both by
their pids. Prints markdown tables; writes bench/out/image.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    OUT,
    Row,
    Task,
    base_env,
    fmt_ms,
    interleave,
    machine,
    markdown_table,
    median,
    write_json,
)
from engines import Engine, Registry, fail, load_base  # noqa: E402
from imagetasks import (  # noqa: E402
    DOCKER,
    ENVBUILD_IMAGE,
    BuildTasks,
    envbuild_env_bytes,
    phase_table,
    phases,
    pip_download,
)
from upgrade import push_rows  # noqa: E402

WORK = OUT / "image"
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "webclient.toml"
INSIDE_COLD = "inside: envbuild-guard python -c pass, first in the container"
INSIDE_BARE = "python -c pass, same container"
INSIDE_WARM = "inside: envbuild-guard python -c pass, second"


def build_rows(tasks: BuildTasks, samples: dict[str, list[float]]) -> list[Row]:
    rows = []
    for (mine, theirs, label, goal) in (
            (tasks.COLD, tasks.BASE_COLD, "build: cold wheel cache (fresh store)", ""),
            (tasks.WARM, tasks.BASE_WARM, "build: warm wheel cache", "≤ 1.0×"),
            (tasks.FORCED, tasks.BASE_WARM, "build: warm wheel cache, builder stage run "
             "(--force)", "")):
        a, b = samples[mine], samples[theirs]
        row = Row(label, median(a), baseline=theirs, baseline_ms=median(b), goal=goal,
                  paired=[x / y for x, y in zip(a, b)])
        if goal:
            row.met = bool(row.ratio is not None and row.ratio <= 1.0)
        rows.append(row)
    a, b = samples[tasks.COLD], [d + x for d, x in zip(tasks.downloads, samples[tasks.BASE_COLD])]
    rows.append(Row("build: cold, vs the Dockerfile with its own pip download (info)",
                    median(a), baseline=f"pip download + {tasks.BASE_COLD}",
                    baseline_ms=median(b), paired=[x / y for x, y in zip(a, b)]))
    return rows


def size_rows(engine: Engine, envbuild_tag: str, dockerfile_tag: str) -> list[dict[str, Any]]:
    """Image sizes (the engine's `Size`) and the env's own bytes against the venv layer."""
    client = engine.client()
    try:
        mine = client.images.get(envbuild_tag)
        theirs = client.images.get(dockerfile_tag)
        env_bytes, env_layers = envbuild_env_bytes(client, envbuild_tag)
        history = theirs.history()
        venv = sum(int(h["Size"]) for h in history if "pip install" in h["CreatedBy"])
        copied = sum(int(h["Size"]) for h in history if "COPY" in h["CreatedBy"])
        return [
            {"name": "image size (engine's Size)", "envbuild": int(mine.attrs["Size"]),
             "baseline": int(theirs.attrs["Size"]), "baseline_name": "Dockerfile image",
             "note": f"the Dockerfile image carries its wheels too (COPY layer, "
                     f"{copied / 1e6:.1f} MB)"},
            {"name": f"env's bytes ({env_layers} env layers)", "envbuild": env_bytes,
             "baseline": venv, "baseline_name": "Dockerfile's venv layer (RUN pip install)",
             "note": ""},
        ]
    finally:
        client.close()


def run_tasks(engine: Engine, tag: str, env_dir: str) -> list[Task]:
    env = engine.env(base_env())
    return [
        Task("docker run IMAGE python -c pass (guard)",
             lambda: [[DOCKER, "run", "--rm", "--network", "none", tag, "python", "-c",
                       "pass"]], env=env),
        Task("docker run --entrypoint python IMAGE -c pass",
             lambda: [[DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "python",
                       tag, "-c", "pass"]], env=env),
    ]


def exec_tasks(engine: Engine, container: str, env_dir: str) -> list[Task]:
    env = engine.env(base_env())
    return [
        Task("docker exec C envbuild-guard python -c pass",
             lambda: [[DOCKER, "exec", container, f"{env_dir}/bin/envbuild-guard", "python",
                       "-c", "pass"]], env=env),
        Task("docker exec C python -c pass",
             lambda: [[DOCKER, "exec", container, "python", "-c", "pass"]], env=env),
    ]


def guard_rows(samples: dict[str, list[float]], names: list[str], label: str) -> Row:
    guard, bare = samples[names[0]], samples[names[1]]
    added = median(guard) - median(bare)
    return Row(label, median(guard), baseline=names[1], baseline_ms=median(bare),
               paired=[g / b for g, b in zip(guard, bare)],
               note=f"added {added:+.0f} ms")


def _inside_script(guard: str, bare_first: bool) -> str:
    """sh timing, in one fresh container: the guard's first start (cold per-host caches),
    python alone, and the guard's second start; `date +%s%N` before and after each."""
    run_guard, run_bare = f"{guard} python -c pass", "python -c pass"
    first, second = (run_bare, run_guard) if bare_first else (run_guard, run_bare)
    return (f"a=$(date +%s%N); {first}; b=$(date +%s%N); {second}; c=$(date +%s%N); "
            f"{run_guard}; d=$(date +%s%N); echo {'bare' if bare_first else 'guard'} "
            "$a $b $c $d")


def time_inside(engine: Engine, tag: str, env_dir: str, runs: int) -> dict[str, list[float]]:
    """The guard's start timed inside fresh containers, away from container creation."""
    out: dict[str, list[float]] = {INSIDE_COLD: [], INSIDE_BARE: [], INSIDE_WARM: []}
    env = engine.env(base_env())
    for i in range(runs):
        proc = subprocess.run([DOCKER, "run", "--rm", "--network", "none", "--entrypoint",
                               "/bin/sh", tag, "-c",
                               _inside_script(f"{env_dir}/bin/envbuild-guard", i % 2 == 1)],
                              env=env, capture_output=True, text=True)
        words = proc.stdout.split()
        if proc.returncode != 0 or len(words) != 5:
            fail(f"timing inside a container: exit {proc.returncode}\n{proc.stdout}"
                 f"{proc.stderr[-2000:]}")
        a, b, c, d = (int(w) / 1e6 for w in words[1:])
        first, second = b - a, c - b
        cold, bare = (second, first) if words[0] == "bare" else (first, second)
        out[INSIDE_COLD].append(cold)
        out[INSIDE_BARE].append(bare)
        out[INSIDE_WARM].append(d - c)
    return out


def time_guard(engine: Engine, tag: str, args: argparse.Namespace) -> tuple[list[Row],
                                                                             dict[str, Any]]:
    client = engine.client()
    try:
        env_dir = client.images.get(tag).attrs["Config"]["Labels"]["io.envbuild.env"]
        runs = run_tasks(engine, tag, env_dir)
        samples = interleave(runs, args.run_runs, warmup=1, label="docker run")
        rows = [guard_rows(samples, [t.name for t in runs],
                           "guard in a fresh container: docker run")]
        print("bench: timing inside fresh containers", file=sys.stderr, flush=True)
        inside = time_inside(engine, tag, env_dir, args.run_runs)
        rows += [guard_rows(inside, [INSIDE_COLD, INSIDE_BARE],
                            "guard's first start in a fresh container (cold caches), timed "
                            "inside"),
                 guard_rows(inside, [INSIDE_WARM, INSIDE_BARE],
                            "guard's second start in that container (warm caches), timed "
                            "inside")]
        samples.update(inside)
        container = client.containers.run(tag, ["infinity"], entrypoint="sleep", detach=True,
                                          network_mode="none")
        try:
            execs = exec_tasks(engine, str(container.id), env_dir)
            more = interleave(execs, args.exec_runs, warmup=2, label="docker exec")
        finally:
            container.remove(force=True)
        rows.append(guard_rows(more, [t.name for t in execs],
                               "guard in a running container: docker exec (warm caches)"))
        return rows, {**samples, **more}
    finally:
        client.close()


def quantity_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| name | envbuild | baseline | baseline bytes | ratio | note |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["envbuild"] / r["baseline"] if r["baseline"] else None
        lines.append(f"| {r['name']} | {r['envbuild'] / 1e6:,.1f} MB | {r['baseline_name']} | "
                     f"{r['baseline'] / 1e6:,.1f} MB | "
                     f"{'—' if ratio is None else f'{ratio:.3f}×'} | {r['note'] or '—'} |")
    return "\n".join(lines)


def guard_table(rows: list[Row]) -> str:
    lines = ["| name | median ms | baseline | baseline ms | added ms | ratio | paired ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {fmt_ms(r.ms)} | {r.baseline} | {fmt_ms(r.baseline_ms)} | "
                     f"{r.ms - (r.baseline_ms or 0):+,.1f} | {r.ratio or 0:.2f}× | "
                     f"{r.paired_ratio or 0:.2f}× |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3,
                    help="interleaved rounds of the four builds (default 3)")
    ap.add_argument("--run-runs", type=int, default=11,
                    help="interleaved `docker run` pairs (default 11, at least 11)")
    ap.add_argument("--exec-runs", type=int, default=21,
                    help="interleaved `docker exec` pairs (default 21)")
    ap.add_argument("--skip-builds", action="store_true",
                    help="no timed builds (one untimed build of each for the other rows)")
    ap.add_argument("--skip-push", action="store_true", help="no registry, no re-push row")
    ap.add_argument("--upgrade-package", default="certifi",
                    help="the package the re-push row pins to its previous release "
                    "(default certifi)")
    ap.add_argument("--engine-dir", type=Path, default=OUT / "image-engine",
                    help="the bench engine's dir (short: its socket paths must fit)")
    args = ap.parse_args()
    if args.runs < 1 or args.run_runs < 11 or args.exec_runs < 1:
        ap.error("--runs: at least 1; --run-runs: at least 11; --exec-runs: at least 1")
    return args


def first_error(tail: str) -> str:
    return next((line for line in tail.splitlines() if "error:" in line), "(no error line)")


def check_lock() -> None:
    proc = subprocess.run([ENVBUILD_IMAGE, "lock", "--check", str(RECIPE)], env=base_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"{RECIPE}: its lock is not fresh ({proc.stdout.strip()} {proc.stderr.strip()});"
             f" run: envbuild lock {RECIPE}")


def main() -> None:
    args = parse_args()
    check_lock()
    WORK.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"machine": machine(), "runs": args.runs,
                            "run_runs": args.run_runs, "exec_runs": args.exec_runs,
                            "loadavg_start": os.getloadavg()}
    wheels = pip_download(RECIPE.with_suffix(".lock"), WORK / "wheels")
    t0 = time.monotonic()
    engine = Engine(args.engine_dir)
    try:
        base = load_base(engine)
        print(f"bench: engine {engine.host}, base {base} loaded in "
              f"{time.monotonic() - t0:.1f} s", file=sys.stderr)
        sections = measure(engine, base, wheels, args, data)
    finally:
        engine.stop()
        shutil.rmtree(WORK / "scratch", ignore_errors=True)
    data["loadavg_end"] = os.getloadavg()
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    header = (f"webclient ({RECIPE.name}, 11 distributions, Python 3.11) on {base}, vfs engine; "
              f"medians of {args.runs} interleaved rounds (builds) / {args.run_runs} "
              f"(docker run) / {args.exec_runs} (docker exec); load average "
              f"{data['loadavg_start'][0]:.2f} at start, {data['loadavg_end'][0]:.2f} at end; "
              f"{data['elapsed_s'] / 60:.1f} min in all")
    print(header + "\n\n" + "\n\n".join(sections))
    path = write_json("image.json", data)
    print(f"\nwrote {path}", file=sys.stderr)


def measure(engine: Engine, base: str, wheels: Path, args: argparse.Namespace,
            data: dict[str, Any]) -> list[str]:
    tasks = BuildTasks(engine, base, RECIPE, WORK, wheels)
    sections = []
    if args.skip_builds:
        tasks.untimed()
    else:
        tasks.warm_up()
        samples = interleave(tasks.tasks(), args.runs, warmup=0, label="builds")
        rows = build_rows(tasks, samples)
        sections.append(markdown_table(rows))
        data["build_rows"] = [r.to_json() for r in rows]
        data["build_samples_ms"] = {k: [round(x, 1) for x in v] for k, v in samples.items()}
        data["download_ms"] = [round(x, 1) for x in tasks.downloads]
        data["build_failures"] = tasks.failures
        if tasks.failures:
            sections.append(f"{len(tasks.failures)} envbuild build(s) failed and ran once more "
                            "(image.json, build_failures): " + "; ".join(
                                first_error(str(f["tail"])) for f in tasks.failures))
        data["phases"] = {name: phases(runs) for name, runs in tasks.marks.items()}
        sections.append("Where the time goes (medians, seconds from one progress line to the "
                        "next; `exit` is the process's end):\n\n"
                        + phase_table(data["phases"],
                                      [tasks.COLD, tasks.WARM, tasks.FORCED]) + "\n\n"
                        + phase_table(data["phases"], [tasks.BASE_COLD, tasks.BASE_WARM]))
    sizes = size_rows(engine, tasks.envbuild_tag, tasks.dockerfile_tag)
    sections.append(quantity_table(sizes))
    data["size_rows"] = sizes
    if not args.skip_push:
        registry = Registry(WORK / "registry")
        try:
            push = push_rows(engine, registry, RECIPE, WORK, tasks.warm_store, base,
                             args.upgrade_package)
        finally:
            registry.stop()
        sections.append(push["table"])
        data["push"] = push
    guard, samples = time_guard(engine, tasks.envbuild_tag, args)
    sections.append(guard_table(guard))
    data["guard_rows"] = [r.to_json() for r in guard]
    data["guard_samples_ms"] = {k: [round(x, 1) for x in v] for k, v in samples.items()}
    return sections


if __name__ == "__main__":
    main()
