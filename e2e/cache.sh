# shellcheck shell=bash
# The cache on a real filesystem of fixed size (a tmpfs): a full disk, a read-only mount, and
# churn far beyond max_size measured with statvfs, which sees temp files and committed files
# in one atomic number. Sourced by run.sh, whose globals (WORK, LOGS, DIGEST, ...) it uses.

# mount_tmpfs DIR SIZE — a fresh tmpfs; run.sh's clean-up unmounts everything under WORK.
mount_tmpfs() {
    mkdir -p "$1" && mount -t tmpfs -o "size=$2" wharf-e2e "$1"
}

readyz_field() { curl -fsS --max-time 5 "$1/readyz" | jq -r "$2"; }

# cache_writable URL — whether the wharf at URL says, on /readyz, that it can cache again. For
# wait_until: wharf probes its directory every 2 s, so a condition's end shows within seconds.
cache_writable() { [[ $(readyz_field "$1" .cache.writable) == true ]]; }

# committed_file DIR DIGEST — the path of a committed blob, if it exists.
committed_file() { find "$1/blobs" -type f -name "${2#sha256:}" 2>/dev/null; }

# is_committed DIR DIGEST — for wait_until, which re-runs it.
is_committed() { [[ -n $(committed_file "$1" "$2") ]]; }

DISK_URL=
DISK_DIR=

# A 48 MiB disk, a cache allowed 1 GiB, and three 20 MiB layers. First wharf fills the disk
# itself, and must evict its own least recently used layers to make room. Then something else
# fills the disk, and wharf must serve from the upstream without caching until space returns.
test_disk_full() {
    DISK_DIR=$WORK/disk-cache
    DISK_URL=http://127.0.0.1:$DISK_PORT
    local name=wharf-disk layers i
    if ! mount_tmpfs "$DISK_DIR" 48m; then
        fail "disk full: mount a 48 MiB tmpfs" "$(mount -t tmpfs -o size=48m none "$DISK_DIR" 2>&1)"
        return 0
    fi
    start_wharf "$name" "127.0.0.1:$DISK_PORT" "$DISK_DIR" 5m 1GiB
    mapfile -t layers < <(layer_digests library/e2e-disk)
    local first=${layers[0]} second=${layers[1]} third=${layers[2]} blobs=$DISK_URL/v2/library/e2e-disk/blobs

    expect_eq "disk short: the 1st layer is served" "200 $first" "$(http_get "$blobs/$first")"
    expect_eq "disk short: the 2nd layer is served" "200 $second" "$(http_get "$blobs/$second")"
    wait_until 5 is_committed "$DISK_DIR" "$second"
    expect_eq "disk short: the 3rd layer is served" "200 $third" "$(http_get "$blobs/$third")"
    if wait_until 5 is_committed "$DISK_DIR" "$third"; then
        pass "disk short: wharf made room for the 3rd layer on its own disk"
    else
        fail "disk short: wharf made room for the 3rd layer on its own disk" "$(readyz_field "$DISK_URL" .)"
    fi
    expect_eq "disk short: the least recently used layer went" "" "$(committed_file "$DISK_DIR" "$first")"
    expect_cmp "disk short: counted as wharf_cache_evictions_total{reason=\"disk_space\"}" \
        "$(metric "$DISK_URL" wharf_cache_evictions_total reason=disk_space)" -ge 1
    expect_eq "disk short: caching never stopped" 1 "$(metric "$DISK_URL" wharf_cache_writable)"

    # Something else takes the disk: even an empty cache could not hold a layer now. The prune
    # runs while wharf serves, so wharf's index still lists the pruned layers.
    check "disk full: 'wharf cache prune' while wharf runs" \
        "$WORK/bin/wharf" cache prune --dir "$DISK_DIR" --max-size 0
    check "disk full: another program fills the disk" \
        dd if=/dev/zero of="$DISK_DIR/filler" bs=1M count=34 status=none
    for i in 1 2 3; do
        expect_eq "disk full: a layer is served from the upstream (pull $i)" "200 $first" \
            "$(http_get "$blobs/$first")"
    done
    expect_eq "disk full: the layer is not cached" "" "$(committed_file "$DISK_DIR" "$first")"
    expect_eq "disk full: /readyz names the condition" "false disk_full" \
        "$(readyz_field "$DISK_URL" '"\(.cache.writable) \(.cache.condition)"')"
    expect_eq "disk full: wharf_cache_writable is 0" 0 "$(metric "$DISK_URL" wharf_cache_writable)"
    expect_cmp "disk full: wharf_cache_bypass_total{reason=\"unwritable\"} counts each pull" \
        "$(metric "$DISK_URL" wharf_cache_bypass_total reason=unwritable)" -ge 3

    # Space returns.
    rm -f "$DISK_DIR/filler"
    wait_until 10 cache_writable "$DISK_URL" || true
    expect_eq "space back: /readyz says writable" true "$(readyz_field "$DISK_URL" .cache.writable)"
    expect_eq "space back: the layer is served" "200 $first" "$(http_get "$blobs/$first")"
    if wait_until 5 is_committed "$DISK_DIR" "$first"; then
        pass "space back: caching resumed (the layer is now cached)"
    else
        fail "space back: caching resumed (the layer is now cached)" "$(readyz_field "$DISK_URL" .)"
    fi
    expect_eq "disk full: logged once when it began and once when it ended" "1 1" \
        "$(grep -c 'caching suspended' "$LOGS/$name.err") $(grep -c 'caching resumed' "$LOGS/$name.err")"
}

# The same wharf after its directory is remounted read-only, then read-write again.
test_read_only() {
    local name=wharf-disk layers
    if [[ -z $DISK_URL ]] || ! kill -0 "${WHARF_PIDS[$name]:-0}" 2>/dev/null; then
        fail "read-only: needs the disk-full wharf running"
        return 0
    fi
    mapfile -t layers < <(layer_digests library/e2e-disk)
    local first=${layers[0]} second=${layers[1]} third=${layers[2]} blobs=$DISK_URL/v2/library/e2e-disk/blobs
    check "read-only: remount the cache directory read-only" mount -o remount,ro "$DISK_DIR"
    expect_eq "read-only: an uncached layer is served from the upstream" "200 $second" \
        "$(http_get "$blobs/$second")"
    expect_eq "read-only: a cached layer is still a hit" "200 $first hit" \
        "$(http_get "$blobs/$first") $(curl -sS --max-time 5 -o /dev/null -D - "$blobs/$first" |
            tr -d '\r' | awk 'tolower($1) == "x-wharf-cache:" {print $2}')"
    expect_eq "read-only: /readyz names the condition" "false read_only" \
        "$(readyz_field "$DISK_URL" '"\(.cache.writable) \(.cache.condition)"')"
    check "read-only: remount the cache directory read-write" mount -o remount,rw "$DISK_DIR"
    wait_until 10 cache_writable "$DISK_URL" || true
    expect_eq "read-write again: /readyz says writable" true "$(readyz_field "$DISK_URL" .cache.writable)"
    expect_eq "read-write again: a layer is served" "200 $third" "$(http_get "$blobs/$third")"
    if wait_until 5 is_committed "$DISK_DIR" "$third"; then
        pass "read-write again: caching resumed"
    else
        fail "read-write again: caching resumed" "$(readyz_field "$DISK_URL" .)"
    fi
    expect_eq "read-only: each condition logged once" "2 2" \
        "$(grep -c 'caching suspended' "$LOGS/$name.err") $(grep -c 'caching resumed' "$LOGS/$name.err")"
    stop_pid "${WHARF_PIDS[$name]}"
}

# 24 distinct layers of ~4 MiB (about 4x max_size) through a 24 MiB cache, eight clients at a
# time, while a sampler reads the filesystem's usage every few milliseconds.
test_churn() {
    local dir=$WORK/churn-cache url=http://127.0.0.1:$CHURN_PORT name=wharf-churn
    local out=$WORK/churn-out max_size=$((24 * 1024 * 1024)) clients=8 largest
    if ! mount_tmpfs "$dir" 256m; then
        fail "churn: mount a 256 MiB tmpfs"
        return 0
    fi
    mkdir -p "$out"
    start_wharf "$name" "127.0.0.1:$CHURN_PORT" "$dir" 5m 24MiB
    largest=$(jq '[.layers[].size] | max' "$(manifest_file library/e2e-churn)")
    start_bg churn-sampler python3 -c '
import os, sys, time
path, ready, stop = sys.argv[1:4]
def used():
    s = os.statvfs(path)
    return (s.f_blocks - s.f_bfree) * s.f_frsize
base = peak = used()
samples = 0
open(ready, "w").close()
while not os.path.exists(stop):
    peak = max(peak, used())
    samples += 1
    time.sleep(0.001)
print(base, peak, samples)
' "$dir" "$out/ready" "$out/stop"
    local sampler=$STARTED_PID
    # The churn takes a fraction of a second: the sampler must be running before it starts.
    if ! wait_until 10 test -e "$out/ready"; then
        fail "churn: the disk sampler started"
        return 0
    fi
    layer_digests library/e2e-churn |
        xargs -P "$clients" -I{} curl -sS --max-time 60 -o "$out/{}" "$url/v2/library/e2e-churn/blobs/{}"
    touch "$out/stop"
    wait_pid "$sampler" || true
    local base peak samples ok=0 total=0 d
    read -r base peak samples <"$LOGS/churn-sampler.out"
    expect_cmp "churn: the disk was sampled while it ran" "${samples:-0}" -gt 10
    for d in $(layer_digests library/e2e-churn); do
        total=$((total + 1))
        [[ $(digest_of_stdin <"$out/$d") == "$d" ]] && ok=$((ok + 1))
    done
    expect_eq "churn: all $total layers served with their exact bytes" "$total" "$ok"
    local grew=$((peak - base)) limit=$((max_size + clients * largest))
    info "churn: peak disk use $((grew / 1024)) KiB (statvfs, $samples samples); max_size $((max_size / 1024)) KiB;" \
        "allowed with $clients fills of up to $((largest / 1024)) KiB in flight: $((limit / 1024)) KiB"
    expect_cmp "churn: disk use never passed max_size plus the fills in flight" "$grew" -le "$limit"
    local committed
    committed=$("$WORK/bin/wharf" cache stats --dir "$dir" | awk '$1 == "total" {print $4, $5}')
    info "churn: committed at the end: $committed"
    expect_cmp "churn: committed bytes at the end are within max_size" \
        "$(metric "$url" wharf_cache_size_bytes)" -le "$max_size"
    expect_cmp "churn: wharf evicted to stay within max_size" \
        "$(metric "$url" wharf_cache_evictions_total reason=size)" -gt 0
    stop_pid "${WHARF_PIDS[$name]}"
}
