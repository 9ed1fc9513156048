"""Run records: one JSON line per launch, appended with a single write. Stdlib only and
light to import (no `json`, `re`, `socket`, `datetime`): this runs after every launch.

A record keeps secrets' neighbours, so the secrets go before the line is written: the value
of a variable whose name says it is secret, and the secret part of any value whose shape
shows it, in `environment` and in `argv` alike. The file is created 0600 and a directory
envbuild makes for it 0700; an existing one keeps its mode (a shared store's `runs/` is its
administrator's choice, and envbuild never widens it)."""

from __future__ import annotations

import os
import sys
import time

from .layout import runlog_path
from .verify import Report

REDACTED = "<redacted>"

# A name is secret when one of its `_`-separated words is one of these (so PATH, AUTHOR,
# KEYBOARD, MONKEY are not), or ends with one of the long ones, plural or glued to another
# word (PGPASSWORD, APITOKEN, AWS_CREDENTIALS: no ordinary word ends so).
_WORDS = frozenset(("KEY", "KEYS", "PAT", "AUTH", "PRIVATE", "SESSION", "COOKIE", "COOKIES",
                    "DSN"))
_GLUED = tuple(w + s for w in ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE",
                               "CREDENTIAL") for s in ("", "S"))
_CROSS_MIN = 8   # a secret variable's value this long is redacted wherever else it appears

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_URLSAFE = _ALNUM | frozenset("-_")
# Well-known token prefixes: (prefix, the characters of the rest, how many at least).
_Prefix = tuple[str, frozenset[str], int]
_PREFIXES: tuple[_Prefix, ...] = (
    ("ghp_", _ALNUM, 20), ("gho_", _ALNUM, 20), ("ghu_", _ALNUM, 20), ("ghs_", _ALNUM, 20),
    ("ghr_", _ALNUM, 20), ("github_pat_", _URLSAFE, 20),           # GitHub
    ("AKIA", _UPPER, 16), ("ASIA", _UPPER, 16),                      # AWS access key ids
    ("xox", _URLSAFE, 12),                                           # Slack: xoxb-, xoxp-...
    ("glpat-", _URLSAFE, 20), ("npm_", _ALNUM, 30), ("pypi-", _URLSAFE, 30),
    ("hf_", _ALNUM, 30), ("sk-", _URLSAFE, 20), ("AIza", _URLSAFE, 30),
    ("eyJ", _URLSAFE | frozenset(".+/="), 13),                      # JWTs, base64 of '{"'
)
_SHORTEST = min(len(p) + n for p, _, n in _PREFIXES)
_SPACE = frozenset(" \t\n\r")
_WORDY = _SPACE | {"="}
_SCHEMES = ("bearer", "basic")    # HTTP authorization schemes: the next word is the secret


def record(report: Report, argv: list[str], started: float, code: int, sig: int | None,
           pid: int | None, environ: dict[str, str], forwarded: list[int] | None = None
           ) -> None:
    """One line for one launch. `forwarded`: the signals passed on to CMD (an addition to
    DESIGN's keys: `signal` is only the one that ended CMD)."""
    path = runlog_path(report.env)
    environment, argv = redact(environ, argv,
                               names_only=report.quick.get("record") == [["names"]])
    record = {
        "started_utc": _utc(started), "ended_utc": _utc(time.time()), "exit_code": code,
        "signal": _signal_name(sig) if sig else None,
        "forwarded": [_signal_name(s) for s in forwarded or ()], "argv": argv, "pid": pid,
        "launcher_pid": os.getpid(), "host": os.uname().nodename, "ip": local_ip(),
        "user": _user(), "cwd": _cwd(), "env": report.env,
        "manifest_digest": report.manifest_digest,
        "verify": {"level": report.level, "ok": report.ok,
                   "differences": [d.to_json() for d in report.differences]},
        "environment": environment,
    }
    line = (to_json(record) + "\n").encode("utf-8", "surrogateescape")
    try:
        directory = os.path.dirname(path)
        if directory:   # a bare file name is in the working directory
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)   # one write of one whole line: O_APPEND keeps lines whole
        finally:
            os.close(fd)
    except OSError as exc:
        sys.stderr.write(f"envbuild: warning: run record not written to {path}: "
                         f"{exc.strerror}\n")


# ---- redaction ---------------------------------------------------------------------------


def redact(environ: dict[str, str], argv: list[str], names_only: bool = False
           ) -> tuple[dict[str, str] | list[str], list[str]]:
    """The record's `environment` and `argv`, secrets replaced by "<redacted>".

    `environment` is {name: value} sorted by name, or with `names_only` the sorted list of
    the names. A value is redacted whole when its name is secret (`secret_name`), else its
    secret parts by their shape (`redact_value`); argv the same way, and a word after one
    that announces a secret (`--password`, `X-Api-Key:`, `Bearer`). The value of a secret
    name is also redacted wherever else it appears: `-p"$DB_PASSWORD"`."""
    names = sorted(environ)
    hidden = {k for k in names if secret_name(k)}
    secrets = sorted((environ[k] for k in hidden if len(environ[k]) >= _CROSS_MIN),
                     key=len, reverse=True)
    # the shapes that occur anywhere: searching all the text once per shape is cheaper
    # than searching each value for each
    text = "\0".join(argv if names_only else [*argv, *environ.values()])
    prefixes = tuple(p for p in _PREFIXES if p[0] in text)
    pem = "-----BEGIN" in text
    out_argv = _elsewhere(redact_argv(argv, prefixes, pem), secrets)
    if names_only:
        return names, out_argv
    values = _elsewhere([REDACTED if k in hidden else redact_value(environ[k], prefixes, pem)
                         for k in names], secrets)
    return dict(zip(names, values)), out_argv


def secret_name(name: str) -> bool:
    """Whether a variable's name says its value is secret: a whole `_`-separated word of
    it (any case) is a secret word, or ends with one of the long ones."""
    upper = name.upper()
    words = upper.split("_")
    if not _WORDS.isdisjoint(words):
        return True
    if ("TOKEN" in upper or "SECRET" in upper or "PASSW" in upper or "PASSPHRASE" in upper
            or "CREDENTIAL" in upper):   # cheaper than an endswith per word, for most names
        return any(word.endswith(_GLUED) for word in words)
    return False


def redact_value(value: str, prefixes: tuple[_Prefix, ...] = _PREFIXES, pem: bool = True
                 ) -> str:
    """`value` with each secret its shape shows replaced: the password of a URL's
    `user:password@`, a PEM block's body, a JWT or base64 JSON, a token by its well-known
    prefix, and the value after a word that announces one (see `redact`), or of a
    `NAME=VALUE` (an option, a property, a query parameter) whose name is secret.

    `prefixes` and `pem`: the shapes to look for; `redact` passes only those that occur in
    the record at all, so that a plain value costs four `in` tests and no call."""
    # the common case; `in` is a memchr, cheaper than any one call that tests a set
    if ("@" not in value and "=" not in value and " " not in value and "\n" not in value
            and (len(value) < _SHORTEST or not (prefixes or pem))):
        return value
    if pem and "-----BEGIN" in value:
        value = _pem(value)
    if "@" in value:
        value = _url_credentials(value)
    if prefixes and len(value) >= _SHORTEST:
        value = _prefixed(value, prefixes)
    if not _WORDY.isdisjoint(value):
        value = _words(value)
    return value


def redact_argv(argv: list[str], prefixes: tuple[_Prefix, ...] = _PREFIXES, pem: bool = True
                ) -> list[str]:
    """Each argument by `redact_value`, and one after an option that announces a secret."""
    out, prev = [], ""
    for arg in argv:
        out.append(REDACTED if _announces(prev) and _may_be_secret(arg)
                   else redact_value(arg, prefixes, pem))
        words = arg.split()
        prev = words[-1] if words else ""
    return out


def _elsewhere(values: list[str], secrets: list[str]) -> list[str]:
    """`values` with every occurrence of one of `secrets` redacted (longest first)."""
    if not secrets:
        return values
    joined = "\0".join(values)
    found = [s for s in secrets if s in joined]
    if not found:
        return values
    out = []
    for value in values:
        for secret in found:
            if secret in value:
                value = value.replace(secret, REDACTED)
        out.append(value)
    return out


def _option_secret(name: str) -> bool:
    """An option's, property's or header's name: `--api-key`, `db.password`, `"token"`."""
    return secret_name(name.strip("-\"'{,").replace("-", "_").replace(".", "_"))


def _announces(word: str) -> bool:
    """Whether the word before says the next one is secret."""
    if word.startswith("-"):
        return "=" not in word and _option_secret(word)
    if word.endswith(":"):
        name = word[:-1]
        return _option_secret(name) or name.upper().endswith("AUTHORIZATION")
    return word.lower().rpartition(":")[2] in _SCHEMES


def _may_be_secret(word: str) -> bool:
    """A word after one that announces a secret is that secret, unless it is another
    option or the authorization scheme (`Authorization: Bearer ...`)."""
    return not word.startswith("-") and word.lower() not in _SCHEMES and word != REDACTED


def _words(value: str) -> str:
    prev = ""
    for word in value.split():
        if _announces(prev) and _may_be_secret(word):
            value = _replace_word(value, word, REDACTED)
        elif "=" in word:
            new = _assignment(word)
            if new != word:
                value = _replace_word(value, word, new)
        prev = word
    return value


def _assignment(word: str) -> str:
    """`NAME=VALUE` with VALUE redacted if NAME is secret; in a query, each parameter."""
    parts = word.split("&")
    for i, part in enumerate(parts):
        name, eq, value = part.partition("=")
        if eq and value and value != REDACTED and _option_secret(name.rpartition("?")[2]):
            if i == 0 and "?" not in name:   # not a query: the value may hold "&" itself
                return name + "=" + REDACTED
            parts[i] = name + "=" + REDACTED
    return "&".join(parts)


def _replace_word(text: str, old: str, new: str) -> str:
    """`text` with each whitespace-delimited occurrence of `old` replaced by `new`."""
    at = text.find(old)
    while at >= 0:
        end = at + len(old)
        if (at == 0 or text[at - 1].isspace()) and (end == len(text) or text[end].isspace()):
            text = text[:at] + new + text[end:]
            end = at + len(new)
        at = text.find(old, end)
    return text


def _pem(value: str) -> str:
    """Each PEM block's body redacted; its BEGIN and END lines kept."""
    out, at = [], 0
    while True:
        start = value.find("-----BEGIN", at)
        if start < 0:
            break
        head = value.find("-----", start + 10)   # the end of `-----BEGIN LABEL-----`
        head = start + 10 if head < 0 or head > start + 80 else head + 5
        end = value.find("-----END", head)
        out += [value[at:head], REDACTED]
        at = len(value) if end < 0 else end
    out.append(value[at:])
    return "".join(out)


def _url_credentials(value: str) -> str:
    """The password of each `scheme://user:password@host` redacted. The userinfo ends at
    the URL's last "@" (a password may hold "@" and "/"; a later "@" in a query redacts
    more than the password, never less)."""
    at = value.find("://")
    while at >= 0:
        start = at + 3
        at = value.find("://", start)
        end = start
        stop = len(value) if at < 0 else at
        while end < stop and value[end] not in " \t\n\r\"'":
            end += 1
        last = value.rfind("@", start, end)
        userinfo = value[start:last] if last >= 0 else ""
        colon = userinfo.find(":")
        if 0 <= colon < len(userinfo) - 1 and not _port_then_path(userinfo[colon + 1:]):
            value = value[:start + colon + 1] + REDACTED + value[last:]
            at = value.find("://", start + colon + 1 + len(REDACTED))
    return value


def _port_then_path(text: str) -> bool:
    """`8080/x?e=a` before an "@" is a port and a path, not a password."""
    port, slash, _ = text.partition("/")
    return bool(slash) and port.isdigit()


def _prefixed(value: str, prefixes: tuple[_Prefix, ...]) -> str:
    """Each token of a well-known prefix, starting a word, redacted whole."""
    for prefix, chars, least in prefixes:
        at = value.find(prefix)
        while at >= 0:
            end = at + len(prefix)
            while end < len(value) and value[end] in chars:
                end += 1
            if end - at - len(prefix) >= least and (at == 0 or value[at - 1] not in _ALNUM):
                value = value[:at] + REDACTED + value[end:]
                end = at + len(REDACTED)
            else:
                end = at + 1
            at = value.find(prefix, end)
    return value


# ---- the other fields --------------------------------------------------------------------


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
        with open("/proc/net/fib_trie", encoding="utf-8") as fh:   # utf-8: no codec to import
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
