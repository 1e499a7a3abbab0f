#!/usr/bin/env bash
# Checks the boundaries ARCHITECTURE.md promises: mechad links no module code
# (no mecha-mod-* crate and not the module runtime, mecha-module), and no
# import circle among the files of mechad or of any module crate.
set -euo pipefail
cd "$(dirname "$0")/.."

linked=$(cargo tree -p mechad -e normal --prefix none | awk '{print $1}' | sort -u)
if bad=$(grep -E '^(mecha-mod-|mecha-module$)' <<<"$linked"); then
    echo "mechad must not link module code, but its dependency tree holds:" >&2
    echo "$bad" >&2
    exit 1
fi
echo "mechad links no module code"

crates=(daemon/src)
for dir in modules/*/src; do
    crates+=("$dir")
done
python3 .ci/import_cycles.py "${crates[@]}"
echo "no import circle in mechad or any module crate"

# Files small enough to read: no source file outside tests over 900 lines.
long=$(git ls-files '*.rs' | grep -v '/tests/' | while read -r f; do
    n=$(wc -l <"$f")
    if [ "$n" -gt 900 ]; then echo "$f: $n lines"; fi
done)
if [ -n "$long" ]; then
    echo "source files over 900 lines (split them by concern):" >&2
    echo "$long" >&2
    exit 1
fi
echo "no source file outside tests is over 900 lines"
