#!/usr/bin/env bash
# The side-by-side comparison in one command: installs its tools from Debian packages (as root),
# builds wharf, and runs compare.py. Extra arguments go to compare.py (--rounds, --keep, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

NEEDED=(docker-registry skopeo nginx-light wrk python3)
missing=()
for tool in docker-registry skopeo nginx wrk python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing: ${missing[*]}; install as root: apt-get install -y ${NEEDED[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${NEEDED[@]}"
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "run as root: peak RSS is measured by resetting /proc/PID/clear_refs of each server" >&2
    exit 1
fi

cargo build --release
python3 benches/compare.py --wharf target/release/wharf "$@"
