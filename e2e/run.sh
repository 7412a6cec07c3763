#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR # (the sourced files sit beside this one)
# End-to-end test of wharf with real registry clients, entirely on 127.0.0.1.
#
#   bash e2e/run.sh path/to/wharf
#
# A CNCF distribution registry is the upstream; images are built offline and pushed to it; wharf
# mirrors it; skopeo, dockerd, containerd (ctr) and podman pull through wharf in each URL shape
# they use (plain /v2/<repo>, containerd's ?ns=, the /v2/<registry>/<repo> path prefix).
# Every client silently falls back to the upstream when a mirror fails, so "the pull worked" proves
# little: each pull is also checked against wharf's own counters and against the upstream's access
# log, which must show no request from a client, only from wharf.
#
# Files: lib.sh (check bookkeeping, processes, metrics), mkimage.py (offline images), clients.sh
# (the pulls), checks.sh (the protocol, caching, outage and timings), lazy.sh (an eStargz lazy
# pull, replayed by lazypull.py over throttle.py's slow link).
#
# Must run as root (private dockerd and containerd). Environment:
#   KEEP_WORKDIR=1   keep the scratch directory (logs, configs, caches) for inspection
#   DOCKER=...       docker CLI to use (default: docker on PATH)
#   E2E_PHASES="test_containerd test_auth"   run only these phases, in this order
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ $# -ne 1 ]]; then
    echo "usage: $0 WHARF_BIN" >&2
    exit 2
fi
WHARF_SRC=$1
DOCKER=${DOCKER:-docker}
TAG=v1
CLIENT_TIMEOUT=60 # seconds any single pull may take (a healthy one takes a few)
SUITE_BUDGET=720  # seconds; after this, remaining checks fail at once instead of waiting

WORK=$(mktemp -d)
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/tmp"
export TMPDIR=$WORK/tmp
# shellcheck source=lib.sh
source "$HERE/lib.sh"
declare -A WHARF_PIDS # name -> PID of each wharf started

# ---- clean-up, always ------------------------------------------------------------------------

finish() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if ((rc != 0)); then
        fail "the suite ran to the end" "stopped with exit status $rc${ERR_AT:+ after: $ERR_AT}"
    fi
    local pid=${WHARF_PIDS[wharf]:-}
    if [[ -n $pid ]]; then
        if kill -0 "$pid" 2>/dev/null; then
            pass "wharf was still running at the end"
        else
            wait "$pid"
            fail "wharf was still running at the end" "it exited with status $?"
        fi
    fi
    if ((FAILED > 0)) && [[ -f $LOGS/wharf.err ]]; then
        echo "---- last lines of wharf's log ----"
        cat "$LOGS/wharf.out" "$LOGS/wharf.err" | tail -n 40 | sed 's/\x1b\[[0-9;]*m//g'
        echo "-----------------------------------"
    fi
    stop_all
    declare -F tls_cleanup >/dev/null && tls_cleanup
    # A daemon killed hard can leave mounts behind; rm -rf must never descend through one.
    local mnt
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null
    done < <(awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r)
    if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then
        echo "scratch directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    if ((FAILED > 0)); then
        printf 'failed checks:\n'
        printf '  %s\n' "${FAILED_NAMES[@]}"
    fi
    echo "$PASSED passed, $FAILED failed"
    ((FAILED == 0)) || exit 1
    exit 0
}
trap finish EXIT
# Remember what failed outside any check (set -e then stops the suite), to say so at the end.
trap 'ERR_AT="line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

# Any request a client sends past loopback goes to a dead proxy and fails at once, so a fallback
# to a public registry (Docker Hub for dockerd, say) can neither leave the machine nor succeed.
# Go and curl never proxy loopback addresses, and NO_PROXY says so again.
read -r UP_PORT WHARF_PORT TTL_PORT DEAD_PORT T1_PORT T2_PORT T3_PORT DISK_PORT CHURN_PORT \
    TLS_PORT UP2_PORT REGIONAL_PORT EDGE_PORT EDGE2_PORT AUTH_PORT AUTH_OPS_PORT UP_TLS_PORT \
    HTTPS_UP_WHARF_PORT CLUSTER_A_PORT CLUSTER_B_PORT CLUSTER_C_PORT SHARED1_PORT SHARED2_PORT \
    SHARED3_PORT DC_A_PORT DC_B_PORT DC_C_PORT POLICY_PORT POLICY_P_PORT POLICY_Q_PORT \
    HOOK_UP_PORT HOOK_WHARF_PORT <<<"$(free_ports 32)"
TIMING_PORTS=("$T1_PORT" "$T2_PORT" "$T3_PORT")
# shellcheck disable=SC2034 # used by cluster.sh
CLUSTER_PORTS=("$CLUSTER_A_PORT" "$CLUSTER_B_PORT" "$CLUSTER_C_PORT")
DC_PORTS=("$DC_A_PORT" "$DC_B_PORT" "$DC_C_PORT")
export HTTP_PROXY=http://127.0.0.1:$DEAD_PORT HTTPS_PROXY=http://127.0.0.1:$DEAD_PORT
export http_proxy=$HTTP_PROXY https_proxy=$HTTPS_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
export NO_COLOR=1

UP=127.0.0.1:$UP_PORT
WHARF=127.0.0.1:$WHARF_PORT
WHARF_URL=http://$WHARF
# A second name for the upstream, the one the shipped client snippets (deploy/clients) use for
# the path-prefix shape: containers/image cannot put "host:port" inside a mirror's path. Any
# fallback to the real ghcr.io would go to the dead proxy, so these pulls cannot bypass wharf.
PREFIX_NAME=ghcr.io
CLIENTS=$HERE/../deploy/clients

ACCEPT='application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json'

# ---- upstream registry -----------------------------------------------------------------------

start_upstream() {
    UPSTREAM_DATA=$WORK/registry-data
    registry_config "$WORK/registry.yml" "$UP" "$UPSTREAM_DATA"
    # The access log (one Apache-style line per request, with the user agent) goes to stdout.
    start_bg upstream /usr/bin/docker-registry serve "$WORK/registry.yml"
    UPSTREAM_PID=$STARTED_PID
    UPSTREAM_ACCESS_LOG=$LOGS/upstream.out
    if wait_until 30 curl -fsS --max-time 2 "http://$UP/v2/"; then
        pass "upstream registry (CNCF distribution) answers on $UP"
    else
        fail "upstream registry did not start" "$(tail -n 5 "$LOGS/upstream.err")"
        exit 1
    fi
}

upstream_mark() { wc -l <"$UPSTREAM_ACCESS_LOG"; }

# Access-log lines written after MARK.
upstream_since() { tail -n +"$(($1 + 1))" "$UPSTREAM_ACCESS_LOG"; }

# Blob GETs the upstream answered after MARK.
upstream_blob_gets_since() {
    upstream_since "$1" | grep -cE '"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]{64}[^ ]* HTTP' || true
}

# ---- what left a registry, blob by blob ------------------------------------------------------
#
# Bytes, not requests, say how many times a blob left a registry: a fill may take one blob in
# several ranged GETs (segments of a large blob, a resume after a break), and a range far ahead
# of a fill is fetched on its own; each is one request more, but no copy more.

# blob_bytes LOG MARK — "DIGEST BYTES" for every blob that the registry whose access log is LOG
# sent after line MARK: the bytes of all its 2xx GET answers for that blob, added up.
blob_bytes() {
    tail -n +"$(($2 + 1))" "$1" |
        sed -nE 's#.*"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64})[^"]*" 2[0-9][0-9] ([0-9]+) .*#\1 \2#p' |
        awk '{sent[$1] += $2} END {for (d in sent) print d, sent[d]}'
}

# registry_blob_size DATA DIGEST — the size of a blob in the storage directory DATA of a CNCF
# distribution registry (its own copy: an independent witness of the length).
registry_blob_size() {
    local hex=${2#sha256:}
    stat -c %s "$1/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data"
}

# blob_copies LOG MARK DATA — "COPIES DIGEST" for every blob the registry (access log LOG,
# storage DATA) sent after line MARK, COPIES being how many times its bytes went out: the bytes
# sent over the blob's size, rounded up past a 5% allowance for the few bytes sent twice where
# a broken answer is resumed. "?" when the blob's size cannot be read; an empty blob, whose
# copies weigh nothing, counts once.
blob_copies() {
    local digest bytes size
    while read -r digest bytes; do
        size=$(registry_blob_size "$3" "$digest" 2>/dev/null) || size='?'
        awk -v b="$bytes" -v s="$size" -v d="$digest" 'BEGIN {
            if (s !~ /^[0-9]+$/) { print "?", d; exit }
            if (s == 0) { print 1, d; exit }
            c = b / s - 0.05; n = int(c); if (n < c) n++; if (n < 1) n = 1
            print n, d }'
    done < <(blob_bytes "$1" "$2")
}

# upstream_copies_since MARK DIGEST — how many times the suite's upstream sent that blob after
# MARK (0: not at all).
upstream_copies_since() {
    blob_copies "$UPSTREAM_ACCESS_LOG" "$1" "$UPSTREAM_DATA" |
        awk -v d="$2" '$2 == d {n = $1} END {print n + 0}'
}

# upstream_bytes_since MARK DIGEST — the bytes of that blob the suite's upstream sent after MARK.
upstream_bytes_since() {
    blob_bytes "$UPSTREAM_ACCESS_LOG" "$1" | awk -v d="$2" '$1 == d {n = $2} END {print n + 0}'
}

# bypassers LOG MARK — user agents (with counts) of the requests in the access log LOG after
# line MARK that came neither from wharf nor from log_barrier: a client that went around the
# mirror.
bypassers() {
    tail -n +"$(($2 + 1))" "$1" |
        awk -F'"' -v barrier="$BARRIER_AGENT" '$(NF-1) !~ /^wharf/ && $(NF-1) != barrier {print $(NF-1)}' |
        sort | uniq -c
}

bypassers_since() { bypassers "$UPSTREAM_ACCESS_LOG" "$1"; }

# ---- images ----------------------------------------------------------------------------------

# seed REPO FORMAT PLATFORMS LAYER_SIZES — build an image offline and push it to the upstream.
seed() {
    local repo=$1 format=$2 platforms=$3 layers=$4 layout args=()
    layout=$WORK/layouts/${repo//\//_}
    local p
    for p in $platforms; do args+=(--platform "$p"); done
    python3 "$HERE/mkimage.py" "$layout" "$TAG" --name "$repo" --layers "$layers" "${args[@]}" &&
        skopeo copy -q --all --format "$format" --dest-tls-verify=false \
            "oci:$layout:$TAG" "docker://$UP/$repo:$TAG"
}

# The upstream's manifest for REPO:TAG, exactly as served, saved before wharf starts: from then
# on only wharf may talk to the upstream.
manifest_file() { echo "$WORK/manifests/${1//\//_}.json"; }

seed_images() {
    check "build and push library/e2e-multi (4 layers, Docker schema 2)" \
        seed library/e2e-multi v2s2 linux/amd64 16M,8M,4M,4K
    check "build and push library/e2e-multiarch (OCI index: linux/amd64 + linux/arm64)" \
        seed library/e2e-multiarch oci "linux/amd64 linux/arm64/v8" 2M,64K
    check "build and push library/e2e-oci (OCI media types)" \
        seed library/e2e-oci oci linux/amd64 3M,1M
    check "build and push acme/tools/e2e-app (non-library repository)" \
        seed acme/tools/e2e-app v2s2 linux/amd64 2M,512K,16K
    # Pulled by no client: its layers are uncached when the fan-in and hang-up checks ask for them.
    check "build and push library/e2e-fanin (two uncached 24 MiB layers)" \
        seed library/e2e-fanin oci linux/amd64 24M,24M
    # For the disk checks (cache.sh): layers that overflow a small tmpfs, and many distinct ones
    # to churn through a small max_size.
    check "build and push library/e2e-disk (three 20 MiB layers)" \
        seed library/e2e-disk oci linux/amd64 20M,20M,20M
    check "build and push library/e2e-churn (24 layers of 4 MiB)" \
        seed library/e2e-churn oci linux/amd64 "$(printf '4M,%.0s' {1..23})4M"
    # umoci is an independent reader of the layouts: if it can unpack them, so can a runtime.
    check "umoci unpacks the built image (layout is valid)" \
        umoci unpack --image "$WORK/layouts/library_e2e-multi:$TAG" "$WORK/umoci-bundle"

    declare -gA DIGEST
    local repo file
    mkdir -p "$WORK/manifests"
    for repo in library/e2e-multi library/e2e-multiarch library/e2e-oci acme/tools/e2e-app \
        library/e2e-fanin library/e2e-disk library/e2e-churn; do
        file=$(manifest_file "$repo")
        if ! skopeo inspect --raw --tls-verify=false "docker://$UP/$repo:$TAG" >"$file"; then
            fail "upstream serves $repo:$TAG"
            exit 1
        fi
        DIGEST[$repo]=$(digest_of_stdin <"$file")
        info "upstream $repo:$TAG = ${DIGEST[$repo]}"
    done
    AMD64_DIGEST=$(jq -r '.manifests[] | select(.platform.architecture == "amd64") | .digest' \
        "$(manifest_file library/e2e-multiarch)")
    info "upstream library/e2e-multiarch:$TAG linux/amd64 = $AMD64_DIGEST"
}

# ---- wharf -----------------------------------------------------------------------------------

# write_wharf_config FILE LISTEN CACHE_DIR [TAG_TTL] [MAX_SIZE]
write_wharf_config() {
    cat >"$1" <<EOF
[server]
listen = "$2"

[cache]
dir = "$3"
max_size = "${5:-20GiB}"
tag_ttl = "${4:-5m}"

# The default upstream: plain /v2/<repo>/... (dockerd's registry-mirrors) lands here.
[[upstream]]
name = "docker.io"
url = "http://$UP"

# The same registry under its own host:port, for containerd's ?ns= and a path prefix.
[[upstream]]
name = "$UP"
url = "http://$UP"

# And under a port-less name, for the path prefix that containers/image can express.
[[upstream]]
name = "$PREFIX_NAME"
url = "http://$UP"
EOF
}

# launch_wharf NAME CONFIG URL — start a copy of the binary (the original may be rebuilt while
# we run) with CONFIG and wait until URL/healthz answers.
launch_wharf() {
    local name=$1 config=$2 url=$3
    start_bg "$name" "$WORK/bin/wharf" serve --config "$config"
    local pid=$STARTED_PID
    WHARF_PIDS[$name]=$pid
    if wait_until 30 curl -fsS --max-time 2 "$url/healthz"; then
        pass "$name starts and /healthz answers 200"
    else
        local state=running
        kill -0 "$pid" 2>/dev/null || state=exited
        mapfile -t lines < <(tail -n 15 "$LOGS/$name.err" | sed 's/\x1b\[[0-9;]*m//g')
        fail "$name did not become healthy within 30 s (process $state)" "${lines[@]}"
        exit 1
    fi
}

# start_wharf NAME LISTEN CACHE_DIR [TAG_TTL] [MAX_SIZE] — the usual config, plain HTTP.
start_wharf() {
    local name=$1 listen=$2 cache=$3 ttl=${4:-5m} max_size=${5:-20GiB}
    write_wharf_config "$WORK/$name.toml" "$listen" "$cache" "$ttl" "$max_size"
    launch_wharf "$name" "$WORK/$name.toml" "http://$listen"
}

# The wharf whose metrics the pull checks read (the main one unless a phase points elsewhere).
METRICS_URL=$WHARF_URL
# read_metrics_of URL — point wmetric (and so pull_through) at the wharf at URL.
read_metrics_of() { METRICS_URL=$1; }
wmetric() { metric "$METRICS_URL" "$@" || { echo "wharf's /metrics did not answer" >&2; return 1; }; }

# refused_with LABEL STATUS CMD... — the pull fails, wharf answered STATUS more often, and it
# served no manifest. The client's output is left in $LOGS/refused.out; fails (1) if the pull
# went through.
refused_with() {
    local label=$1 status=$2
    shift 2
    local answered manifests
    answered=$(wmetric wharf_http_requests_total status="$status")
    manifests=$(wmetric wharf_http_requests_total route=manifest status=200)
    if timeout "$CLIENT_TIMEOUT" "$@" >"$LOGS/refused.out" 2>&1; then
        fail "$label: the pull is refused" "it succeeded"
        return 1
    fi
    pass "$label: the pull is refused"
    expect_cmp "$label: wharf answered $status" \
        "$(($(wmetric wharf_http_requests_total status="$status") - answered))" -gt 0
    expect_eq "$label: wharf served no manifest" \
        "$manifests" "$(wmetric wharf_http_requests_total route=manifest status=200)"
}

# shellcheck source=clients.sh
source "$HERE/clients.sh"
# shellcheck source=checks.sh
source "$HERE/checks.sh"
# shellcheck source=cache.sh
source "$HERE/cache.sh"
# shellcheck source=tls.sh
source "$HERE/tls.sh"
# shellcheck source=tiers.sh
source "$HERE/tiers.sh"
# shellcheck source=cluster.sh
source "$HERE/cluster.sh"
# shellcheck source=shared.sh
source "$HERE/shared.sh"
# shellcheck source=datacenter.sh
source "$HERE/datacenter.sh"
# shellcheck source=auth.sh
source "$HERE/auth.sh"
# shellcheck source=policy.sh
source "$HERE/policy.sh"
# shellcheck source=webhooks.sh
source "$HERE/webhooks.sh"
# shellcheck source=lazy.sh
source "$HERE/lazy.sh"

# ---- main ------------------------------------------------------------------------------------

main() {
    info "scratch directory $WORK; upstream $UP; wharf $WHARF"
    if [[ $(id -u) -ne 0 ]]; then
        fail "run as root (the suite starts private dockerd and containerd instances)"
        exit 1
    fi
    if [[ ! -x $WHARF_SRC ]]; then
        fail "wharf binary is executable: $WHARF_SRC"
        exit 1
    fi
    mkdir -p "$WORK/bin"
    cp "$WHARF_SRC" "$WORK/bin/wharf"

    start_upstream
    seed_images
    write_registries_conf
    SEED_MARK=$(upstream_mark) # from here on, only wharf may talk to the upstream
    start_wharf wharf "$WHARF" "$WORK/cache"

    local phase phases=(test_skopeo test_dockerd test_containerd test_podman test_protocol
        test_repull test_single_fetch test_fan_in test_hang_up test_lazy measure_timings test_tls
        test_https_upstream test_tiers test_cluster test_shared test_datacenter
        test_auth test_policy test_webhooks test_disk_full test_read_only test_churn
        test_upstream_outage) # the outage comes last: it stops the upstream
    if [[ -n ${E2E_PHASES:-} ]]; then
        read -ra phases <<<"$E2E_PHASES"
    fi
    for phase in "${phases[@]}"; do
        if ! declare -F "$phase" >/dev/null; then
            fail "$phase (no such phase)"
        elif budget_spent; then
            fail "$phase (not run: the suite's time budget of $SUITE_BUDGET s is spent)"
        else
            "$phase"
        fi
    done
}

main
