#!/usr/bin/env bash
# What signed-images-only costs: the same wharf without and with a [[policy]] rule, in front of
# one CNCF distribution registry holding an 8-layer image signed in cosign's classic layout
# (e2e/sign.py, a key made with openssl). Warm: manifest GETs by tag under wrk (a verified
# result is reused, so the rule should cost nothing). Cold: a skopeo copy of the whole image
# through an empty cache, which with the rule also fetches and verifies the signature.
#
#     bash benches/policy.sh [WHARF_BIN]    # default target/release/wharf; needs wrk, skopeo,
#                                          # docker-registry, openssl; ~2 minutes
#
# Everything listens on 127.0.0.1 and is stopped by PID at the end.
set -euo pipefail

WHARF=$(realpath "${1:-target/release/wharf}")
HERE=$(cd "$(dirname "$0")" && pwd)
for tool in wrk skopeo docker-registry openssl python3 curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
export NO_PROXY=127.0.0.1 no_proxy=127.0.0.1

read -r UP_PORT PLAIN_PORT GUARD_PORT <<<"$(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')"
UP=127.0.0.1:$UP_PORT
wait_for() { for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }

cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: $UP}
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
wait_for "http://$UP/v2/"

REPO=myorg/bench TAG=v1
python3 "$HERE/../e2e/mkimage.py" "$WORK/layout" "$TAG" --name "$REPO" \
    --layers 8M,4M,4M,2M,1M,512K,64K,4K --platform linux/amd64 >/dev/null
skopeo copy -q --dest-tls-verify=false "oci:$WORK/layout:$TAG" "docker://$UP/$REPO:$TAG"
DIGEST=sha256:$(skopeo inspect --raw --tls-verify=false "docker://$UP/$REPO:$TAG" | sha256sum | cut -d' ' -f1)
openssl ecparam -genkey -name prime256v1 -noout -out "$WORK/cosign.key" 2>/dev/null
openssl ec -in "$WORK/cosign.key" -pubout -out "$WORK/cosign.pub" 2>/dev/null
python3 "$HERE/../e2e/sign.py" "$UP" "$REPO" "$DIGEST" "$WORK/cosign.key"

# write_config NAME PORT CACHE [policy]
write_config() {
    cat >"$WORK/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
[cache]
dir = "$3"
[[upstream]]
name = "docker.io"
url = "http://$UP"
EOF
    if [[ ${4:-} == policy ]]; then
        cat >>"$WORK/$1.toml" <<EOF
[[policy]]
name = "bench"
repositories = ["myorg/*"]
keys = ["$WORK/cosign.pub"]
EOF
    fi
}
# start NAME PORT CACHE [policy] — a wharf, once /healthz answers.
start() {
    write_config "$@"
    "$WHARF" serve --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    wait_for "http://127.0.0.1:$2/healthz"
}
stop_last() { kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'; }

ACCEPT='application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

echo "== cold: skopeo copy of $REPO:$TAG (8 layers, 19.6 MiB) through an empty cache, 3 rounds"
declare -A COLD
for round in 1 2 3; do
    for setting in plain policy; do
        start "cold-$setting-$round" "$GUARD_PORT" "$WORK/cache-cold-$setting-$round" "$setting"
        started=$(date +%s%N)
        skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$GUARD_PORT/$REPO:$TAG" \
            "dir:$WORK/copy-$setting-$round"
        COLD[$setting]+=" $(( ($(date +%s%N) - started) / 1000000 ))"
        stop_last
        rm -rf "$WORK/cache-cold-$setting-$round" "$WORK/copy-$setting-$round"
    done
done
for setting in plain policy; do
    # shellcheck disable=SC2086 # the list of rounds
    echo "cold $setting: rounds (ms)${COLD[$setting]}, median $(median ${COLD[$setting]})"
done

echo "== warm: GET /v2/$REPO/manifests/$TAG under wrk -t2 -c64, six 6 s rounds alternating"
start plain "$PLAIN_PORT" "$WORK/cache-plain"
start guarded "$GUARD_PORT" "$WORK/cache-guarded" policy
for port in "$PLAIN_PORT" "$GUARD_PORT"; do
    curl -fsS -o /dev/null -H "Accept: $ACCEPT" "http://127.0.0.1:$port/v2/$REPO/manifests/$TAG"
done
rps() { wrk -t2 -c64 -d6s -H "Accept: $ACCEPT" "http://127.0.0.1:$1/v2/$REPO/manifests/$TAG" | awk '/Requests\/sec/ {print $2}'; }
declare -A WARM
for round in 1 2 3 4 5 6; do
    WARM[plain]+=" $(rps "$PLAIN_PORT")"
    WARM[policy]+=" $(rps "$GUARD_PORT")"
done
for setting in plain policy; do
    # shellcheck disable=SC2086
    echo "warm $setting: rounds (req/s)${WARM[$setting]}, median $(median ${WARM[$setting]})"
done
checks=$(curl -fsS "http://127.0.0.1:$GUARD_PORT/metrics" | awk '/^wharf_policy_verifications_total/ {s += $2} END {print s + 0}')
echo "signature checks made by the guarded wharf over the whole warm run: $checks"
