#!/usr/bin/env bash
# The main job on a fresh machine: install envbuild, lock and build a recipe from recipes/,
# verify the env at every level, and run a command in it through the launch guard.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-recipes/webclient.toml}

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e . 2>&1 \
  | grep -v "^WARNING: Location" || true
eb=.venv/bin/envbuild

$eb lock --check "$recipe" || $eb lock "$recipe"
env_dir=$($eb build "$recipe" | tail -n 1)
digest=$($eb build "$recipe" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["manifest_digest"])')
$eb verify "$env_dir" --level full --expect "$digest"
$eb run "$env_dir" --expect "$digest" -- python -c 'import sys; print("running in", sys.prefix)'
"$env_dir/bin/envbuild-guard" --expect "$digest" -- python -c 'print("guard ok")'
