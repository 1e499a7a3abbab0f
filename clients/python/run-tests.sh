#!/usr/bin/env bash
# Installs the Python client into a throwaway venv, as a user would (`pip install`),
# and runs its tests: golden vectors, behaviour against a fake daemon, and the real
# mechad (built with cargo if $MECHA_BIN_DIR / $CARGO_TARGET_DIR/debug lacks it).
# Exits non-zero on any failure, and on "no tests collected" (pytest exit code 5).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
venv="$(mktemp -d "${TMPDIR:-/tmp}/mecha-python-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT

"$python" -m venv "$venv/env"
# Install from a copy: building in place would leave build/ and *.egg-info behind.
mkdir "$venv/src"
cp -r "$here/pyproject.toml" "$here/README.md" "$here/src" "$venv/src/"
"$venv/env/bin/python" -m pip install --quiet "pytest>=7" "$venv/src"
cd "$here"
# The tests import the installed package (src/ is not on sys.path); leave no caches.
PYTHONDONTWRITEBYTECODE=1 "$venv/env/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
