#!/usr/bin/env bash
# Drives the node dashboard in a real headless Chromium against a real mechad
# (test_dashboard.py). Needs Debian's chromium and chromium-driver (installed
# here with apt-get when missing and we are root), Selenium and the mecha Python
# client in a throwaway venv, and the workspace's debug binaries (built if
# missing). Set MECHA_DASHBOARD_SCREENSHOT=path to keep the screenshot.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [ ! -x "$CARGO_TARGET_DIR/debug/mechad" ]; then
    (cd "$repo" && cargo build --workspace --bins)
fi

venv="$(mktemp -d "${TMPDIR:-/tmp}/mecha-browser-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv/env"
mkdir "$venv/client"
cp -r "$repo/clients/python/pyproject.toml" "$repo/clients/python/README.md" "$repo/clients/python/src" "$venv/client/"
"$venv/env/bin/python" -m pip install --quiet "pytest>=7" "selenium>=4.20" "$venv/client"
cd "$here"
PYTHONDONTWRITEBYTECODE=1 "$venv/env/bin/python" -m pytest -q -s -p no:cacheprovider test_dashboard.py "$@"
