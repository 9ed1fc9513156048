"""Which CA bundle pip trusts when envbuild runs it: TLS trust, never content.

envbuild runs pip with no ambient configuration (see `proc.hermetic_env`): what gets locked
or installed must not depend on a `PIP_*` variable or a pip.conf. Trust is different: a
private index behind its own CA is reached only with that CA, and which CA it was changes
nothing in what gets locked. So the one key `cert` is read where pip would read it, and the
file chosen is passed explicitly (`--cert FILE`) to every pip that reaches an index.

Precedence, first found wins:

1. `PIP_CERT`;
2. `cert` in pip's config files, read as pip reads them: `PIP_CONFIG_FILE` (`os.devnull`
   means no file at all) over the user's files (`~/.config/pip/pip.conf` over
   `~/.pip/pip.conf`; skipped when `PIP_CONFIG_FILE` names a file that exists) over the
   global ones (`/etc/pip.conf` over `$XDG_CONFIG_DIRS/pip/pip.conf`, by default
   `/etc/xdg/pip/pip.conf`); in all of them, the command's own
   section (`[install]`, `[download]`, `[wheel]`) over `[global]`;
3. `REQUESTS_CA_BUNDLE`;
4. `SSL_CERT_FILE`;
5. the system's CAs as pip knows them (certifi): no `--cert` at all.
"""

from __future__ import annotations

import configparser
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InputError

log = logging.getLogger(__name__)

SYSTEM = "certifi's CAs, pip's default"


@dataclass(frozen=True)
class Trust:
    """The CA bundle pip is given (None: pip's default) and where that choice came from."""

    cert: str | None
    source: str

    def pip_args(self) -> list[str]:
        return ["--cert", self.cert] if self.cert else []

    def pip_env(self) -> dict[str, str]:
        """For a pip that starts pips of its own (build isolation installs build
        dependencies with a pip that is never given `--cert`): the same trust, inherited."""
        return {"PIP_CERT": self.cert} if self.cert else {}

    def describe(self) -> str:
        return f"{self.cert} (from {self.source})" if self.cert else SYSTEM


def find_trust(command: str = "install", environ: Mapping[str, str] | None = None) -> Trust:
    """The CA bundle for a pip `command` (its pip.conf section), by the precedence above.

    A source that names a file or directory that does not exist is refused (InputError,
    naming the source), never passed over for the next one."""
    env = os.environ if environ is None else environ
    found = _first_source(command, env)
    if found is None:
        log.debug("TLS trust: %s (no PIP_CERT, pip.conf cert, REQUESTS_CA_BUNDLE or "
                  "SSL_CERT_FILE)", SYSTEM)
        return Trust(None, SYSTEM)
    value, source = found
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.exists(path):
        raise InputError(f"{source}: expected a CA bundle file, found no file at {value!r}; "
                         "fix or remove it (it says which CAs to trust for the index)")
    log.debug("TLS trust: %s from %s", path, source)
    return Trust(path, source)


def _first_source(command: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    if env.get("PIP_CERT"):
        return env["PIP_CERT"], "PIP_CERT"
    configured = config_cert(command, env)
    if configured is not None:
        return configured
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if env.get(name):
            return env[name], name
    return None


def config_files(env: Mapping[str, str]) -> list[str]:
    """pip's config files, lowest precedence first (see the module's docstring)."""
    explicit = env.get("PIP_CONFIG_FILE")
    if explicit == os.devnull:
        return []
    dirs = (env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep)
    files = [os.path.join(d, "pip", "pip.conf") for d in dirs if d]
    files.append("/etc/pip.conf")
    if not (explicit and os.path.exists(explicit)):
        home = env.get("HOME") or os.path.expanduser("~")
        user_dir = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        files += [os.path.join(home, ".pip", "pip.conf"),
                  os.path.join(user_dir, "pip", "pip.conf")]
    if explicit:
        files.append(explicit)
    return files


def config_cert(command: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(value, where) of the `cert` key that pip would use for `command`, if any."""
    found: dict[str, tuple[str, str]] = {}      # section -> (value, where); later files win
    for path in config_files(env):
        if not os.path.isfile(path):
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError) as exc:
            # pip itself would stop here; envbuild reads this file only for trust
            log.warning("%s: not read for its cert key: %s", path, exc)
            continue
        for section in ("global", command):
            if parser.has_option(section, "cert"):
                value = parser.get(section, "cert").strip()
                if value:
                    found[section] = (value, f"{path} [{section}] cert")
    return found.get(command) or found.get("global")
