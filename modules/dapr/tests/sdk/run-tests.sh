#!/usr/bin/env bash
# The Dapr personality's suite: installs the official Dapr Python SDK (pinned) and mecha's
# own Python client into a throwaway venv, as an application would, and runs the tests
# against the real mechad (built with cargo if $MECHA_BIN_DIR / $CARGO_TARGET_DIR/debug
# lacks it). Exits non-zero on any failure, and on "no tests collected".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
python="${PYTHON:-python3}"
venv="$(mktemp -d "${TMPDIR:-/tmp}/mecha-dapr-venv.XXXXXX")"
# Other uids run Python from this venv in some tests.
chmod 755 "$venv"
trap 'rm -rf "$venv"' EXIT

"$python" -m venv "$venv/env"
mkdir "$venv/src"
cp -r "$repo/clients/python/pyproject.toml" "$repo/clients/python/README.md" \
    "$repo/clients/python/src" "$venv/src/"
"$venv/env/bin/python" -m pip install --quiet "pytest>=7" "dapr==1.19.0" "$venv/src"
cd "$here"
PYTHONDONTWRITEBYTECODE=1 "$venv/env/bin/python" -m pytest -q -p no:cacheprovider . "$@"
