"""runlog: the launch path's own JSON writer agrees with `json` on the same values; no
secret reaches a record, by name or by shape; the record is the user's alone."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import Built, cli, envbuild, write_recipe
from pkgindex import LocalIndex

from envbuild.runlog import (
    REDACTED,
    record,
    redact,
    redact_argv,
    redact_value,
    secret_name,
    to_json,
)
from envbuild.store import Store
from envbuild.verify import Report

CHARS = [chr(i) for i in range(0x300)] + ["\ud800", "\udfff", "\u2028", "\u00a0", "\ufeff",
                                          "\U0001f600", '"', "\\"]


def test_to_json_reads_back_as_json_would() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        text = "".join(rng.choice(CHARS) for _ in range(rng.randint(0, 12)))
        value = {text: [text, 1, None, True, False, {"k": text}]}
        assert json.loads(to_json(value)) == value, repr(text)


def test_plain_strings_are_written_as_they_are() -> None:
    assert to_json("/usr/bin:/bin") == '"/usr/bin:/bin"'
    assert to_json("é ü") == '"é ü"'
    assert to_json('a"b\\c\n') == '"a\\"b\\\\c\\n"'


# ---- secrets -----------------------------------------------------------------------------

# A CI runner's and a cloud SDK's environment: (name, value, the secret parts of the value).
# The innocent-looking names hold secrets too, found by their shape.
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6\n"
       "ffAt0gBEc5RBzyZ0wzu1Zm4yQdS+cnE5AbPl6fUb7c4JXbLtQb3h5wQ==\n"
       "-----END RSA PRIVATE KEY-----\n")
JWT = ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJyZXBvOm9yZy9hcHAiLCJhdWQiOiJzdHMifQ"
       ".c2lnbmF0dXJlLXBhcnQtb2YtdGhlLWp3dA")
CI_ENVIRONMENT = [
    ("CI", "true", []), ("GITHUB_ACTIONS", "true", []),
    ("GITHUB_REPOSITORY", "org/app", []), ("RUNNER_OS", "Linux", []),
    ("GITHUB_TOKEN", "ghp_R4nd0mT0k3nV4lu3F0rGitHubAct10nsXYZ", ["R4nd0mT0k3nV4lu3"]),
    ("GITHUB_PAT", "pat-value-not-shaped-like-a-token", ["pat-value-not-shaped"]),
    ("NPM_AUTH", "bnBtOnNlY3JldC1ucG0tYXV0aA==", ["bnBtOnNlY3JldC1ucG0tYXV0aA"]),
    ("AWS_ACCESS_KEY_ID", "AKIAQ3EGRZLN7EXAMPLE", ["Q3EGRZLN7EXAMPLE"]),
    ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ["wJalrXUtnFEMI"]),
    ("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEBYaDAwsessiontokenvalue", ["FwoGZXIvYXdzEBYa"]),
    ("AWS_REGION", "eu-west-1", []),
    ("DATABASE_URL", "postgres://app:Pg-pa55word-db@db:5432/x", ["Pg-pa55word-db"]),
    ("CI_REPOSITORY_URL", "https://gitlab-ci-token:glcbt-64-ci-job-tok@gitlab.example/o/r.git",
     ["glcbt-64-ci-job-tok"]),
    ("SLACK_NOTIFY", "xoxb-2048-4096-8192sl4ckB0tT0ken", ["2048-4096-8192sl4ckB0tT0ken"]),
    ("UPLOADER", "AKIAJ7ZQ5XW2EXAMPLE2", ["J7ZQ5XW2EXAMPLE2"]),
    ("BUILD_METADATA", JWT, ["eyJhbGciOiJSUzI1NiIs", "c2lnbmF0dXJlLXBhcnQtb2YtdGhlLWp3dA"]),
    ("DEPLOY_CERT", PEM, ["MIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo", "ffAt0gBEc5RBzyZ0wzu1Zm4y"]),
    ("EXTRA_HEADERS", "Authorization: Bearer b34rer-t0ken-in-a-header", ["b34rer-t0ken"]),
    ("SENTRY_DSN", "https://5e4f1b2c3d@o1.ingest.sentry.io/42", ["5e4f1b2c3d"]),
    ("SESSION_COOKIE", "sid=c00kie-session-value", ["c00kie-session-value"]),
    ("PGPASSWORD", "libpq-pgpassword-value", ["libpq-pgpassword-value"]),
    ("JAVA_TOOL_OPTIONS", "-Xmx2g -Djavax.net.ssl.trustStorePassword=truststore-pw",
     ["truststore-pw"]),
    ("HF_HUB_URL", "https://huggingface.co/?token=hf-query-token-value&x=1",
     ["hf-query-token-value"]),
    ("AUTHOR", "Ada Lovelace", []), ("KEYBOARD", "us", []),
]
# CMD's argv: `true` ignores it; each holds a secret the record must not.
CI_ARGV = ["true", "--password", "argv-pw-hunter2", "--api-key=argv-api-key-value",
           "-H", "Authorization: Bearer argv-bearer-token",
           "https://deploy:argv-url-password@registry.example/v2/",
           "ghp_ArgvT0kenArgvT0kenArgvT0kenArgv12",
           "-plibpq-pgpassword-value",     # a secret variable's value, as `-p"$PGPASSWORD"`
           JWT, "--verbose", "plain-argument"]
ARGV_SECRETS = ["argv-pw-hunter2", "argv-api-key-value", "argv-bearer-token",
                "argv-url-password", "ArgvT0ken", "libpq-pgpassword-value",
                "eyJhbGciOiJSUzI1NiIs"]


def _ci_environ(tmp_path: Path, log: Path) -> dict[str, str]:
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "LC_ALL": "C.UTF-8",
            "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"], "ENVBUILD_RUNLOG": str(log),
            "PLAIN_MARKER": "a-plain-value-kept-as-is"}
    return {**base, **{name: value for name, value, _ in CI_ENVIRONMENT}}


def _run(env: Path, environ: dict[str, str], argv: list[str], kind: str = "run") -> None:
    if kind == "run":
        res = envbuild("run", env, "--", *argv, env=environ)
    else:   # the env's own copy of the launch code
        res = subprocess.run([env / "bin" / "envbuild-guard", "--", *argv], env=environ,
                             capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("kind", ["run", "guard"])
def test_no_secret_reaches_the_record(kind: str, built: Built, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "runs.jsonl"      # `logs/` is envbuild's to make
    environ = _ci_environ(tmp_path, log)
    _run(built.env, environ, CI_ARGV, kind)

    data = log.read_bytes()
    for name, value, secrets in CI_ENVIRONMENT:
        for secret in secrets:
            assert secret in value, f"{name}: the test's own secret {secret!r} is not in it"
            assert secret.encode() not in data, f"{name}: {secret!r} is in the record"
    for secret in ARGV_SECRETS:
        assert any(secret in arg for arg in CI_ARGV), secret
        assert secret.encode() not in data, f"argv: {secret!r} is in the record"
    assert os.environ["PATH"].encode() in data
    assert str(tmp_path / "home").encode() in data

    [rec] = (json.loads(line) for line in data.decode().splitlines())
    got = rec["environment"]
    assert got["HOME"] == environ["HOME"] and got["PLAIN_MARKER"] == environ["PLAIN_MARKER"]
    assert got["PATH"].endswith(":" + environ["PATH"])
    for name, value, secrets in CI_ENVIRONMENT:
        if not secrets:
            assert got[name] == value, f"{name} is not secret and is kept"
    for name in ("GITHUB_TOKEN", "GITHUB_PAT", "NPM_AUTH", "AWS_SECRET_ACCESS_KEY",
                 "SENTRY_DSN", "SESSION_COOKIE", "PGPASSWORD"):
        assert got[name] == REDACTED, f"{name} is secret by name"
    # by shape, only the secret part goes where that is natural
    assert got["DATABASE_URL"] == "postgres://app:<redacted>@db:5432/x"
    assert got["CI_REPOSITORY_URL"] == "https://gitlab-ci-token:<redacted>@gitlab.example/o/r.git"
    assert got["EXTRA_HEADERS"] == "Authorization: Bearer <redacted>"
    assert got["DEPLOY_CERT"] == ("-----BEGIN RSA PRIVATE KEY-----<redacted>"
                                  "-----END RSA PRIVATE KEY-----\n")
    assert got["BUILD_METADATA"] == got["SLACK_NOTIFY"] == got["UPLOADER"] == REDACTED
    assert rec["argv"] == [
        "true", "--password", REDACTED, "--api-key=<redacted>", "-H",
        "Authorization: Bearer <redacted>", "https://deploy:<redacted>@registry.example/v2/",
        REDACTED, "-p<redacted>", REDACTED, "--verbose", "plain-argument"]

    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


@pytest.fixture(scope="module")
def names_env(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex) -> Path:
    work = tmp_path_factory.mktemp("names")
    recipe = write_recipe(work / "recipe", index, deps=["gamma"], name="names",
                          extra='[launch]\nrecord-environment = "names"\n')
    assert cli("lock", recipe).exit_code == 0
    res = cli("build", recipe, "--store", work / "store", "--json")
    assert res.exit_code == 0, res.stderr
    return Path(json.loads(res.stdout)["path"])


def test_record_environment_names_keeps_only_the_names(names_env: Path, tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    environ = _ci_environ(tmp_path, log)
    _run(names_env, environ, CI_ARGV)
    data = log.read_bytes()
    [rec] = (json.loads(line) for line in data.decode().splitlines())
    # a sorted list of the names CMD got, the contract's included
    assert rec["environment"] == sorted(rec["environment"])
    assert set(environ) | {"VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE"} <= set(rec["environment"])
    assert b"a-plain-value-kept-as-is" not in data
    assert os.environ["PATH"].encode() not in data
    for _, value, _ in CI_ENVIRONMENT:
        if len(value) > 8:
            assert value.encode() not in data
    for secret in ARGV_SECRETS:     # argv is redacted as in "values"
        assert secret.encode() not in data, f"argv: {secret!r} is in the record"
    assert "plain-argument" in rec["argv"]


# ---- file modes --------------------------------------------------------------------------


def _record_once(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVBUILD_RUNLOG", str(log))
    record(Report(str(log.parent), "quick", None, [], {}), ["true"], 0.0, 0, None, None,
           {"PATH": "/bin"})


def test_a_made_record_is_the_users_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr(os, "umask", os.umask)   # restored below, whatever happens
    old = os.umask(0)    # even with no umask: 0600 and 0700, not the defaults
    try:
        _record_once(tmp_path / "a" / "b" / "runs.jsonl", monkeypatch)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b" / "runs.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_an_existing_record_keeps_its_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """A shared store's `runs/` and its files are its administrator's: never changed."""
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o1777)
    log = runs / "host.jsonl"
    log.write_text("")
    log.chmod(0o660)
    _record_once(log, monkeypatch)
    assert stat.S_IMODE(runs.stat().st_mode) == 0o1777
    assert stat.S_IMODE(log.stat().st_mode) == 0o660
    assert log.read_text().count("\n") == 1


def test_a_bare_file_name_is_in_the_working_directory(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENVBUILD_RUNLOG", "runs.jsonl")
    record(Report(str(tmp_path), "quick", None, [], {}), ["true"], 0.0, 0, None, None, {})
    assert (tmp_path / "runs.jsonl").read_text().count("\n") == 1


def test_store_makes_runs_private_and_keeps_the_rest(tmp_path: Path) -> None:
    store = Store.locate(tmp_path / "store").root
    assert stat.S_IMODE((store / "runs").stat().st_mode) == 0o700
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((store / "envs").stat().st_mode) == 0o777 & ~umask

    shared = tmp_path / "shared"
    (shared / "runs").mkdir(parents=True)
    (shared / "runs").chmod(0o2775)
    Store.locate(shared)
    assert stat.S_IMODE((shared / "runs").stat().st_mode) == 0o2775


# ---- the rules, one by one ---------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "GITHUB_TOKEN", "GITHUB_PAT", "NPM_AUTH", "AWS_SECRET_ACCESS_KEY", "SESSION_COOKIE",
    "SENTRY_DSN", "PRIVATE_KEY_PATH", "DB_PASSWORD", "DB_PASSWD", "API_KEY", "api_key",
    "GOOGLE_CREDENTIALS", "SSH_KEYS", "PGPASSWORD", "APITOKEN", "CLIENTSECRET", "TOKEN", "KEY",
    "GPG_PASSPHRASE", "DOCKER_AUTH_CONFIG"])
def test_secret_names(name: str) -> None:
    assert secret_name(name)


@pytest.mark.parametrize("name", [
    "PATH", "AUTHOR", "GIT_AUTHOR_NAME", "KEYBOARD", "MONKEY", "XAUTHORITY", "HOME",
    "TOKENIZERS_PARALLELISM", "SSH_ASKPASS", "PATHEXT", "COMPAT", "APIKEY"])
def test_readable_names(name: str) -> None:
    """Whole words only: a word that only contains KEY, PAT or AUTH is not a secret word
    (APIKEY included; its value is still checked by shape)."""
    assert not secret_name(name)


@pytest.mark.parametrize("value", [
    "/usr/local/bin:/usr/bin:/bin", "en_US.UTF-8", "1", "", "xterm-256color",
    "git@github.com:org/repo.git", "ssh://git@github.com/org/repo", "ada@example.org",
    "http://proxy:3128/", "http://host:8080/path?mail=ada@example.org",
    "rs=0:di=01;34:ln=01;36", "--jobs 4 --verbose", "task-queue-abcdefghijklmnopqrstuvwxyz",
    "/opt/ghp_/not-a-token", "Basic", "a=b c=d"])
def test_plain_values_are_kept(value: str) -> None:
    assert redact_value(value) == value


@pytest.mark.parametrize(("value", "expected"), [
    ("postgres://u:password@db:5432/x", "postgres://u:<redacted>@db:5432/x"),
    ("redis://:pw@cache:6379/0", "redis://:<redacted>@cache:6379/0"),
    ("mysql://u:p@ss/w@rd@db/x", "mysql://u:<redacted>@db/x"),
    ("a=https://u:p1@h1/x,https://u:p2@h2/y",
     "a=https://u:<redacted>@h1/x,https://u:<redacted>@h2/y"),
    ("https://u:p@h/x?mail=a@b", "https://u:<redacted>@b"),     # more, never less
    ("https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/o/r",
     "https://<redacted>@github.com/o/r"),
    ("Authorization: Bearer abc.def", "Authorization: Bearer <redacted>"),
    ("authorization:bearer abc", "authorization:bearer <redacted>"),
    ("Authorization: dG9rZW4=", "Authorization: <redacted>"),
    ("Basic dXNlcjpwYXNz", "Basic <redacted>"),
    ("X-Api-Key: k123 Cookie: session=zzz", "X-Api-Key: <redacted> Cookie: <redacted>"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", REDACTED),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", REDACTED),
    ("token=gho_abcdefghijklmnopqrstuvwxyz0123456789", "token=<redacted>"),
    ("id:AKIAIOSFODNN7EXAMPLE", "id:<redacted>"),
    ("xoxp-1234567890-0987654321-abcdef", REDACTED),
    ("glpat-abcdefghijklmnopqrst", REDACTED),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcDEF", REDACTED),
    ("x -----BEGIN CERTIFICATE-----MIIBszCCAVmgAwIBAgIU-----END CERTIFICATE----- y",
     "x -----BEGIN CERTIFICATE-----<redacted>-----END CERTIFICATE----- y"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk",
     "-----BEGIN OPENSSH PRIVATE KEY-----<redacted>"),
    ("-Xmx1g -Ddb.password=hunter2 -Dfoo=bar", "-Xmx1g -Ddb.password=<redacted> -Dfoo=bar"),
    ("host=db password=s3cret dbname=x", "host=db password=<redacted> dbname=x"),
    ("https://h/x?a=1&access_token=abc&b=2", "https://h/x?a=1&access_token=<redacted>&b=2"),
    ("--password=a&b", "--password=<redacted>"),
    ("deploy --token abc --token abc -v", "deploy --token <redacted> --token <redacted> -v"),
    ('{"password": "x1"}', '{"password": <redacted>'),
])
def test_values_redacted_by_shape(value: str, expected: str) -> None:
    assert redact_value(value) == expected


def test_argv() -> None:
    argv = ["curl", "--token", "t1", "--no-auth", "--verbose", "--key-file", "k.pem",
            "-u", "user:pw", "--author", "ada", "PASSWORD=pw2", "sh", "-c", "x --token t3"]
    assert redact_argv(argv) == [
        "curl", "--token", REDACTED, "--no-auth", "--verbose", "--key-file", REDACTED,
        "-u", "user:pw", "--author", "ada", "PASSWORD=<redacted>", "sh", "-c",
        "x --token <redacted>"]


def test_a_secret_value_is_redacted_wherever_it_appears() -> None:
    environ = {"DB_PASSWORD": "hunter2hunter2", "DSN": "x", "CONNINFO": "pw=hunter2hunter2;",
               "OTHER": "plain"}
    environment, argv = redact(environ, ["mysql", "-phunter2hunter2", "x"])
    assert argv == ["mysql", "-p<redacted>", "x"]
    assert environment == {"CONNINFO": "pw=<redacted>;", "DB_PASSWORD": REDACTED,
                           "DSN": REDACTED, "OTHER": "plain"}
    names, _ = redact(environ, [], names_only=True)
    assert names == ["CONNINFO", "DB_PASSWORD", "DSN", "OTHER"]


def test_plain_values_take_the_fast_path() -> None:
    """A value with no marker of any shape comes back as the same object, untouched."""
    for value in ("/usr/local/bin:/usr/bin", "C.UTF-8", "x" * 200):
        assert redact_value(value, (), False) is value
