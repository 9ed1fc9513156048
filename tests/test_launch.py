"""`envbuild run` and `ENV/bin/envbuild-guard`, end to end through real subprocesses: exit
codes, the environment contract, the guard on a bare node, run records, and signals.

Most tests run both launchers (`run` and `guard`): the guard promises the same checks and
exit codes as `envbuild run`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import pty
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Built, cli, copy_env, envbuild, ignore_sigchld, make_writable, write_recipe
from pkgindex import LocalIndex

LAUNCHERS = ["run", "guard"]
SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
RECORD_KEYS = {"started_utc", "ended_utc", "exit_code", "signal", "argv", "pid", "launcher_pid",
               "host", "ip", "user", "cwd", "manifest_digest", "verify", "environment"}

# CMD for the signal tests: count each signal it gets in MARKER, exit 3 once it got one.
# It lingers a second after the first signal so that a second delivery would be counted.
SIGNAL_CHILD = r"""
import os, signal, sys, time
marker, ready = sys.argv[1], sys.argv[2]
hits = []
def on_signal(signum, frame):
    with open(marker, "a") as fh:
        fh.write(f"{signum}\n")
    hits.append(signum)
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
    signal.signal(sig, on_signal)
with open(ready + ".tmp", "w") as fh:
    fh.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
deadline = time.monotonic() + 30
while not hits and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1)
sys.exit(3 if hits else 9)
"""


# ---- helpers -----------------------------------------------------------------------------


@pytest.fixture
def env(built: Built, tmp_path: Path) -> Path:
    """A copy of the built env at another path (read-only, untouched)."""
    return copy_env(built.env, tmp_path / "env")


def launcher_argv(kind: str, env: Path, *options: str) -> list[str]:
    if kind == "run":
        return [sys.executable, "-m", "envbuild", "run", str(env), *options, "--"]
    return [str(env / "bin" / "envbuild-guard"), *options, "--"]


def environ(**changes: str | None) -> dict[str, str]:
    """This process's environment without the contract's variables, then `changes`."""
    out = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "PYTHONPATH", "PYTHONHOME", "ENVBUILD_RUNLOG", "SCRATCH",
                 "JOBID"):
        out.pop(name, None)
    for name, value in changes.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def launch(kind: str, env: Path, *cmd: str, env_vars: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*launcher_argv(kind, env), *cmd],
                          env=environ() if env_vars is None else env_vars,
                          capture_output=True, text=True, timeout=120)


def touch_cmd(marker: Path) -> list[str]:
    return ["sh", "-c", f"touch {shlex.quote(str(marker))}"]


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Poll for `path`, failing early if `proc` has already exited."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited with {proc.returncode} before {path} appeared: {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def records(log: Path) -> list[dict[str, Any]]:
    """Every line of a run log, each a whole JSON object."""
    text = log.read_text()
    assert text.endswith("\n"), "a record is a whole line"
    return [json.loads(line) for line in text.splitlines()]


# ---- exit codes --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_status_passes_through(kind: str, env: Path) -> None:
    res = launch(kind, env, "sh", "-c", "exit 7")
    assert res.returncode == 7, res.stderr


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_command_not_found_is_127(kind: str, env: Path) -> None:
    res = launch(kind, env, "no-such-command-envbuild-test")
    assert res.returncode == 127, res.stderr
    assert "no-such-command-envbuild-test" in res.stderr


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_not_executable_is_126(kind: str, env: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    res = launch(kind, env, str(script))
    assert res.returncode == 126, res.stderr
    assert str(script) in res.stderr


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_killed_by_signal_is_128_plus_n(kind: str, env: Path) -> None:
    res = launch(kind, env, "sh", "-c", "kill -TERM $$")
    assert res.returncode == 128 + signal.SIGTERM, res.stderr


def test_run_on_a_path_that_is_not_an_env_is_125(tmp_path: Path) -> None:
    marker, log = tmp_path / "MARKER", tmp_path / "runs.jsonl"
    for path in (tmp_path, tmp_path / "missing"):
        res = subprocess.run([*launcher_argv("run", path), *touch_cmd(marker)],
                             env=environ(ENVBUILD_RUNLOG=str(log)),
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 125, res.stderr
        assert str(path) in res.stderr
    assert not marker.exists()
    # still launches: each recorded, with why, and no CMD pid
    recs = records(log)
    assert [(r["exit_code"], r["pid"], r["manifest_digest"], r["verify"]["ok"])
            for r in recs] == [(125, None, None, False)] * 2
    assert all(str(tmp_path) in r["verify"]["differences"][0]["found"] for r in recs)


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_no_command_is_refused(kind: str, env: Path, tmp_path: Path) -> None:
    """A command line to fix, like a bad option: refused, and not a launch to record."""
    log = tmp_path / "runs.jsonl"
    res = subprocess.run(launcher_argv(kind, env), env=environ(ENVBUILD_RUNLOG=str(log)),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 125, res.stderr
    assert "no command given" in res.stderr
    assert not log.exists()


@pytest.mark.parametrize("kind", LAUNCHERS)
@pytest.mark.parametrize("expect", ["sha256:zz", "sha256:" + "A" * 64, "md5:" + "0" * 32])
def test_malformed_expect_is_refused(kind: str, env: Path, tmp_path: Path,
                                     expect: str) -> None:
    marker = tmp_path / "MARKER"
    res = subprocess.run([*launcher_argv(kind, env, "--expect", expect), *touch_cmd(marker)],
                         env=environ(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 125, res.stderr
    assert "--expect" in res.stderr and expect in res.stderr
    assert not marker.exists()


@pytest.mark.parametrize("kind", LAUNCHERS)
@pytest.mark.parametrize("level", ["quick", "full"])   # full forks its hashing workers
def test_inherited_ignored_sigchld_does_not_hang(kind: str, level: str, env: Path) -> None:
    """A parent that ignores SIGCHLD passes that on through exec; the launcher must still
    see CMD end, and CMD must get the disposition it would have got without the launcher
    (`run` passes it on; the guard's /bin/sh may reset it, as it would for any script)."""
    cmd = [str(env / "bin" / "python"), "-c", "import signal, sys; sys.exit(5 if "
           "signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN else 6)"]

    def ignoring(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=environ(), capture_output=True, text=True, timeout=60,
                              preexec_fn=ignore_sigchld)

    without = ignoring(["sh", "-c", 'exec "$@"', "sh", *cmd] if kind == "guard" else cmd)
    assert without.returncode in (5, 6), without.stderr
    res = ignoring([*launcher_argv(kind, env, "--level", level), *cmd])
    assert res.returncode == without.returncode, res.stderr
    if kind == "run":   # after a global option, through typer, where every other command
        # restores SIGCHLD's default for the tools it waits for
        argv = launcher_argv(kind, env, "--level", level)
        res = ignoring([*argv[:3], "-q", *argv[3:], *cmd])
        assert res.returncode == without.returncode, res.stderr


# ---- the environment contract ------------------------------------------------------------

SHOW_ENV = 'printf "%s|%s|%s\\n" "${OMP_NUM_THREADS-unset}" "${PYTHONPATH-unset}" ' \
           '"${PYTHONHOME-unset}"'


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_default_applied_when_unset(kind: str, env: Path) -> None:
    res = launch(kind, env, "sh", "-c", SHOW_ENV)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "1|unset|unset\n"


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_default_does_not_override(kind: str, env: Path) -> None:
    res = launch(kind, env, "sh", "-c", SHOW_ENV, env_vars=environ(OMP_NUM_THREADS="4"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "4|unset|unset\n"


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_pythonpath_and_pythonhome_removed(kind: str, env: Path, tmp_path: Path) -> None:
    # PYTHONHOME must still let `envbuild run`'s own interpreter start: its real home.
    res = launch(kind, env, "sh", "-c", SHOW_ENV,
                 env_vars=environ(PYTHONPATH=str(tmp_path), PYTHONHOME=sys.base_prefix))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "1|unset|unset\n"


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_env_bin_first_on_path(kind: str, env: Path) -> None:
    res = launch(kind, env, "sh", "-c", 'echo "$PATH"')
    assert res.returncode == 0, res.stderr
    assert res.stdout.split(":")[0] == str(env / "bin")
    res = launch(kind, env, "python", "-c", "import sys; print(sys.prefix)")
    assert (res.returncode, res.stdout) == (0, f"{env}\n"), res.stderr
    res = launch(kind, env, "alpha")
    assert (res.returncode, res.stdout) == (0, "alpha 2.0\n"), res.stderr


@pytest.fixture(scope="module")
def req_env(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex) -> Path:
    """A small env whose recipe requires SCRATCH and JOBID at launch."""
    work = tmp_path_factory.mktemp("req")
    recipe = write_recipe(work, index, deps=["gamma"], name="req",
                          extra='[environment]\nrequire = ["SCRATCH", "JOBID"]\n')
    res = cli("lock", recipe)
    assert res.exit_code == 0, res.stderr
    res = cli("build", recipe, "--store", work / "store")
    assert res.exit_code == 0, res.stderr
    return Path(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_required_variables_missing(kind: str, req_env: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    res = launch(kind, req_env, *touch_cmd(marker))
    assert res.returncode == 125, res.stderr
    assert not marker.exists(), "CMD started without the variables the recipe requires"
    assert "environment: SCRATCH: " in res.stderr and "environment: JOBID: " in res.stderr

    res = launch(kind, req_env, *touch_cmd(marker), env_vars=environ(SCRATCH=str(tmp_path)))
    assert res.returncode == 125, res.stderr
    assert not marker.exists()
    assert "environment: JOBID: " in res.stderr and "SCRATCH" not in res.stderr


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_required_variables_set(kind: str, req_env: Path, tmp_path: Path) -> None:
    res = launch(kind, req_env, "sh", "-c", 'echo "$SCRATCH $JOBID"',
                 env_vars=environ(SCRATCH=str(tmp_path), JOBID="42"))
    assert (res.returncode, res.stdout) == (0, f"{tmp_path} 42\n"), res.stderr


def test_verify_checks_the_artifact_and_launch_adds_the_variables(req_env: Path) -> None:
    """A CI step verifies the env without the job's variables; `--launch` (and the guard's
    `--verify --launch`) adds the launch's own checks."""
    bare = environ()
    for level in ("quick", "files", "full"):
        res = envbuild("verify", req_env, "--level", level, env=bare)
        assert res.returncode == 0, res.stdout + res.stderr
    res = envbuild("verify", req_env, "--launch", "--json", env=bare)
    assert res.returncode == 1, res.stderr
    assert {(d["kind"], d["subject"]) for d in json.loads(res.stdout)["differences"]} == {
        ("environment", "SCRATCH"), ("environment", "JOBID")}
    res = envbuild("verify", req_env, "--launch", env=environ(SCRATCH="/s", JOBID="1"))
    assert res.returncode == 0, res.stdout + res.stderr
    guard = str(req_env / "bin" / "envbuild-guard")
    res = subprocess.run([guard, "--verify"], env=bare, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([guard, "--verify", "--launch"], env=bare, capture_output=True,
                         text=True)
    assert res.returncode == 1 and "environment: SCRATCH: " in res.stdout


# ---- the guard on a bare node ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "relative", "on PATH"])
def test_guard_from_moved_env_with_empty_environment(env: Path, tmp_path: Path,
                                                     how: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"  # a HOME, so the per-host cache stays out of the real one
    home.mkdir()
    path = "/usr/bin:/bin"
    guard = str(env / "bin" / "envbuild-guard")
    if how == "relative":
        guard = os.path.relpath(guard, elsewhere)
    elif how == "on PATH":
        path, guard = f"{env / 'bin'}:{path}", "envbuild-guard"
    res = subprocess.run(["env", "-i", f"PATH={path}", f"HOME={home}", guard, "--",
                          "python", "-c", "import os, sys; print(sys.prefix, os.getcwd())"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{env} {elsewhere}\n"


def test_guard_refuses_tampered_env(env: Path, tmp_path: Path) -> None:
    """A planted .pth: the guard refuses, and its own interpreter never ran the .pth."""
    pth_ran = tmp_path / "pth-ran"
    make_writable(env)
    (env / SITE / "zz-planted.pth").write_text(
        f"import os; open({str(pth_ran)!r}, 'w').close()\n")
    (env / SITE).chmod(0o555)
    marker = tmp_path / "MARKER"
    res = launch("guard", env, *touch_cmd(marker))
    assert res.returncode == 125, res.stderr
    assert f"added: {SITE}/zz-planted.pth: " in res.stderr
    assert not marker.exists(), "CMD started in a tampered env"
    assert not pth_ran.exists(), "the guard's interpreter ran the planted .pth"


def test_guard_refuses_with_interpreter_missing(env: Path, tmp_path: Path) -> None:
    make_writable(env)
    (env / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}").unlink()
    (env / "bin").chmod(0o555)
    marker = tmp_path / "MARKER"
    res = launch("guard", env, *touch_cmd(marker))
    assert res.returncode == 125, res.stderr
    assert "interpreter" in res.stderr
    assert not marker.exists()


def test_guard_refuses_with_launch_modules_damaged(env: Path, tmp_path: Path) -> None:
    """Any failure of the guard itself is 125, never a status CMD could have returned."""
    make_writable(env)
    pkg = env / "lib" / "envbuild-launch" / "envbuild"
    (pkg / "launch.py").unlink()
    for pyc in (pkg / "__pycache__").glob("launch.*"):
        pyc.unlink()
    marker = tmp_path / "MARKER"
    res = launch("guard", env, *touch_cmd(marker))
    assert res.returncode == 125, f"expected 125, found {res.returncode}: {res.stderr}"
    assert not marker.exists()


# ---- run records -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_run_record_fields(kind: str, built: Built, env: Path, tmp_path: Path) -> None:
    log, dump, cwd = tmp_path / "runs.jsonl", tmp_path / "environ.json", tmp_path / "cwd"
    cwd.mkdir()
    # A small environment with nothing secret-looking, so the record must equal what CMD got.
    # LC_ALL: no C-locale coercion, so CMD's interpreter adds nothing to what it received.
    start_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LC_ALL": "C.UTF-8",
                 "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"], "ENVBUILD_RUNLOG": str(log),
                 "PYTHONPATH": str(tmp_path)}
    cmd = ["python", "-c", "import json, os, sys; print(os.getpid()); "
           "json.dump(dict(os.environ), open(sys.argv[1], 'w')); sys.exit(4)", str(dump)]
    proc = subprocess.Popen([*launcher_argv(kind, env), *cmd], env=start_env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        reap([proc])
    assert proc.returncode == 4, err

    [rec] = records(log)
    assert RECORD_KEYS <= set(rec), RECORD_KEYS - set(rec)
    for key in ("started_utc", "ended_utc"):
        assert ISO_UTC.match(rec[key]), f"{key}: {rec[key]!r} is not ISO 8601 UTC with Z"
    started, ended = (datetime.fromisoformat(rec[k][:-1]) for k in ("started_utc", "ended_utc"))
    assert started <= ended
    assert rec["exit_code"] == 4
    assert rec["signal"] is None
    assert rec["argv"] == cmd
    assert rec["pid"] == int(out.strip())
    assert rec["launcher_pid"] == proc.pid
    assert rec["host"] == socket.gethostname()
    assert isinstance(rec["ip"], str)
    assert ipaddress.ip_address(rec["ip"]).version == 4
    with socket.socket() as sock:
        sock.bind((rec["ip"], 0))  # only an address of a local interface can be bound
    assert rec["user"] == pwd.getpwuid(os.getuid()).pw_name
    assert rec["cwd"] == str(cwd)
    assert rec["manifest_digest"] == built.digest
    assert rec["verify"] == {"level": "quick", "ok": True, "differences": []}
    received = json.loads(dump.read_text())
    assert rec["environment"] == received
    assert received["OMP_NUM_THREADS"] == "1"
    assert "PYTHONPATH" not in received
    assert received["PATH"].split(":")[0] == str(env / "bin")


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_refused_run_is_recorded(kind: str, built: Built, env: Path, tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    make_writable(env)
    (env / SITE / "zz-planted.pth").write_text("import os\n")
    (env / SITE).chmod(0o555)
    marker = tmp_path / "MARKER"
    res = launch(kind, env, *touch_cmd(marker), env_vars=environ(ENVBUILD_RUNLOG=str(log)))
    assert res.returncode == 125, res.stderr
    assert not marker.exists()
    [rec] = records(log)
    assert rec["exit_code"] == 125
    assert rec["pid"] is None, "CMD never started, so it has no pid"
    assert rec["argv"] == touch_cmd(marker)
    assert rec["manifest_digest"] == built.digest
    assert rec["verify"]["ok"] is False
    assert {"kind": "added", "subject": f"{SITE}/zz-planted.pth", "expected": "absent",
            "found": "present"} in rec["verify"]["differences"]


@pytest.mark.parametrize("kind", LAUNCHERS)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_cmd_is_recorded(kind: str, sig: signal.Signals, env: Path,
                                tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    res = launch(kind, env, "sh", "-c", f"kill -{sig.name[3:]} $$",
                 env_vars=environ(ENVBUILD_RUNLOG=str(log)))
    assert res.returncode == 128 + sig, res.stderr
    [rec] = records(log)
    assert (rec["exit_code"], rec["signal"]) == (128 + sig, sig.name)


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_secrets_are_redacted(kind: str, env: Path, tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    secrets = {"API_TOKEN": "supersecret", "DB_PASSWORD": "hunter2hunter2",
               "MY_SECRET": "s3cr3t-value", "AWS_SECRET_ACCESS_KEY": "AKIAEXAMPLEKEY"}
    res = launch(kind, env, "sh", "-c", 'echo "$API_TOKEN"',
                 env_vars=environ(ENVBUILD_RUNLOG=str(log), **secrets))
    assert (res.returncode, res.stdout) == (0, "supersecret\n"), "CMD gets the real value"
    text = log.read_text()
    for name, value in secrets.items():
        assert value not in text, f"{name}'s value is in the run log"
    [rec] = records(log)
    for name in secrets:
        assert rec["environment"][name] == "<redacted>"


def test_concurrent_runs_append_whole_lines(env: Path, tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    procs = [subprocess.Popen([*launcher_argv("run", env), "sh", "-c", f"exit {i % 5}"],
                              env=environ(ENVBUILD_RUNLOG=str(log)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(50)]
    try:
        for i, proc in enumerate(procs):
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == i % 5, err
    finally:
        reap(procs)
    recs = records(log)
    assert len(recs) == 50
    assert {r["launcher_pid"]: r["exit_code"] for r in recs} == {
        p.pid: i % 5 for i, p in enumerate(procs)}


@pytest.mark.parametrize("kind", LAUNCHERS)
@pytest.mark.parametrize("where", ["under /proc", "under a regular file"])
def test_unwritable_log_warns_and_runs(kind: str, where: str, env: Path,
                                       tmp_path: Path) -> None:
    if where == "under /proc":
        log = "/proc/nonexistent/x"
    else:
        (tmp_path / "a-file").write_text("")
        log = str(tmp_path / "a-file" / "runs.jsonl")
    marker = tmp_path / "MARKER"
    res = launch(kind, env, "sh", "-c", f"touch {shlex.quote(str(marker))}; exit 5",
                 env_vars=environ(ENVBUILD_RUNLOG=log))
    assert res.returncode == 5, res.stderr
    assert marker.exists(), "CMD must run although its record cannot be written"
    assert "warning" in res.stderr and log in res.stderr


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_default_log_is_in_the_env_store_then_the_user_store(kind: str, built: Built,
                                                             env: Path, tmp_path: Path) -> None:
    """No $ENVBUILD_RUNLOG or $ENVBUILD_STORE: an env in a store records into that store's
    `runs/<host>.jsonl`; an env elsewhere (a copy) into the per-user store."""
    host = socket.gethostname()
    user_cache = tmp_path / "cache"
    plain = environ(ENVBUILD_STORE=None, XDG_CACHE_HOME=str(user_cache))
    store_log = built.store / "runs" / f"{host}.jsonl"
    before = store_log.read_text().count("\n") if store_log.exists() else 0
    tag = f"store-{kind}-{tmp_path.name}"
    res = launch(kind, built.env, "true", tag, env_vars=plain)
    assert res.returncode == 0, res.stderr
    mine = [r for r in records(store_log)[before:] if r["argv"] == ["true", tag]]
    assert len(mine) == 1

    res = launch(kind, env, "true", "copy", env_vars=plain)
    assert res.returncode == 0, res.stderr
    [rec] = records(user_cache / "envbuild" / "runs" / f"{host}.jsonl")
    assert rec["argv"] == ["true", "copy"]


# ---- signals -------------------------------------------------------------------------------


@contextmanager
def signal_child(kind: str, env: Path, tmp_path: Path, **popen: Any
                 ) -> Iterator[tuple[subprocess.Popen[str], Path, Path, int]]:
    """The launcher running SIGNAL_CHILD, ready: (launcher, marker, log, CMD's pid).

    Whatever the test found, nothing it started outlives it.
    """
    marker, ready, log = tmp_path / "marker", tmp_path / "ready", tmp_path / "runs.jsonl"
    proc = subprocess.Popen(
        [*launcher_argv(kind, env), "python", "-c", SIGNAL_CHILD, str(marker), str(ready)],
        env=environ(ENVBUILD_RUNLOG=str(log)), text=True, **popen)
    pids = [proc.pid]
    try:
        wait_for(ready, proc)
        pids.append(int(ready.read_text()))
        yield proc, marker, log, pids[1]
    finally:
        reap([proc], pids)


def reap(procs: list[subprocess.Popen[str]], pids: Sequence[int] = ()) -> None:
    """Kill what is still running of what this test started (by pid), and wait for it."""
    if all(p.poll() is not None for p in procs):
        return
    for pid in pids or [p.pid for p in procs]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        proc.communicate()


@pytest.mark.parametrize("kind", LAUNCHERS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT, signal.SIGINT])
def test_signal_to_launcher_reaches_cmd_once(kind: str, sig: signal.Signals, env: Path,
                                             tmp_path: Path) -> None:
    with signal_child(kind, env, tmp_path, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE) as (proc, marker, log, child):
        os.kill(proc.pid, sig)  # the launcher alone, as kill, scancel or docker stop do
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert marker.read_text().splitlines() == [str(int(sig))]
    [rec] = records(log)
    assert (rec["exit_code"], rec["signal"], rec["pid"]) == (3, None, child)
    assert rec["forwarded"] == [sig.name], "the signal passed on is recorded"


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_signal_to_process_group_reaches_cmd_once(kind: str, env: Path,
                                                  tmp_path: Path) -> None:
    """`kill -TERM -PGID` signals the launcher and, if it shares the group, CMD: CMD must
    still get it once. The launcher is held stopped until CMD has handled the group's
    signal, so the interleaving that would deliver it twice happens every time."""
    with signal_child(kind, env, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      start_new_session=True) as (proc, marker, log, child):
        cmd_in_group = os.getpgid(child) == os.getpgid(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
            if cmd_in_group:
                wait_for(marker, proc)  # CMD got the group's signal itself
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert marker.read_text().splitlines() == [str(int(signal.SIGTERM))]


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (reparented, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_cmd_dies_with_a_launcher_killed_9(kind: str, env: Path, tmp_path: Path) -> None:
    """Off a terminal CMD has a process group of its own, so a kill -9 of the launcher (or
    of its group) would orphan it; PR_SET_PDEATHSIG ends it too."""
    with signal_child(kind, env, tmp_path, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, start_new_session=True
                      ) as (proc, marker, log, child):
        assert os.getpgid(child) != os.getpgid(proc.pid), "CMD shares the launcher's group"
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while not _gone(child):
            assert time.monotonic() < deadline, f"CMD {child} outlived its killed launcher"
            time.sleep(0.05)
    assert not marker.exists(), "SIGKILL is not forwarded as anything else"


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # stdin, a pty, becomes the controlling terminal


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_ctrl_c_on_a_terminal_reaches_cmd_once(kind: str, env: Path, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    try:
        with signal_child(kind, env, tmp_path, stdin=slave, stdout=slave, stderr=slave,
                          start_new_session=True, preexec_fn=_take_terminal
                          ) as (proc, marker, log, child):
            os.write(master, b"\x03")  # the tty driver sends SIGINT to the foreground group
            proc.wait(timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 3
    assert marker.read_text().splitlines() == [str(int(signal.SIGINT))]
    [rec] = records(log)
    assert (rec["exit_code"], rec["pid"]) == (3, child)


def test_local_cache_is_refused_for_an_env_not_staged(built: Built, tmp_path: Path) -> None:
    """`--local` belongs to staged envs; accepting and ignoring it would mislead a job."""
    marker = tmp_path / "ran"
    proc = subprocess.run([sys.executable, "-m", "envbuild", "run", str(built.env), "--local",
                           str(tmp_path / "cache"), "--", "touch", str(marker)],
                          capture_output=True, text=True)
    assert proc.returncode == 125
    assert "--local: expected a staged pointer (ROOT/NAME)" in proc.stderr
    assert not marker.exists()
