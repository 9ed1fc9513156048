"""The image bench's builds: `envbuild image` as a subprocess (its progress lines on stderr
timestamped, to see where the time goes) and the hand-written Dockerfile built through the
docker SDK on the same engine and base (its `Step` lines timestamped the same way)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from common import ENVBUILD, Task, base_env, force_rmtree, median
from engines import Engine, fail

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
ENVBUILD_IMAGE = ENVBUILD
ENVBUILD_TAG = "localhost/bench-envbuild:latest"
DOCKERFILE_TAG = "localhost/bench-dockerfile:latest"
# A careful hand-written Dockerfile: a venv, pip installing exactly the lock, hash-checked.
# The wheels come in the build context, since builds here have no network.
DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY . /ctx
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-index --find-links /ctx/wheels \\
    --require-hashes --no-deps --no-cache-dir --disable-pip-version-check \\
    -r /ctx/requirements.lock
ENV PATH=/opt/venv/bin:$PATH
"""
PHASE_KEYS = (("probing", "probe"), ("downloading", "download"),
              ("fetching envbuild's build tools", "tools"), ("creating a venv", "venv"),
              ("installing", "install"), ("compiling", "bytecode"),
              ("writing the manifest", "manifest"), ("publishing", "publish"),
              ("writing the image's layers", "layers"), ("loading", "load"),
              ("compressing", "compress"), ("pushing", "push"), ("layer ", "push"),
              ("config ", "push"), ("image ", "done"), ("exit", "exit"))
Marks = list[tuple[float, str]]          # (seconds since start, progress message)


@dataclass
class Marked:
    ms: float
    marks: Marks
    stdout: str
    code: int = 0
    tail: str = ""


def run_marked(argv: list[str], env: dict[str, str], check: bool = True) -> Marked:
    """Run argv; its wall time and the time of each `envbuild: ` line on its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    marks: Marks = []
    tail: list[str] = []
    for line in proc.stderr:
        now = time.perf_counter() - t0
        tail = [*tail[-40:], line.rstrip("\n")]
        if line.startswith("envbuild: "):
            marks.append((now, line[len("envbuild: "):].strip()))
    out = proc.stdout.read()
    code = proc.wait()
    ms = (time.perf_counter() - t0) * 1000.0
    if code != 0 and check:
        fail(f"exit {code}: {' '.join(argv)}\n" + "\n".join(tail))
    return Marked(ms, [*marks, (ms / 1000.0, "exit")], out, code, "\n".join(tail))


def docker_build(client: docker.DockerClient, context: Path, tag: str, base: str) -> Marked:
    """The Dockerfile in `context`, built with no network and no layer cache."""
    t0 = time.perf_counter()
    marks: Marks = []
    tail: list[str] = []
    built = None
    for chunk in client.api.build(path=str(context), tag=tag, buildargs={"BASE": base},
                                  network_mode="none", nocache=True, rm=True, forcerm=True,
                                  pull=False, decode=True):
        now = time.perf_counter() - t0
        for line in str(chunk.get("stream", "")).splitlines():
            tail = [*tail[-20:], line]
            if line.startswith("Step "):
                marks.append((now, line))
        if "error" in chunk:
            fail(f"docker build {context}: {chunk['error']}\n" + "\n".join(tail))
        built = (chunk.get("aux") or {}).get("ID", built)
    ms = (time.perf_counter() - t0) * 1000.0
    if not built:
        fail(f"docker build {context} gave no image:\n" + "\n".join(tail))
    return Marked(ms, [*marks, (ms / 1000.0, "exit")], str(built))


def pip_download(lock: Path, dest: Path, fresh: bool = False) -> Path:
    """The lock's artifacts for this machine's Python (3.11 here, as the base's), downloaded
    by pip with no ambient configuration into `dest` (kept between runs unless `fresh`)."""
    if (dest / ".complete").exists() and not fresh:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    env = {k: v for k, v in base_env().items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PYTHONNOUSERSITE="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--require-hashes",
                           "--no-deps", "--disable-pip-version-check", "--progress-bar", "off",
                           "-r", str(lock), "-d", str(dest)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        fail(f"pip download -r {lock}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    (dest / ".complete").write_text("")
    return dest


def dockerfile_context(where: Path, lock: Path, wheels: Path) -> Path:
    """Dockerfile, requirements.lock and wheels/ (hard links) in `where`."""
    shutil.rmtree(where, ignore_errors=True)
    (where / "wheels").mkdir(parents=True)
    (where / "Dockerfile").write_text(DOCKERFILE)
    shutil.copyfile(lock, where / "requirements.lock")
    for wheel in sorted(wheels.iterdir()):
        if not wheel.name.startswith("."):
            os.link(wheel, where / "wheels" / wheel.name)
    return where


def remove_envbuild_images(client: docker.DockerClient) -> None:
    """Every image envbuild wrote (labelled with its manifest), so the next build loads a new
    image instead of re-tagging an identical one."""
    for image in client.images.list():
        if "io.envbuild.manifest" in (image.labels or {}):
            client.images.remove(str(image.id), force=True)


def remove_tag(client: docker.DockerClient, tag: str) -> None:
    try:
        client.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass


def envbuild_env_bytes(client: docker.DockerClient, tag: str) -> tuple[int, int]:
    """The uncompressed bytes of envbuild's env layers (history `env: ...`), and how many."""
    env = [h for h in client.images.get(tag).history()
           if str(h["CreatedBy"]).startswith("env: ")]
    return sum(int(h["Size"]) for h in env), len(env)


class Timed(Task):
    """A task timed by its own function (returns milliseconds)."""

    def __init__(self, name: str, run: Callable[[], float]) -> None:
        super().__init__(name, list)
        self._run = run

    def run_once(self) -> float:
        return self._run()


class BuildTasks:
    """The timed builds: envbuild with a fresh and with a warm store (the env's layers of the
    same inputs kept there: the builder stage does not run), and with a warm store and
    --force (the builder stage runs, the wheel cache warm); the Dockerfile with a fresh pip
    download (timed apart) and with the wheels downloaded once."""

    COLD = "envbuild image, fresh store"
    WARM = "envbuild image, warm store"
    FORCED = "envbuild image --force, warm store"
    BASE_COLD = "Dockerfile (after a fresh pip download)"
    BASE_WARM = "Dockerfile: venv + pip install --require-hashes"

    def __init__(self, engine: Engine, base: str, recipe: Path, work: Path,
                 wheels: Path) -> None:
        self.engine, self.base, self.recipe, self.work = engine, base, recipe, work
        self.lock = recipe.with_suffix(".lock")
        self.warm_store = work / "store"
        self.scratch = work / "scratch"
        self.context = dockerfile_context(work / "dockerfile", self.lock, wheels)
        self.envbuild_tag, self.dockerfile_tag = ENVBUILD_TAG, DOCKERFILE_TAG
        self.downloads: list[float] = []
        self.marks: dict[str, list[Marks]] = {}
        self.failures: list[dict[str, Any]] = []     # envbuild builds that failed, retried
        self.client = engine.client()

    def tasks(self) -> list[Task]:
        return [Timed(self.COLD, self._envbuild_cold), Timed(self.BASE_COLD, self._base_cold),
                Timed(self.WARM, self._envbuild_warm), Timed(self.BASE_WARM, self._base_warm),
                Timed(self.FORCED, self._envbuild_forced)]

    def warm_up(self) -> None:
        """Untimed: fill the warm store (a cold build the first time) and the page cache."""
        print("bench: warm-up builds (untimed)", file=sys.stderr, flush=True)
        self._envbuild(self.warm_store, None)
        self._dockerfile(self.context, None)

    untimed = warm_up

    def _envbuild(self, store: Path, name: str | None, *extra: str) -> float:
        """One build; a failed one is recorded and run once more (a second failure ends the
        bench). The time returned is the successful run's."""
        argv = [ENVBUILD, "image", str(self.recipe), "--tag", self.envbuild_tag, "--base",
                self.base, "--store", str(store), *extra]
        env = self.engine.env(base_env())
        remove_envbuild_images(self.client)
        got = run_marked(argv, env, check=False)
        if got.code != 0:
            print(f"bench: {name or 'warm-up'}: envbuild image failed (exit {got.code}), "
                  f"running it once more:\n{got.tail}", file=sys.stderr, flush=True)
            self.failures.append({"task": name or "warm-up", "exit": got.code,
                                  "seconds": round(got.ms / 1000, 1), "tail": got.tail})
            remove_envbuild_images(self.client)
            got = run_marked(argv, env)
        if name:
            self.marks.setdefault(name, []).append(got.marks)
        return got.ms

    def _envbuild_cold(self) -> float:
        self.scratch.mkdir(parents=True, exist_ok=True)
        store = Path(tempfile.mkdtemp(prefix="store-", dir=self.scratch))
        try:
            return self._envbuild(store, self.COLD)
        finally:
            force_rmtree(store)

    def _envbuild_warm(self) -> float:
        return self._envbuild(self.warm_store, self.WARM)

    def _envbuild_forced(self) -> float:
        return self._envbuild(self.warm_store, self.FORCED, "--force")

    def _dockerfile(self, context: Path, name: str | None) -> float:
        remove_tag(self.client, self.dockerfile_tag)
        got = docker_build(self.client, context, self.dockerfile_tag, self.base)
        if name:
            self.marks.setdefault(name, []).append(got.marks)
        return got.ms

    def _base_cold(self) -> float:
        self.scratch.mkdir(parents=True, exist_ok=True)
        where = Path(tempfile.mkdtemp(prefix="ctx-", dir=self.scratch))
        try:
            t0 = time.perf_counter()
            wheels = pip_download(self.lock, where / "download", fresh=True)
            self.downloads.append((time.perf_counter() - t0) * 1000.0)
            context = dockerfile_context(where / "context", self.lock, wheels)
            return self._dockerfile(context, self.BASE_COLD)
        finally:
            shutil.rmtree(where, ignore_errors=True)

    def _base_warm(self) -> float:
        return self._dockerfile(self.context, self.BASE_WARM)


# ---- where the time goes ----------------------------------------------------------------


def _key(message: str) -> str:
    if message.startswith("Step "):                  # "Step 3/5 : COPY . /ctx"
        return message.partition(" : ")[2].split(" ")[0]
    for prefix, key in PHASE_KEYS:
        if message.startswith(prefix):
            return key
    return " ".join(message.split()[:2])


def segments(marks: Marks) -> list[tuple[str, float]]:
    """(from → to, seconds) between consecutive progress lines; repeats of a phase merged."""
    out: list[tuple[str, float]] = []
    prev, t_prev = "start", 0.0
    for t, message in marks:
        key = _key(message)
        if key == prev:
            continue
        out.append((f"{prev} → {key}", t - t_prev))
        prev, t_prev = key, t
    return out


def phases(runs: list[Marks]) -> dict[str, float]:
    """Median seconds of each segment over the runs (in the order of the first run)."""
    seen: dict[str, list[float]] = {}
    for marks in runs:
        for label, seconds in segments(marks):
            seen.setdefault(label, []).append(seconds)
    return {label: round(median(values), 2) for label, values in seen.items()}


def phase_table(by_task: dict[str, dict[str, float]], names: list[str]) -> str:
    labels: list[str] = []
    for name in names:
        labels += [label for label in by_task.get(name, {}) if label not in labels]
    lines = ["| segment | " + " | ".join(f"{n}, s" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for label in labels:
        cells = [by_task.get(n, {}).get(label) for n in names]
        lines.append(f"| {label} | " + " | ".join("—" if c is None else f"{c:.1f}"
                                                  for c in cells) + " |")
    totals = [sum(by_task.get(n, {}).values()) for n in names]
    lines.append("| **sum of medians** | " + " | ".join(f"{t:.1f}" for t in totals) + " |")
    return "\n".join(lines)


def json_line(text: str) -> dict[str, Any]:
    """The last line of `envbuild ... --json`'s stdout, parsed."""
    return dict(json.loads(text.strip().splitlines()[-1]))
