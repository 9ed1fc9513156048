"""Registry credentials, read as the docker CLI reads them; never written.

`$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`): `credHelpers[host]` names a
helper for that registry, else `credsStore` one for all; without a helper, `auths[host]`
holds `auth` (base64 `user:password`) or `identitytoken`. A helper is the program
`docker-credential-NAME`, asked with `get` and the host on stdin; it answers JSON
`{"Username", "Secret"}`, the user `<token>` meaning that the secret is an identity token.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, RegistryError, ToolError
from .proc import run_tool

_NOT_FOUND = "credentials not found"


@dataclass(frozen=True)
class Credentials:
    username: str | None          # None: only an identity token
    password: str
    identity_token: str | None
    source: str                   # where they came from, for messages


def config_path() -> Path:
    """The docker CLI's config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/`'s."""
    root = os.environ.get("DOCKER_CONFIG")
    return Path(root) / "config.json" if root else Path.home() / ".docker" / "config.json"


def _hostname(key: str) -> str:
    """An `auths` key as the CLI matches it: scheme and path dropped."""
    for scheme in ("http://", "https://"):
        if key.startswith(scheme):
            key = key[len(scheme):]
    return key.split("/", 1)[0]


def _read_config(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable docker config: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a docker config (a JSON object expected)")
    return data


def credentials(host: str) -> Credentials | None:
    """The credentials the docker CLI would use for `host`, or None for anonymous access."""
    path = config_path()
    config = _read_config(path)
    helpers = config.get("credHelpers")
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    store = config.get("credsStore")
    if isinstance(helper, str) and helper:
        return _from_helper(helper, host, path)
    if isinstance(store, str) and store:
        return _from_helper(store, host, path)
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return None
    entry = auths.get(host)
    if entry is None:
        entry = next((v for k, v in auths.items() if _hostname(k) == host), None)
    return _from_entry(entry, f"auths[{host!r}] in {path}") if isinstance(entry, dict) else None


def _from_entry(entry: dict[str, object], source: str) -> Credentials | None:
    token = entry.get("identitytoken")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{source}: `auth` is not base64 of user:password") from exc
        if not sep:
            raise InputError(f"{source}: `auth` decodes to no user:password pair")
        return Credentials(user, password, token if isinstance(token, str) else None, source)
    if isinstance(token, str) and token:
        return Credentials(None, "", token, source)
    return None


def _from_helper(name: str, host: str, path: Path) -> Credentials | None:
    program = f"docker-credential-{name}"
    source = f"{program}, named in {path}"
    try:
        # the helper may need the session (D-Bus, GPG agent, HOME): the caller's environment
        out = run_tool([program, "get"], env=dict(os.environ), input=host)
    except FileNotFoundError as exc:
        raise RegistryError(f"{program} (named in {path}) is not on PATH") from exc
    except ToolError as exc:
        if _NOT_FOUND in exc.output.lower():
            return None
        raise RegistryError(f"{program} failed for {host}: {exc.output.strip()[-300:]}") from exc
    try:
        answer = json.loads(out)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{program} answered no {{Username, Secret}} JSON for {host}") \
            from exc
    if not isinstance(user, str) or not isinstance(secret, str):
        raise RegistryError(f"{program} answered no {{Username, Secret}} strings for {host}")
    if user == "<token>":
        return Credentials(None, "", secret, source)
    return Credentials(user, secret, None, source)
