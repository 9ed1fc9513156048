"""What a failed pip-compile says happened, in a person's words.

pip-compile runs pip's resolver; when it fails, its output (pip's log and a traceback) is
read for one of three stories: the index could not be reached (the network, DNS, TLS: exit
1, nothing wrong with the recipe), the requirements clash (exit 2, the clashing ones named),
or nothing satisfies a requirement (exit 2). Anything else keeps pip-compile's own words,
without the traceback.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .errors import EnvbuildError, IndexUnreachableError, LockError, ToolError
from .recipe import Recipe
from .trust import Trust

# pip's words for "nothing on the index satisfies this": bad input, not a failure
_UNSATISFIABLE = ("Could not find a version that satisfies", "No matching distribution found")

_TRUST_HOW = ("give the index's CA with PIP_CERT=FILE, `cert = FILE` in pip.conf, "
              "REQUESTS_CA_BUNDLE or SSL_CERT_FILE")

# (signs in pip's output, what was found, what to do), the first that matches wins:
# certificate problems first, as pip also reports them as connection failures
_NETWORK: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("Hostname mismatch", "IP address mismatch"), "a certificate for another name ({detail})",
     "check the host in {setting}: the server's certificate does not name it"),
    (("certificate has expired", "certificate is not yet valid"),
     "a certificate out of its dates ({detail})",
     "check this machine's clock, or ask the index's operators to renew it"),
    (("CERTIFICATE_VERIFY_FAILED", "certificate verify failed"),
     "certificate verification failed ({detail})", _TRUST_HOW + " (now trusted: {trust})"),
    (("SSLError", "[SSL:"), "a TLS failure ({detail})",
     "check that {setting} speaks https on that port, and the network"),
    (("ProxyError", "Tunnel connection failed"), "the proxy failing ({detail})",
     "check https_proxy/no_proxy and the proxy"),
    (("Name or service not known", "No address associated with hostname",
      "nodename nor servname", "[Errno -2]", "[Errno -5]"),
     "no such host (DNS)", "check {setting} and the network"),
    (("Temporary failure in name resolution", "[Errno -3]"),
     "no answer from DNS (name resolution failed)", "check the network and its DNS"),
    (("Connection refused", "[Errno 111]"),
     "the connection refused (nothing listening at {netloc})",
     "check {setting} (its port) and that the index is up"),
    (("ConnectTimeoutError", "ReadTimeoutError", "timed out"),
     "no answer in time (timed out)", "check the network, or try again later"),
    (("Network is unreachable", "No route to host"),
     "no route to it (network unreachable)", "check the network"),
    (("too many 5", "Service Unavailable", "Bad Gateway"),
     "the server failing (HTTP 5xx)", "try again later, or ask the index's operators"),
    (("Connection reset", "RemoteDisconnected", "Connection aborted", "IncompleteRead"),
     "the connection broken mid-way (reset)", "check the network and any proxy, then retry"),
)

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s'\"]+@")
_TRACEBACK_NOISE = re.compile(r"^(Traceback \(most recent call last\):|  File \"|    |"
                              r"During handling of the above|The above exception was)")


def redact(text: str) -> str:
    """`text` with every URL's user:password@ removed: errors land in shared CI logs."""
    return _CREDENTIALS.sub("", text)


def useful_tail(output: str, count: int = 8) -> str:
    """The last `count` lines of pip's output that a person can act on: no traceback
    frames, no blank lines, credentials removed."""
    lines = [line.rstrip() for line in output.splitlines()
             if line.strip() and not _TRACEBACK_NOISE.match(line)]
    return redact("\n".join(lines[-count:]))


def lock_failure(exc: ToolError, recipe: Recipe, trust: Trust) -> EnvbuildError:
    """The error `envbuild lock` reports for pip-compile's failure `exc`."""
    output = exc.output
    found = conflict(output, recipe) or unreachable(output, recipe.index_url, trust)
    if found is not None:
        return found
    if any(sign in output for sign in _UNSATISFIABLE):
        # the index answered: what the recipe asks for does not exist there
        said = [line.strip().removeprefix("ERROR: ") for line in output.splitlines()
                if line.strip().startswith("ERROR: ")] or [useful_tail(output, 4)]
        return LockError(redact(
            f"{recipe.path}: dependencies: cannot be satisfied from {recipe.index_url}: "
            + "\n".join(said) + "\nchange the requirement or the [index] table"))
    return ToolError(exc.argv, exc.returncode, useful_tail(output, 12))


def unreachable(output: str, index_url: str, trust: Trust,
                setting: str = "[index] url") -> IndexUnreachableError | None:
    """The index could not be reached, if pip's output says so: what was found, in words;
    `setting` is where the user gave `index_url`."""
    for signs, what, todo in _NETWORK:
        if not any(sign in output for sign in signs):
            continue
        parts = urlsplit(index_url)
        netloc = parts.netloc.rpartition("@")[2]
        host = re.search(r"host='([^']+)'", output)
        where = f" at {host.group(1)}" if host and host.group(1) not in netloc else ""
        found = what.format(detail=_detail(output), netloc=netloc or "?")
        return IndexUnreachableError(redact(
            f"index {index_url}: expected a package index, found {found}{where}; "
            + todo.format(trust=trust.describe(), setting=setting)))
    return None


def _detail(output: str) -> str:
    """The reason inside pip's SSL or proxy error, as OpenSSL or the proxy put it."""
    for pattern in (r"certificate verify failed: (.+?) \(_ssl", r"\[SSL: ([A-Z_]+)\]",
                    r"ProxyError\('([^']+)'", r"Tunnel connection failed: ([^'\")]+)"):
        match = re.search(pattern, output)
        if match:
            return match.group(1).strip().rstrip(".")
    return "see `envbuild -v lock`"


_CLASH = re.compile(r"Cannot install (.+?) because these package versions have conflicting")
_INPUT_LINE = re.compile(r"-r recipe\.in \(line (\d+)\)")


def conflict(output: str, recipe: Recipe) -> LockError | None:
    """Requirements that cannot all hold, if pip's resolver said so and why: at most five
    lines, naming them and the versions pip considered."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines)
                     if line.strip() == "The conflict is caused by:")
    except StopIteration:
        return None
    causes: list[str] = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        causes.append(line.strip().replace("The user requested", "the recipe asks for"))
    if not causes:
        return None     # pip says so when an index could not be read at all
    clash = _CLASH.search(output)
    named = clash.group(1) if clash else ", ".join(causes)
    if len(causes) > 3:
        causes = [*causes[:2], f"... and {len(causes) - 2} more (see `envbuild -v lock`)"]

    def dependency(match: re.Match[str]) -> str:
        number = int(match.group(1))
        deps = recipe.dependencies
        return deps[number - 1] if 0 < number <= len(deps) else match.group(0)

    text = "\n".join([
        f"{recipe.path}: dependencies: expected versions that agree, found a conflict "
        f"between {named}:", *(f"  {cause}" for cause in causes),
        "loosen or change one of them in dependencies, then lock again"])
    return LockError(redact(_INPUT_LINE.sub(dependency, text)))
