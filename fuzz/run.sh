#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, each from its seed inputs (fuzz/seeds/<target>) in
# a scratch corpus, so the seeds stay as committed. A crash stops the run, names the target and
# keeps the input that caused it in fuzz/artifacts/.
#
#     bash fuzz/run.sh [SECONDS_PER_TARGET]    # default 20
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Runs on a stable toolchain: without a sanitizer
# (-s none) cargo-fuzz needs no nightly flag, and wharf has no unsafe code for one to check.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-20}
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

cargo fuzz build -s none
for target in $(cargo fuzz list); do
    mkdir -p "$SCRATCH/$target"
    cp -r "fuzz/seeds/$target/." "$SCRATCH/$target/"
    echo "== fuzz $target for ${SECONDS_PER_TARGET}s"
    # -rss_limit_mb: no input may make a parser hold much memory; -timeout: or take long.
    if ! cargo fuzz run -s none "$target" "$SCRATCH/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=1024 -timeout=5 \
        -max_len=8192 -print_final_stats=1 -artifact_prefix="$SCRATCH/" 2>"$SCRATCH/$target.log"; then
        tail -n 40 "$SCRATCH/$target.log"
        mkdir -p fuzz/artifacts
        cp "$SCRATCH"/crash-* "$SCRATCH"/timeout-* "$SCRATCH"/oom-* fuzz/artifacts/ 2>/dev/null || true
        echo "fuzz target $target failed; its input is kept in fuzz/artifacts/" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done' "$SCRATCH/$target.log" | tr '\n' ' '
    echo
done
echo "all fuzz targets ran clean"
