"""Run records: one JSON line per launch, appended with a single write. Stdlib only and
light to import (no `json`, `socket`, `datetime`): this runs after every launch."""

from __future__ import annotations

import os
import sys
import time

from .layout import runlog_path
from .verify import Report

_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")


def record(report: Report, argv: list[str], started: float, code: int, sig: int | None,
            pid: int | None, environ: dict[str, str], forwarded: list[int] | None = None
            ) -> None:
    """One line for one launch. `forwarded`: the signals passed on to CMD (an addition to
    DESIGN's keys: `signal` is only the one that ended CMD)."""
    path = runlog_path(report.env)
    record = {
        "started_utc": _utc(started), "ended_utc": _utc(time.time()), "exit_code": code,
        "signal": _signal_name(sig) if sig else None,
        "forwarded": [_signal_name(s) for s in forwarded or ()], "argv": argv, "pid": pid,
        "launcher_pid": os.getpid(), "host": os.uname().nodename, "ip": local_ip(),
        "user": _user(), "cwd": _cwd(), "env": report.env,
        "manifest_digest": report.manifest_digest,
        "verify": {"level": report.level, "ok": report.ok,
                   "differences": [d.to_json() for d in report.differences]},
        "environment": redact(environ),
    }
    line = (to_json(record) + "\n").encode("utf-8", "surrogateescape")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)   # one write of one whole line: O_APPEND keeps lines whole
        finally:
            os.close(fd)
    except OSError as exc:
        sys.stderr.write(f"envbuild: warning: run record not written to {path}: "
                         f"{exc.strerror}\n")


def redact(environ: dict[str, str]) -> dict[str, str]:
    return {k: ("<redacted>" if any(w in k.upper() for w in _SECRET_WORDS) else v)
            for k, v in sorted(environ.items())}


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _signal_name(sig: int) -> str:
    import signal

    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""


def local_ip() -> str | None:
    """First non-loopback IPv4 address of a local interface, read from the kernel (no DNS)."""
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for prev, line in zip(lines, lines[1:]):
        if line.strip() == "/32 host LOCAL":
            addr = prev.strip().split()[-1]
            if not addr.startswith("127."):
                return addr
    return "127.0.0.1" if any("/32 host LOCAL" in x for x in lines) else None


def to_json(value: object) -> str:
    """Compact JSON for str/int/bool/None/list/dict; `json` costs ~12 ms to import here."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _json_str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_str(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _json_str(s: str) -> str:
    # most values need no escape: printable excludes control characters and surrogates
    if s.isprintable() and '"' not in s and "\\" not in s:
        return '"' + s + '"'
    out = []
    for ch in s:
        if ch in _ESC:
            out.append(_ESC[ch])
        elif ch < " " or "\ud800" <= ch <= "\udfff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
