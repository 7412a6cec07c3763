#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, each from its seed inputs (fuzz/seeds/<target>) in
# a scratch corpus, so the seeds stay as committed. A crash stops the run, names the target and
# keeps the input that caused it in fuzz/artifacts/. So does anything that would let the run
# pass without fuzzing: no target listed, a target source that is not listed, a target that
# exits without executing inputs.
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

die() {
    echo "fuzz/run.sh: $*" >&2
    exit 1
}

cargo fuzz build -s none
# An assignment, so that set -e stops the run when `cargo fuzz list` fails (in `for t in $(...)`
# its failure would be ignored, and the loop would just run zero times).
listed=$(cargo fuzz list)
targets=()
while read -r target; do
    if [[ -n $target ]]; then
        targets+=("$target")
    fi
done <<<"$listed"
((${#targets[@]} > 0)) || die "cargo fuzz list names no target: nothing would be fuzzed"
# A target written but not declared in fuzz/Cargo.toml would never be listed, nor run.
for source in fuzz/fuzz_targets/*.rs; do
    name=$(basename "$source" .rs)
    [[ " ${targets[*]} " == *" $name "* ]] ||
        die "$source is not a listed target (no [[bin]] named $name in fuzz/Cargo.toml?)"
done

ran=()
for target in "${targets[@]}"; do
    [[ -d fuzz/seeds/$target ]] || die "no seed inputs for $target (fuzz/seeds/$target)"
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
    # Exit status 0 alone does not show that libFuzzer ran: with -print_final_stats=1 it ends by
    # saying how many inputs it executed.
    units=$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$SCRATCH/$target.log" |
        tail -n 1)
    if [[ -z $units || $units -eq 0 ]]; then
        tail -n 40 "$SCRATCH/$target.log"
        die "fuzz target $target exited 0 but reported no executed inputs (stat::number_of_executed_units)"
    fi
    grep -E '^stat::number_of_executed_units|^Done' "$SCRATCH/$target.log" | tr '\n' ' '
    echo
    ran+=("$target")
done
echo "all ${#ran[@]} fuzz targets ran clean: ${ran[*]}"
