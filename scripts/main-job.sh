#!/usr/bin/env bash
# The main job on a fresh machine: install envbuild, lock and build a recipe from recipes/,
# verify the env at every level, and run a command in it through the launch guard.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-recipes/webclient.toml}

# Debian's python3 needs python3-venv for `python3 -m venv`
if ! python3 -c 'import ensurepip' 2>/dev/null; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
# compat: a plain path in a .pth; the default editable finder imports pathlib and re
# at every interpreter start (~15 ms on each `envbuild run`)
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e . \
  --config-settings editable_mode=compat 2>&1 \
  | grep -v "^WARNING: Location" || true
eb=.venv/bin/envbuild

# the committed lock serves if it was made for this Python; else lock for this one
py=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
$eb lock --check "$recipe" --python "$py" || $eb lock "$recipe"
env_dir=$($eb build "$recipe" | tail -n 1)
digest=$($eb build "$recipe" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["manifest_digest"])')
$eb verify "$env_dir" --level full --expect "$digest"
$eb run "$env_dir" --expect "$digest" -- python -c 'import sys; print("running in", sys.prefix)'
"$env_dir/bin/envbuild-guard" --expect "$digest" -- python -c 'print("guard ok")'
