"""Shared-disk staging: the jupyter-stack env published on an sshfs root (a private sshd
on 127.0.0.1, mounted as nodes with client caches of their own), launched straight from
the shared copy and from a node-local copy (`envbuild run ROOT/NAME --local DIR`), with the
file-server requests counted at the server.

    python bench/bench_stage.py [--runs N] [--materialize-runs M] [--concurrent-runs C]

Prints markdown tables; writes bench/out/stage.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
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
    fmt_ms,
    force_rmtree,
    interleave,
    machine,
    median,
    run_checked,
    write_json,
)
from sharedroot import FileServer, Mount, Requests, mount, start_server  # noqa: E402

STAGE = OUT / "stage"
EXPORT = STAGE / "export"            # kept between runs: the published version is reused
LOCAL = STAGE / "local"              # node-local disk
IMPORT = "import pandas, scipy"
COPIES = 64
REQUEST_GOAL = 100.0                 # a materialized launch: ≥ 100× fewer requests
MATERIALIZE_GOAL = 1.5               # the first materialization: ≤ 1.5× tar -xf
# The phases of a materialization, timed in the envbuild venv's interpreter: the archive
# copied through the mount and hashed as materialize() does it, unpacked, verified.
PHASES = """
import hashlib, json, sys, time
from pathlib import Path
from envbuild.archive import unpack
from envbuild.verify import verify
shared, work, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
t = [time.perf_counter()]
h = hashlib.sha256()
with open(shared, "rb") as fin, open(work / "v.tar", "wb") as fout:
    while chunk := fin.read(1 << 20):
        h.update(chunk)
        fout.write(chunk)
t.append(time.perf_counter())
top = unpack(work / "v.tar", work)
t.append(time.perf_counter())
assert verify(str(top), level="files", contract=False).ok
t.append(time.perf_counter())
ms = [round((b - a) * 1000, 2) for a, b in zip(t, t[1:])]
with open(out, "a") as fh:
    fh.write(json.dumps(dict(zip(["copy", "unpack", "verify"], ms))) + "\\n")
"""


def run_env() -> dict[str, str]:
    env = base_env()
    env.pop("ENVBUILD_LOCAL", None)
    return env


# ---- the shared root ----------------------------------------------------------------------


@dataclass
class Shared:
    server: FileServer
    a: Mount                       # node a: publishes
    b: Mount                       # node b: launches
    pointer: str = ""              # the pointer's path relative to the mount (root/NAME)
    version: str = ""
    counts: dict[str, list[Requests]] = field(default_factory=dict)

    def via(self, mnt: Mount | Path) -> str:
        """The pointer seen through a mount."""
        return str((mnt.mountpoint if isinstance(mnt, Mount) else mnt) / self.pointer)

    def archive(self) -> str:
        return str(self.b.mountpoint / "root" / ".envs" / f"{self.version}.tar")

    def start_count(self) -> None:
        self.server.settle()
        self.server.take()

    def keep_last(self, tasks: Sequence[Task], n: int) -> None:
        """Only the last `n` counts of these tasks (those of a warm-up round go)."""
        for task in tasks:
            if task.name in self.counts:
                self.counts[task.name] = self.counts[task.name][-n:]

    def record(self, name: str) -> None:
        self.server.settle()
        self.counts.setdefault(name, []).append(self.server.take())


@contextmanager
def shared_root() -> Iterator[Shared]:
    """A fresh server of the kept export, mounted at node-a and node-b."""
    for name in ("node-a", "node-b", "node-c"):
        point = STAGE / name
        if str(point) in Path("/proc/self/mountinfo").read_text():
            sys.exit(f"bench: {point} is still mounted (a run that was killed?); unmount it "
                     f"with `fusermount3 -u {point}` and run again")
    (EXPORT / "root").mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        where = Path(tempfile.mkdtemp(prefix="server-", dir=STAGE))
        stack.callback(shutil.rmtree, where, True)
        server = start_server(where)
        stack.callback(server.stop)
        a = stack.enter_context(mount(server, EXPORT, STAGE / "node-a"))
        b = stack.enter_context(mount(server, EXPORT, STAGE / "node-b"))
        yield Shared(server, a, b)


def publish(env: BenchEnv, shared: Shared) -> dict[str, Any]:
    """`envbuild stage publish ENV --root NODE_A/root`; a version already on the export
    (from an earlier run) is only pointed at again."""
    t0 = time.perf_counter()
    out = run_checked([ENVBUILD, "stage", "publish", str(env.path), "--root",
                       str(shared.a.mountpoint / "root"), "--json"], run_env(),
                      "envbuild stage publish")
    seconds = time.perf_counter() - t0
    result = dict(json.loads(out.strip().splitlines()[-1]))
    shared.pointer = str(Path(result["pointer"]).relative_to(shared.a.mountpoint))
    shared.version = result["version"]
    return {**result, "seconds": round(seconds, 1)}


def run_argv(pointer: str, local: Path | None, *cmd: str) -> list[str]:
    return [ENVBUILD, "run", pointer, *(["--local", str(local)] if local else []), "--", *cmd]


def fresh_dir(prefix: str) -> Path:
    """A name for a new dir on local disk (not made: materialize makes its cache dir)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=LOCAL))
    path.rmdir()
    return path


def drop(path: Path) -> None:
    """Remove a local tree and write back what is dirty, so the next task does not pay for
    this one's writeback."""
    force_rmtree(path)
    os.sync()


# ---- row 1: one launch --------------------------------------------------------------------


def launch_tasks(shared: Shared, local: Path) -> list[Task]:
    """A launch through node b with warm client caches (the same launch ran just before),
    and through a fresh mount (cold client caches), each direct and materialized."""
    env = run_env()
    fresh: list[Mount] = []

    def warm(name: str, use_local: Path | None) -> Task:
        argv = run_argv(shared.via(shared.b), use_local, "python", "-c", IMPORT)

        def commands() -> list[list[str]]:
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            shared.start_count()
            return [argv]
        return Task(name, commands, env=env, cleanup=lambda: shared.record(name))

    def cold(name: str, use_local: Path | None) -> Task:
        def commands() -> list[list[str]]:
            fresh.append(mount(shared.server, EXPORT, STAGE / "node-c"))
            shared.start_count()
            return [run_argv(shared.via(fresh[-1]), use_local, "python", "-c", IMPORT)]

        def cleanup() -> None:
            shared.record(name)
            fresh.pop().stop()
        return Task(name, commands, env=env, cleanup=cleanup)

    return [warm(DIRECT_WARM, None), warm(LOCAL_WARM, local),
            cold(DIRECT_COLD, None), cold(LOCAL_COLD, local)]


DIRECT_WARM = "direct, warm client caches"
LOCAL_WARM = "--local, warm client caches"
DIRECT_COLD = "direct, cold client caches (fresh mount)"
LOCAL_COLD = "--local, cold client caches (fresh mount)"


# ---- row 2: the first materialization -----------------------------------------------------


MATERIALIZE = "first materialization (`run --local NEWDIR -- true`, whole)"
TAR = "tar -xf ARCHIVE (through the mount) -C NEWDIR"
TRUE_LOCAL = "warm `run --local DIR -- true`"
PHASES_TASK = "phases: copy + sha256, unpack, verify"


def materialize_tasks(shared: Shared, local: Path, phases_out: Path) -> list[Task]:
    env = run_env()
    made: list[Path] = []
    python = str(Path(ENVBUILD).parent / "python")

    def first() -> list[list[str]]:
        made.append(fresh_dir("first-"))
        shared.start_count()
        return [run_argv(shared.via(shared.b), made[-1], "true")]

    def first_done() -> None:
        shared.record(MATERIALIZE)
        drop(made.pop())

    def tar() -> list[list[str]]:
        made.append(Path(tempfile.mkdtemp(prefix="tar-", dir=LOCAL)))
        shared.start_count()
        return [["tar", "-xf", shared.archive(), "-C", str(made[-1])]]

    def tar_done() -> None:
        shared.record(TAR)
        drop(made.pop())

    def phases() -> list[list[str]]:
        made.append(Path(tempfile.mkdtemp(prefix="phases-", dir=LOCAL)))
        return [[python, "-c", PHASES, shared.archive(), str(made[-1]), str(phases_out)]]

    return [Task(MATERIALIZE, first, env=env, cleanup=first_done),
            Task(TAR, tar, env=env, cleanup=tar_done),
            Task(TRUE_LOCAL, lambda: [run_argv(shared.via(shared.b), local, "true")], env=env),
            Task(PHASES_TASK, phases, env=env, cleanup=lambda: drop(made.pop()))]


# ---- row 3: 64 launches at once -----------------------------------------------------------


@dataclass
class Concurrent(Task):
    """`copies` processes of the one command, started at once; timed until the last exits."""

    copies: int = COPIES

    def run_once(self) -> float:
        argv = self.commands()[0]
        with tempfile.TemporaryFile() as err:
            try:
                t0 = time.perf_counter()
                procs = [subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=err)
                         for _ in range(self.copies)]
                codes = [p.wait() for p in procs]
                ms = (time.perf_counter() - t0) * 1000.0
                if any(c not in self.ok_codes for c in codes):
                    err.seek(0)
                    tail = err.read()[-4000:].decode(errors="replace")
                    sys.exit(f"bench: {self.name}: exits {sorted(set(codes))}: "
                             f"{' '.join(argv)}\n{tail}")
                return ms
            finally:
                self.cleanup()


MANY_DIRECT = f"{COPIES} at once, direct"
MANY_LOCAL = f"{COPIES} at once, --local (materialized before)"
MANY_FIRST = f"{COPIES} at once, --local, first materialization included"


def concurrent_tasks(shared: Shared, local: Path) -> list[Task]:
    """Each batch through a fresh mount (one node starting a job: cold client caches)."""
    env = run_env()
    fresh: list[Mount] = []
    made: list[Path] = []

    def batch(name: str, use_local: Callable[[], Path | None]) -> Task:
        def commands() -> list[list[str]]:
            fresh.append(mount(shared.server, EXPORT, STAGE / "node-c"))
            shared.start_count()
            return [run_argv(shared.via(fresh[-1]), use_local(), "python", "-c", IMPORT)]

        def cleanup() -> None:
            shared.record(name)
            fresh.pop().stop()
            while made:
                drop(made.pop())
        return Concurrent(name, commands, env=env, cleanup=cleanup)

    def new_local() -> Path:
        made.append(fresh_dir("many-"))
        return made[-1]

    return [batch(MANY_DIRECT, lambda: None), batch(MANY_LOCAL, lambda: local),
            batch(MANY_FIRST, new_local)]


# ---- the report ---------------------------------------------------------------------------


@dataclass
class StageRow:
    name: str
    ms: float
    requests: float | None = None
    baseline: str = ""
    baseline_ms: float | None = None
    baseline_requests: float | None = None
    paired: list[float] = field(default_factory=list)
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        return self.ms / self.baseline_ms if self.baseline_ms else None

    @property
    def fewer(self) -> float | None:
        """How many times fewer requests than the baseline."""
        if self.requests is None or self.baseline_requests is None:
            return None
        return self.baseline_requests / max(self.requests, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "median_ms": round(self.ms, 2), "requests": self.requests,
                "baseline": self.baseline or None,
                "baseline_median_ms": None if self.baseline_ms is None
                else round(self.baseline_ms, 2),
                "baseline_requests": self.baseline_requests,
                "ratio": None if self.ratio is None else round(self.ratio, 3),
                "paired_ratio": round(median(self.paired), 3) if self.paired else None,
                "fewer_requests": None if self.fewer is None else round(self.fewer, 1),
                "goal": self.goal or None, "met": self.met}


def median_requests(shared: Shared, name: str) -> float | None:
    got = shared.counts.get(name)
    return median([float(r.total) for r in got]) if got else None


def compare(samples: dict[str, list[float]], shared: Shared, name: str, baseline: str,
            label: str, goal: str = "") -> StageRow:
    row = StageRow(label, median(samples[name]), median_requests(shared, name),
                   baseline, median(samples[baseline]), median_requests(shared, baseline),
                   [a / b for a, b in zip(samples[name], samples[baseline])], goal)
    if goal.startswith("≥"):
        row.met = row.fewer is not None and row.fewer >= REQUEST_GOAL
    elif goal.startswith("≤"):
        row.met = row.ratio is not None and row.ratio <= MATERIALIZE_GOAL
    return row


def build_rows(samples: dict[str, list[float]], shared: Shared) -> list[StageRow]:
    rows = []
    fewer = f"≥ {REQUEST_GOAL:.0f}× fewer requests"
    if DIRECT_WARM in samples:
        rows += [compare(samples, shared, LOCAL_WARM, DIRECT_WARM,
                         "1. launch `import pandas, scipy`, --local vs direct, warm client "
                         "caches", fewer),
                 compare(samples, shared, LOCAL_COLD, DIRECT_COLD,
                         "1. the same, cold client caches (a fresh mount per launch)", fewer)]
    if MATERIALIZE in samples:
        first = compare(samples, shared, MATERIALIZE, TAR,
                        "2. first materialization, whole (`run --local NEWDIR -- true`)",
                        f"≤ {MATERIALIZE_GOAL}×")
        net = StageRow("2. first materialization minus a warm `run --local DIR -- true`",
                       median([a - b for a, b in zip(samples[MATERIALIZE],
                                                     samples[TRUE_LOCAL])]),
                       baseline=TAR, baseline_ms=first.baseline_ms,
                       paired=[(a - b) / c for a, b, c in zip(
                           samples[MATERIALIZE], samples[TRUE_LOCAL], samples[TAR])])
        rows += [first, net, StageRow(f"2. {TRUE_LOCAL} (info)", median(samples[TRUE_LOCAL]))]
    if MANY_DIRECT in samples:
        rows += [compare(samples, shared, MANY_LOCAL, MANY_DIRECT,
                         f"3. {COPIES} launches at once, --local (materialized before) vs "
                         "direct"),
                 compare(samples, shared, MANY_FIRST, MANY_DIRECT,
                         f"3. {COPIES} launches at once, --local with the first "
                         "materialization vs direct")]
    return rows


def fmt_count(n: float | None) -> str:
    return "—" if n is None else f"{n:,.0f}"


def table(rows: Sequence[StageRow]) -> str:
    head = ["row", "median ms", "server requests", "baseline", "baseline ms",
            "baseline requests", "time ratio", "paired ratio", "fewer requests", "goal",
            "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, fmt_ms(r.ms), fmt_count(r.requests), r.baseline or "—",
                 fmt_ms(r.baseline_ms), fmt_count(r.baseline_requests),
                 "—" if r.ratio is None else f"{r.ratio:.2f}×",
                 f"{median(r.paired):.2f}×" if r.paired else "—",
                 "—" if r.fewer is None else f"{r.fewer:,.0f}×", r.goal or "—",
                 "—" if r.met is None else ("yes" if r.met else "**no**")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def kinds_table(shared: Shared) -> tuple[str, dict[str, Any]]:
    """Requests per sample by kind (means over the samples), and those answered ENOENT."""
    lines = ["| task | samples | requests (mean) | by kind (mean) | answered \"no such file\" |",
             "|---|---|---|---|---|"]
    data: dict[str, Any] = {}
    for name, got in shared.counts.items():
        total = Requests()
        for r in got:
            total = total + r
        n = len(got)
        kinds = {k: round(v / n, 1) for k, v in total.kinds.most_common()}
        missing = {k: round(v / n, 1) for k, v in total.missing.most_common()}
        data[name] = {"samples": [r.total for r in got], "kinds_mean": kinds,
                      "no_such_file_mean": missing}
        lines.append(f"| {name} | {n} | {total.total / n:,.0f} | "
                     + ", ".join(f"{k} {v:,.0f}" for k, v in kinds.items()) + " | "
                     + (", ".join(f"{k} {v:,.0f}" for k, v in missing.items()) or "—") + " |")
    return "\n".join(lines), data


def phases_table(phases_out: Path, samples: dict[str, list[float]]
                 ) -> tuple[str, dict[str, float]]:
    runs = [json.loads(line) for line in phases_out.read_text().splitlines()]
    meds = {k: median([float(r[k]) for r in runs]) for k in ("copy", "unpack", "verify")}
    whole = median(samples[MATERIALIZE])
    meds["sum"] = sum(meds.values())
    meds["whole"] = whole
    lines = ["| phase | median ms | share of the whole |", "|---|---|---|"]
    labels = {"copy": "archive copied through the mount to local disk, sha256 on the way",
              "unpack": "unpacked (`envbuild.archive.unpack`, tarfile)",
              "verify": "verified at the files level"}
    for k, label in labels.items():
        lines.append(f"| {label} | {fmt_ms(meds[k])} | {meds[k] / whole:.0%} |")
    lines.append(f"| sum of the three | {fmt_ms(meds['sum'])} | {meds['sum'] / whole:.0%} |")
    lines.append(f"| the rest: CLI start, jitter (0–0.5 s), locks, rename, `true` | "
                 f"{fmt_ms(whole - meds['sum'])} | {(whole - meds['sum']) / whole:.0%} |")
    lines.append(f"| the whole materialization (row 2) | {fmt_ms(whole)} | 100% |")
    return "\n".join(lines), meds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7,
                    help="interleaved rounds of the one-launch rows (default 7, at least 3)")
    ap.add_argument("--materialize-runs", type=int, default=5,
                    help="rounds of the first-materialization rows (default 5)")
    ap.add_argument("--concurrent-runs", type=int, default=3,
                    help=f"rounds of the {COPIES}-at-once rows (default 3; 0 leaves them out)")
    ap.add_argument("--store", type=Path, default=DEFAULT_STORE,
                    help=f"the bench store, shared with the other benches (default "
                    f"{DEFAULT_STORE})")
    args = ap.parse_args()
    if args.runs < 3 or args.materialize_runs < 1 or args.concurrent_runs < 0:
        ap.error("expected --runs ≥ 3, --materialize-runs ≥ 1, --concurrent-runs ≥ 0")
    started = time.time()
    load0 = os.getloadavg()[0]
    env = ensure_env(RECIPE, args.store.absolute())
    force_rmtree(LOCAL)
    LOCAL.mkdir(parents=True)
    samples: dict[str, list[float]] = {}
    with shared_root() as shared:
        published = publish(env, shared)
        print(f"bench: published {published['version']} in {published['seconds']} s "
              f"(new: {published['new']})", file=sys.stderr)
        local = LOCAL / "node"
        t0 = time.perf_counter()
        run_checked(run_argv(shared.via(shared.b), local, "true"), run_env(),
                    "the first materialization")
        setup_ms = (time.perf_counter() - t0) * 1000.0
        phases_out = STAGE / "phases.jsonl"
        phases_out.unlink(missing_ok=True)
        sections = [("one launch", launch_tasks(shared, local), args.runs, 1),
                    ("materialization", materialize_tasks(shared, local, phases_out),
                     args.materialize_runs, 0),
                    (f"{COPIES} at once", concurrent_tasks(shared, local),
                     args.concurrent_runs, 0)]
        minutes: dict[str, float] = {}
        for label, tasks, runs, warmup in sections:
            if runs:
                t0 = time.perf_counter()
                samples |= interleave(tasks, runs, warmup=warmup, label=label)
                shared.keep_last(tasks, runs)
                minutes[label] = round((time.perf_counter() - t0) / 60, 1)
        rows = build_rows(samples, shared)
        kinds, kinds_data = kinds_table(shared)
    force_rmtree(LOCAL)
    phases, phase_ms = phases_table(phases_out, samples)
    header = (f"jupyter-stack ({env.distributions} distributions, {env.files:,} files) on an "
              f"sshfs root (sshd on 127.0.0.1); medians of {args.runs} (row 1), "
              f"{args.materialize_runs} (row 2) and {args.concurrent_runs} (row 3) "
              f"interleaved rounds; load average {load0:.2f} at start, "
              f"{os.getloadavg()[0]:.2f} at end; {(time.time() - started) / 60:.1f} min in all ("
              + ", ".join(f"{k}: {v} min" for k, v in minutes.items()) + ")")
    print(header + "\n")
    print(table(rows))
    print("\nrequests at the file server, per sample:\n")
    print(kinds)
    print("\nwhere a first materialization's time goes (same rounds):\n")
    print(phases)
    path = write_json("stage.json", {
        "machine": machine(), "header": header,
        "runs": {"launch": args.runs, "materialize": args.materialize_runs,
                 "concurrent": args.concurrent_runs},
        "env": {"path": str(env.path), "distributions": env.distributions, "files": env.files},
        "published": published, "setup_materialization_ms": round(setup_ms, 1),
        "minutes": minutes,
        "rows": [r.to_json() for r in rows], "requests": kinds_data, "phases_ms": phase_ms,
        "samples_ms": {k: [round(x, 2) for x in v] for k, v in samples.items()}})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
