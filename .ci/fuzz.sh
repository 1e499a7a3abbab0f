#!/usr/bin/env bash
# Runs every cargo-fuzz target of abi/fuzz for a bounded time on stable Rust
# (`-s none`: coverage-guided, no sanitizer) and fails on the first crash.
#
#   .ci/fuzz.sh              # each target for FUZZ_SECONDS (default 20) seconds
#   FUZZ_SECONDS=600 .ci/fuzz.sh
#
# A crash leaves its input in abi/fuzz/artifacts/<target>/; the corpus grows in
# abi/fuzz/corpus/<target>/ and is reused by the next run (both are gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    # Installed into ~/.cargo/bin, built in its own temporary directory so it
    # does not disturb the shared build cache.
    env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked
fi

# The payload target must cover every payload type: a type added to
# abi/src/msg/ without a line in the target would silently go unfuzzed.
missing=0
for ty in $(sed -n 's/^pub \(struct\|enum\) \([A-Za-z0-9_]*\).*/\2/p' abi/src/msg/*.rs); do
    if ! grep -q "round_trip::<${ty}>" abi/fuzz/fuzz_targets/payloads.rs; then
        echo "abi/fuzz/fuzz_targets/payloads.rs does not fuzz payload type ${ty}" >&2
        missing=1
    fi
done
[ "$missing" -eq 0 ]

# Seeds: the golden vectors, so that a short run starts from valid frames and
# payloads of every type instead of having to discover them. Named after the
# vector, so re-running only overwrites them.
hex_to_file() { printf '%b' "$(sed 's/../\\x&/g' <<<"$1")" >"$2"; }
mapfile -t types < <(sed -n 's/^ *round_trip::<\([A-Za-z0-9_]*\)>,$/\1/p' \
    abi/fuzz/fuzz_targets/payloads.rs)
declare -A type_index
for i in "${!types[@]}"; do type_index[${types[$i]}]=$i; done
mkdir -p abi/fuzz/corpus/frame abi/fuzz/corpus/payloads
stream=""
while read -r name type frame; do
    # frame: limit DEFAULT_MAX_FRAME (index 3), reads of 8 bytes (selector 0x3b).
    hex_to_file "3b${frame}" "abi/fuzz/corpus/frame/seed-${name}"
    stream+="$frame"
    # Module-link frames carry `ext` bytes of tenant prefix before the payload.
    ext=$((16#${frame:30:2}${frame:28:2}))
    payload=${frame:$((48 + 2 * ext))}
    if [ -n "${type_index[$type]:-}" ]; then
        hex_to_file "$(printf '%02x' "${type_index[$type]}")${payload}" \
            "abi/fuzz/corpus/payloads/seed-${name}"
    fi
done < <(awk '/^name: /{n=$2} /^type: /{t=$2} /^frame: /{print n, t, $2}' abi/vectors/v1.txt)
hex_to_file "3b${stream}" abi/fuzz/corpus/frame/seed-all-vectors
while read -r name type payload; do
    if [ -n "${type_index[$type]:-}" ]; then
        hex_to_file "$(printf '%02x' "${type_index[$type]}")${payload:-}" \
            "abi/fuzz/corpus/payloads/seed-invalid-${name}"
    fi
done < <(awk '/^name: /{n=$2} /^type: /{t=$2} /^payload:/{print n, t, $2}' \
    abi/vectors/v1-invalid.txt)

cd abi/fuzz
targets=$(cargo fuzz list)
cargo fuzz build -s none
for target in $targets; do
    echo "== fuzz ${target} for ${seconds}s"
    # cargo fuzz exits non-zero on a crash (or a timeout or out-of-memory
    # input). libFuzzer's log is shown in full then, else only its summary.
    log=$(mktemp)
    if ! cargo fuzz run -s none "$target" -- -max_total_time="$seconds" -timeout=10 \
        >"$log" 2>&1; then
        cat "$log"
        rm -f "$log"
        echo "fuzz target ${target} crashed; input saved in abi/fuzz/artifacts/${target}/" >&2
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$log" || tail -n 3 "$log"
    rm -f "$log"
done
