"""Shared pieces of the benchmarks: paths, the subprocess environment, the bench env,
interleaved timing, medians, and the markdown/JSON report.

Stdlib only, so any Python 3.9+ can run the benches; envbuild itself is only ever run as a
subprocess (the CLI a user runs, or the launch path inside the env).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
DEFAULT_STORE = OUT / "store"
RECIPE = ROOT / "recipes" / "jupyter-stack.toml"
RUNLOG = OUT / "runs.jsonl"


def find_tool(name: str) -> str:
    """`name` beside the running interpreter (the dev venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        sys.exit(f"bench: {name}: expected beside {sys.executable} or on PATH, found neither; "
                 "run the bench with the venv's python that `bash tests/run` makes "
                 "(.venv/bin/python)")
    return found


ENVBUILD = find_tool("envbuild")
UV = find_tool("uv")


def base_env() -> dict[str, str]:
    """The machine's environment without PIP_* (envbuild ignores them anyway), with run
    records of guard/run launches kept in bench/out instead of the user's store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["ENVBUILD_RUNLOG"] = str(RUNLOG)
    return env


def uv_env() -> dict[str, str]:
    """uv with no ambient configuration: no PIP_*/UV_* variables, no uv.toml/pyproject."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_"))}
    env["UV_NO_CONFIG"] = "1"
    return env


# ---- the bench env ----------------------------------------------------------------------


@dataclass(frozen=True)
class BenchEnv:
    path: Path
    recipe: Path
    store: Path
    manifest_digest: str
    distributions: int
    files: int            # entries of the files sidecar (regular files and symlinks)
    base_python: str      # the interpreter the env was built on (pyvenv.cfg `executable`)
    stale_launch: tuple[str, ...] = ()   # carried launch modules older than envbuild's


def run_checked(argv: Sequence[str], env: dict[str, str], what: str,
                cwd: Path | None = None) -> str:
    proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: {what} failed (exit {proc.returncode}): {' '.join(argv)}\n"
                 f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def ensure_lock(recipe: Path) -> None:
    """Lock `recipe` unless its lock is fresh (`envbuild lock --check`)."""
    env = base_env()
    check = subprocess.run([ENVBUILD, "lock", "--check", str(recipe)], env=env,
                           capture_output=True, text=True)
    if check.returncode == 0:
        return
    print(f"bench: locking {recipe} (real index)", file=sys.stderr)
    run_checked([ENVBUILD, "lock", str(recipe)], env, f"envbuild lock {recipe}")


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.M)


def locked(lock: Path) -> dict[str, str]:
    """{name: version} of a lock."""
    return {name.lower(): version for name, version in _PIN.findall(lock.read_text())}


def recipe_copy(recipe: Path, where: Path, pins: dict[str, str]) -> Path:
    """`recipe` in `where` (same name, so the same env dir name), with `pins` (a
    requirement's version part per name) added to its dependencies; locked if stale."""
    text = recipe.read_text()
    anchor = "dependencies = ["
    if anchor not in text:
        sys.exit(f"bench: {recipe}: expected `dependencies = [` to add the pins after")
    lines = "".join(f'    "{name}{spec}",\n' for name, spec in sorted(pins.items()))
    if anchor + "\n" in text:
        text = text.replace(anchor + "\n", anchor + "\n" + lines, 1)
    else:   # the list on one line: the pins go on lines of their own before its items
        text = text.replace(anchor, anchor + "\n" + lines + "    ", 1)
    where.mkdir(parents=True, exist_ok=True)
    copy = where / recipe.name
    if not copy.exists() or copy.read_text() != text:
        copy.write_text(text)
    ensure_lock(copy)
    return copy


def pinned_copy(recipe: Path, where: Path, package: str, spec: str) -> tuple[Path, str]:
    """A copy of `recipe` in `where` that pins every distribution of its lock to the locked
    version and `package` to `spec` (`<1.2` takes the newest release below), locked; checked
    to differ from the recipe's lock in `package` alone. (copy, `package`'s version in it)"""
    versions = locked(recipe.with_suffix(".lock"))
    name = package.lower()
    if name not in versions:
        sys.exit(f"bench: {package}: not in {recipe.with_suffix('.lock')} "
                 f"(expected one of {', '.join(sorted(versions))})")
    copy = recipe_copy(recipe, where, {**{n: f"=={v}" for n, v in versions.items()},
                                       name: spec})
    got = locked(copy.with_suffix(".lock"))
    differ = sorted(n for n in versions.keys() | got.keys()
                    if n != name and versions.get(n) != got.get(n))
    if differ or name not in got:
        sys.exit(f"bench: {copy.with_suffix('.lock')} should differ from the recipe's lock in "
                 f"{name} alone, found: {differ or [name + ' missing']}")
    return copy, got[name]


def upgrade_pair(recipe: Path, where: Path, package: str) -> tuple[Path, Path, str]:
    """Two copies of `recipe` whose locks differ in `package` alone: `where/old` asks for a
    release below the locked one, `where/new` for the locked one. (old, new, "P a → b")"""
    name = package.lower()
    locked_version = locked(recipe.with_suffix(".lock")).get(name, "")
    new, after = pinned_copy(recipe, where / "new", name, f"=={locked_version}")
    old, before = pinned_copy(recipe, where / "old", name, f"<{after}")
    return old, new, f"{name} {before} → {after}"


def envbuild_package() -> Path:
    """The envbuild package the CLI runs (the source tree, with an editable install)."""
    python = Path(ENVBUILD).parent / "python"
    out = run_checked([str(python), "-c", "import envbuild, os; "
                       "print(os.path.dirname(os.path.abspath(envbuild.__file__)))"],
                      base_env(), "locating the envbuild package")
    return Path(out.strip())


def stale_launch_modules(env: Path) -> list[str]:
    """Launch modules the env carries that differ from the envbuild that runs now.

    The env key does not cover envbuild's own code, so a cached bench env keeps the guard
    and verify code of the envbuild that built it."""
    carried = env / "lib" / "envbuild-launch" / "envbuild"
    package = envbuild_package()
    return sorted(p.name for p in carried.glob("*.py") if p.name != "__init__.py"
                  and (not (package / p.name).exists()
                       or (package / p.name).read_bytes() != p.read_bytes()))


def _build(recipe: Path, store: Path) -> dict[str, Any]:
    out = run_checked([ENVBUILD, "build", str(recipe), "--store", str(store), "--json"],
                      base_env(), f"envbuild build {recipe}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def ensure_env(recipe: Path, store: Path, rebuild: bool = False) -> BenchEnv:
    """Build the recipe's env into `store`, or reuse it (a cache hit) if it is there.

    With `rebuild`, a cached env whose launch modules are older than envbuild's is removed
    and built again; without, it is used with a warning."""
    t0 = time.perf_counter()
    result = _build(recipe, store)
    stale = stale_launch_modules(Path(result["path"]))
    if stale and rebuild:
        print(f"bench: {result['path']}: launch modules older than envbuild's "
              f"({', '.join(stale)}); rebuilding", file=sys.stderr)
        force_rmtree(Path(result["path"]))
        t0 = time.perf_counter()
        result = _build(recipe, store)
    elif stale:
        print(f"bench: warning: {result['path']} carries launch modules older than "
              f"envbuild's ({', '.join(stale)}); guard figures are for that code; pass "
              "--rebuild to build the env again", file=sys.stderr)
    if not result["cached"]:
        print(f"bench: built {result['path']} in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    path = Path(result["path"])
    manifest = json.loads((path / "envbuild-manifest.json").read_text())
    files = (path / ".envbuild" / "files").read_text().count("\n") - 1
    cfg = dict(line.split(" = ", 1) for line in
               (path / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    return BenchEnv(path=path, recipe=recipe, store=store,
                    manifest_digest=result["manifest_digest"],
                    distributions=len(manifest["distributions"]), files=files,
                    base_python=cfg.get("executable") or manifest["interpreter"]["path"],
                    stale_launch=tuple(stale_launch_modules(path)))


def force_rmtree(path: Path) -> None:
    """Remove a tree that envbuild made read-only (envs and their dirs are 0555)."""
    if not os.path.lexists(path):
        return

    def onerror(func: Callable[..., Any], p: str, _exc: Any) -> None:
        parent = os.path.dirname(p)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, stat.S_IRWXU)
        func(p)

    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IRWXU)
    os.chmod(path, stat.S_IRWXU)
    shutil.rmtree(path, onerror=onerror)


# ---- timing -----------------------------------------------------------------------------


Argv = Sequence[str]


@dataclass
class Task:
    """Something timed: one or more commands run in sequence, with untimed setup/cleanup.

    `commands` is called before the clock starts and returns the argvs (it may create a
    fresh dir for them); `cleanup` runs after the clock stops.
    """

    name: str
    commands: Callable[[], Sequence[Argv]]
    env: dict[str, str] = field(default_factory=base_env)
    cleanup: Callable[[], None] = lambda: None
    ok_codes: tuple[int, ...] = (0,)
    # flush dirty pages before the clock starts: what the previous task (or this one's
    # setup) wrote, or a removal's journal, is not written back inside this one's time
    settle: bool = False

    def run_once(self) -> float:
        commands = self.commands()
        if self.settle:
            os.sync()
        # stderr to a file, not a pipe: no reader thread in the timing, and a failure shows
        # what the failing run said (re-running it may not fail again)
        with tempfile.TemporaryFile() as err:
            try:
                t0 = time.perf_counter()
                for argv in commands:
                    code = subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=err).returncode
                    if code not in self.ok_codes:
                        err.seek(0)
                        tail = err.read()[-4000:].decode(errors="replace")
                        sys.exit(f"bench: {self.name}: exit {code}: {' '.join(argv)}\n{tail}")
                    err.seek(0)
                    err.truncate()
                return (time.perf_counter() - t0) * 1000.0
            finally:
                self.cleanup()


def interleave(tasks: list[Task], runs: int, warmup: int = 1,
               label: str = "") -> dict[str, list[float]]:
    """Time every task `runs` times, round-robin, each round in a rotated order so no task
    always follows the same neighbour; `warmup` untimed rounds first (warm caches)."""
    samples: dict[str, list[float]] = {t.name: [] for t in tasks}
    for _ in range(warmup):
        for task in tasks:
            task.run_once()
    for r in range(runs):
        shift = r % len(tasks)
        order = tasks[shift:] + tasks[:shift]
        if r % 2:
            order.reverse()
        for task in order:
            samples[task.name].append(task.run_once())
        if label:
            print(f"bench: {label}: round {r + 1}/{runs}", file=sys.stderr, flush=True)
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---- the report -------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    ms: float
    baseline: str = ""
    baseline_ms: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""
    paired: list[float] = field(default_factory=list)   # round-by-round ratios

    @property
    def paired_ratio(self) -> float | None:
        """Median of the per-round ratios: each pair ran back to back, so this one shrugs
        off load that comes and goes between rounds."""
        return median(self.paired) if self.paired else None

    @property
    def ratio(self) -> float | None:
        return self.ms / self.baseline_ms if self.baseline_ms else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "median_ms": round(self.ms, 2),
                "baseline": self.baseline or None,
                "baseline_median_ms": None if self.baseline_ms is None
                else round(self.baseline_ms, 2),
                "ratio": None if self.ratio is None else round(self.ratio, 3),
                "paired_ratio": None if self.paired_ratio is None
                else round(self.paired_ratio, 3),
                "paired_ratios": [round(x, 3) for x in self.paired],
                "goal": self.goal or None, "met": self.met, "note": self.note or None}


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"


def markdown_table(rows: list[Row], extra_header: str = "") -> str:
    head = ["name", "median ms", "baseline", "baseline ms", "ratio", "paired ratio", "goal",
            "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    for r in rows:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}×"
        paired = "—" if r.paired_ratio is None else f"{r.paired_ratio:.2f}×"
        lines.append("| " + " | ".join([cell(r.name), fmt_ms(r.ms), cell(r.baseline or "—"),
                                        fmt_ms(r.baseline_ms), ratio, paired, r.goal or "—", met])
                     + " |")
    return (extra_header + "\n\n" if extra_header else "") + "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"host": socket.gethostname(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "envbuild": ENVBUILD, "uv": UV,
            "uv_version": subprocess.run([UV, "--version"], capture_output=True,
                                         text=True).stdout.strip(),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_json(name: str, data: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
