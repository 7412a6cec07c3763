# shellcheck shell=bash
# wharf's behaviour beyond "the pull worked": the protocol request by request, warm pulls, one
# upstream fetch per blob, hang-ups, timings and an upstream outage. Sourced by run.sh, whose
# globals (WORK, UP, WHARF, DIGEST, ...) it uses.

# ---- the protocol, request by request --------------------------------------------------------

# http_get URL [CURL_ARGS...] — prints "STATUS DIGEST_OF_BODY"
http_get() {
    local url=$1 body=$WORK/tmp/body
    shift
    local status
    rm -f "$body"
    status=$(curl -sS --max-time 5 -o "$body" -w '%{http_code}' "$@" "$url") || status=000
    echo "$status $(digest_of_stdin <"$body" 2>/dev/null)"
}

test_protocol() {
    local app=${DIGEST[acme/tools/e2e-app]} up_before mark
    expect_eq "GET /v2/ answers 200 with the API version header" "200 registry/2.0" \
        "$(curl -sS --max-time 5 -D - -o /dev/null "$WHARF_URL/v2/" |
            tr -d '\r' | awk 'NR == 1 {s = $2} tolower($1) == "docker-distribution-api-version:" {v = $2} END {print s, v}')"

    expect_eq "HEAD manifest gives the upstream's Docker-Content-Digest" "${DIGEST[library/e2e-multi]}" \
        "$(curl -sS --max-time 5 -I -H "Accept: $ACCEPT" "$WHARF_URL/v2/library/e2e-multi/manifests/$TAG" |
            tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}')"

    expect_eq "GET manifest with ?ns=$UP serves the exact bytes" "200 $app" \
        "$(http_get "$WHARF_URL/v2/acme/tools/e2e-app/manifests/$TAG?ns=$UP" -H "Accept: $ACCEPT")"

    expect_eq "GET manifest with path prefix /v2/$UP/... serves the exact bytes" "200 $app" \
        "$(http_get "$WHARF_URL/v2/$UP/acme/tools/e2e-app/manifests/$TAG" -H "Accept: $ACCEPT")"

    expect_eq "GET manifest by digest serves the exact bytes" "200 $app" \
        "$(http_get "$WHARF_URL/v2/acme/tools/e2e-app/manifests/$app" -H "Accept: $ACCEPT")"

    local config
    config=$(jq -r .config.digest "$(manifest_file acme/tools/e2e-app)")
    expect_eq "GET blob serves bytes matching its digest" "200 $config" \
        "$(http_get "$WHARF_URL/v2/acme/tools/e2e-app/blobs/$config")"

    expect_eq "GET tags/list names the tag" "$TAG" \
        "$(curl -fsS --max-time 5 "$WHARF_URL/v2/library/e2e-multi/tags/list" | jq -r '.tags[]' 2>&1)"

    local missing
    missing=$(curl -sS --max-time 5 -H "Accept: $ACCEPT" -w ' %{http_code}' \
        "$WHARF_URL/v2/library/e2e-multi/manifests/no-such-tag" || true)
    expect_eq "unknown tag: 404 with OCI error MANIFEST_UNKNOWN" "404 MANIFEST_UNKNOWN" \
        "${missing##* } $(jq -r '.errors[0].code' <<<"${missing% *}" 2>/dev/null)"

    # The allow-list: registries wharf was not configured for are refused without contacting
    # anything (all configured upstreams are this one registry, so its log is the witness).
    up_before=$(wmetric wharf_upstream_requests_total)
    mark=$(upstream_mark)
    local s1 s2
    s1=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' \
        "$WHARF_URL/v2/library/e2e-multi/manifests/$TAG?ns=unknown.example" || true)
    s2=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' \
        "$WHARF_URL/v2/unknown.example/library/e2e-multi/manifests/$TAG" || true)
    if [[ $s1 == 4?? && $s2 == 4?? ]]; then
        pass "unconfigured registry (?ns= and path prefix) is refused with 4xx"
    else
        fail "unconfigured registry (?ns= and path prefix) is refused with 4xx" "?ns=: $s1, prefix: $s2"
    fi
    expect_eq "unconfigured registry: nothing sent upstream" "0 0" \
        "$(($(wmetric wharf_upstream_requests_total) - up_before)) $(upstream_since "$mark" | wc -l)"

    local page series missing_series=()
    page=$(curl -fsS --max-time 5 "$WHARF_URL/metrics" || true)
    for series in wharf_upstream_requests_total wharf_cache_results_total wharf_http_requests_total; do
        grep -q "^$series{" <<<"$page" || missing_series+=("$series")
    done
    expect_eq "/metrics exposes the documented series" "" "${missing_series[*]}"
    check "/metrics passes promtool check metrics" promtool_lint "$WHARF_URL"
}

# promtool_lint URL — URL/metrics answers a non-empty page and promtool finds nothing in it.
# Not a pipe: promtool passes an empty input, so a failed curl must fail on its own.
promtool_lint() {
    local page
    page=$(curl -fsS --max-time 5 "$1/metrics") || return 1
    [[ -n $page ]] || { echo "$1/metrics answered an empty page"; return 1; }
    promtool check metrics <<<"$page"
}

# ---- warm pulls cost the upstream nothing ----------------------------------------------------

test_repull() {
    local mark blobs_before hits_before out=$WORK/repull
    mkdir -p "$out"
    mark=$(upstream_mark)
    blobs_before=$(wmetric wharf_upstream_requests_total kind=blob)
    hits_before=$(wmetric wharf_cache_results_total kind=blob result=hit)

    local repo
    for repo in library/e2e-multi library/e2e-multiarch library/e2e-oci acme/tools/e2e-app; do
        check "repull: skopeo copies $repo again through wharf" timeout "$CLIENT_TIMEOUT" \
            skopeo copy -q --all --src-tls-verify=false "docker://$WHARF/$repo:$TAG" "dir:$out/${repo//\//_}"
    done
    if ((${#DOCKER_CLI[@]} > 0)); then
        check "repull: dockerd removes e2e-multi" "${DOCKER_CLI[@]}" rmi -f "e2e-multi:$TAG"
        check "repull: dockerd pulls e2e-multi again" timeout "$CLIENT_TIMEOUT" \
            "${DOCKER_CLI[@]}" pull "e2e-multi:$TAG"
    fi

    expect_eq "repull: the upstream saw zero blob GETs" 0 "$(upstream_blob_gets_since "$mark")"
    expect_eq "repull: wharf_upstream_requests_total{kind=\"blob\"} did not move" 0 \
        "$(($(wmetric wharf_upstream_requests_total kind=blob) - blobs_before))"
    expect_cmp "repull: blobs were cache hits" \
        "$(($(wmetric wharf_cache_results_total kind=blob result=hit) - hits_before))" -gt 0
}

# Across every client and shape, wharf fetched each blob from the upstream at most once: no
# blob's bytes left the upstream twice (however many ranged requests carried them).
test_single_fetch() {
    local repeats
    repeats=$(blob_copies "$UPSTREAM_ACCESS_LOG" "$SEED_MARK" "$UPSTREAM_DATA" |
        awk '$1 != 1 {print $1 "x " $2}')
    if [[ -z $repeats ]]; then
        pass "every blob was fetched from the upstream at most once over the whole run"
    else
        mapfile -t lines <<<"$repeats"
        fail "some blobs were fetched from the upstream more than once" "${lines[@]}"
    fi
    local errors
    errors=$(curl -fsS --max-time 5 "$WHARF_URL/metrics" | grep -E '^wharf_http_requests_total\{' |
        grep -E 'status="5[0-9][0-9]"' || true)
    expect_eq "wharf answered no request with 5xx" "" "$errors"
    if grep -q 'panicked' "$LOGS/wharf.err"; then
        fail "wharf's log shows no panic" "$(grep -m1 'panicked' "$LOGS/wharf.err")"
    else
        pass "wharf's log shows no panic"
    fi
}

# ---- many clients, one upstream fetch -------------------------------------------------------

# The layer digests of REPO:TAG, largest first.
layer_digests() { jq -r '.layers | sort_by(-.size) | .[].digest' "$(manifest_file "$1")"; }

test_fan_in() {
    local blob n=8 i ok=0 mark d=$WORK/fanin pids=()
    mkdir -p "$d"
    blob=$(layer_digests library/e2e-fanin | sed -n 1p)
    local url=$WHARF_URL/v2/library/e2e-fanin/blobs/$blob
    local miss0 coalesced0 hit0
    miss0=$(wmetric wharf_cache_results_total kind=blob result=miss)
    coalesced0=$(wmetric wharf_cache_results_total kind=blob result=coalesced)
    hit0=$(wmetric wharf_cache_results_total kind=blob result=hit)
    mark=$(upstream_mark)
    for ((i = 0; i < n; i++)); do
        start_bg "fanin-$i" curl -sS --max-time 30 -o "$d/$i" "$url"
        pids+=("$STARTED_PID")
    done
    for i in "${pids[@]}"; do wait_pid "$i" || true; done
    for ((i = 0; i < n; i++)); do
        [[ -f $d/$i && $(digest_of_stdin <"$d/$i") == "$blob" ]] && ok=$((ok + 1))
    done
    expect_eq "fan-in: $n concurrent GETs of one uncached blob all get its exact bytes" "$n" "$ok"
    log_barrier "fan-in" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    expect_eq "fan-in: the upstream sent that blob once" 1 "$(upstream_copies_since "$mark" "$blob")"
    info "fan-in cache results: miss +$(($(wmetric wharf_cache_results_total kind=blob result=miss) - miss0))," \
        "coalesced +$(($(wmetric wharf_cache_results_total kind=blob result=coalesced) - coalesced0))," \
        "hit +$(($(wmetric wharf_cache_results_total kind=blob result=hit) - hit0))"
}

# upstream_sent_whole MARK DIGEST SIZE — whether, after MARK, the upstream logged answers to
# GETs of DIGEST that carry at least its SIZE bytes (in one answer or in several ranged ones).
upstream_sent_whole() { (($(upstream_bytes_since "$1" "$2") >= $3)); }

# A client that hangs up does not cancel the fill: the upstream sends the whole blob once, and the
# next client is served without a second upstream fetch.
test_hang_up() {
    local blob size mark
    blob=$(layer_digests library/e2e-fanin | sed -n 2p)
    size=$(jq -r --arg d "$blob" '.layers[] | select(.digest == $d) | .size' "$(manifest_file library/e2e-fanin)")
    mark=$(upstream_mark)
    # Reads slowly and gives up after 0.3 s, long before the 24 MiB could arrive at 1 MiB/s.
    curl -s --limit-rate 1M --max-time 0.3 -o /dev/null "$WHARF_URL/v2/library/e2e-fanin/blobs/$blob" || true
    # Say whether the hang-up came before wharf had read the whole blob from the upstream (the
    # upstream logs a request once it has sent everything); a fast wharf may be done by then.
    if grep -q "$blob" < <(upstream_since "$mark"); then
        info "hang-up: wharf had already read the whole blob from the upstream when the client hung up"
    else
        info "hang-up: the client hung up before wharf had read the whole blob from the upstream"
    fi
    # The upstream logs a request when it has finished answering it, with the bytes it sent.
    if wait_until 30 upstream_sent_whole "$mark" "$blob" "$size"; then
        pass "hang-up: the fill went on and read the whole blob from the upstream"
    else
        fail "hang-up: the fill went on and read the whole blob from the upstream" \
            "$(upstream_since "$mark" | grep "$blob" || echo 'no upstream GET for the blob')"
    fi
    expect_eq "hang-up: the next GET gets the exact bytes" "200 $blob" \
        "$(http_get "$WHARF_URL/v2/library/e2e-fanin/blobs/$blob")"
    log_barrier "hang-up" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    expect_eq "hang-up: the upstream sent that blob once" 1 "$(upstream_copies_since "$mark" "$blob")"
}

# ---- timings (printed, not asserted) ---------------------------------------------------------

# timed_copy SRC_REF DEST_DIR — prints milliseconds, or "failed"
timed_copy() {
    local t0
    if budget_spent; then
        echo skipped
        return
    fi
    t0=$(now_ms)
    if timeout "$CLIENT_TIMEOUT" skopeo copy -q --src-tls-verify=false "$1" "dir:$2" >>"$LOGS/timings.log" 2>&1; then
        echo "$(($(now_ms) - t0))"
    else
        echo failed
    fi
}

# Peak resident memory of a process, in MiB (from the kernel's high-water mark).
peak_rss_mib() { awk '$1 == "VmHWM:" {printf "%d\n", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo '?'; }

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

measure_timings() {
    local size image=library/e2e-multi:$TAG t=$WORK/timings round port direct=() cold=() warm=() rss=()
    size=$(jq '[.layers[].size, .config.size] | add' "$(manifest_file library/e2e-multi)")
    for round in 1 2 3; do
        # A fresh wharf with an empty cache each round makes the cold pull really cold.
        port=${TIMING_PORTS[$((round - 1))]}
        start_wharf "wharf-timing-$round" "127.0.0.1:$port" "$WORK/cache-timing-$round"
        mkdir -p "$t/$round"
        direct+=("$(timed_copy "docker://$UP/$image" "$t/$round/direct")")
        cold+=("$(timed_copy "docker://127.0.0.1:$port/$image" "$t/$round/cold")")
        warm+=("$(timed_copy "docker://127.0.0.1:$port/$image" "$t/$round/warm")")
        rss+=("$(peak_rss_mib "${WHARF_PIDS[wharf-timing-$round]}")")
        stop_pid "${WHARF_PIDS[wharf-timing-$round]}"
    done
    info "timings in ms: skopeo copy of $image ($((size / 1024 / 1024)) MiB compressed, 4 layers) to dir:"
    info "  round   direct   wharf-cold   wharf-warm   wharf-peak-RSS-MiB"
    for round in 1 2 3; do
        printf '....  %7s %8s %12s %12s %20s\n' "$round" "${direct[round - 1]}" "${cold[round - 1]}" \
            "${warm[round - 1]}" "${rss[round - 1]}"
    done
    printf '....  %7s %8s %12s %12s %20s\n' median "$(median "${direct[@]}")" "$(median "${cold[@]}")" \
        "$(median "${warm[@]}")" "$(median "${rss[@]}")"
    # The numbers are not asserted, but every timed pull must have worked: a failed one would
    # otherwise be only a word in the table. (timed_copy runs in $(...), so it cannot count.)
    local i pulls=() pull missed=()
    for ((i = 0; i < 3; i++)); do
        pulls+=("round $((i + 1)) direct: ${direct[i]}" "round $((i + 1)) wharf-cold: ${cold[i]}"
            "round $((i + 1)) wharf-warm: ${warm[i]}")
    done
    for pull in "${pulls[@]}"; do
        [[ ${pull##*: } =~ ^[0-9]+$ ]] || missed+=("$pull")
    done
    if ((${#missed[@]} == 0)); then
        pass "timings: all 9 timed pulls succeeded"
    else
        local log_tail
        mapfile -t log_tail < <(tail -n 10 "$LOGS/timings.log" 2>/dev/null)
        fail "timings: all 9 timed pulls succeeded" "${missed[@]}" "${log_tail[@]}"
    fi
}

# ---- the upstream goes away ------------------------------------------------------------------

test_upstream_outage() {
    local ttl_url=http://127.0.0.1:$TTL_PORT stale0 d=$WORK/outage
    mkdir -p "$d"
    # A second wharf whose tags go stale after one second.
    start_wharf wharf-short-ttl "127.0.0.1:$TTL_PORT" "$WORK/cache-short-ttl" 1s
    check "outage: short-TTL wharf serves e2e-oci while the upstream is up" timeout "$CLIENT_TIMEOUT" \
        skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$TTL_PORT/library/e2e-oci:$TAG" "dir:$d/before"

    stop_pid "$UPSTREAM_PID"
    info "upstream registry stopped"
    sleep 1.5 # let the short TTL expire

    check "outage: wharf serves a cached image (fresh tag) with the upstream down" timeout "$CLIENT_TIMEOUT" \
        skopeo copy -q --src-tls-verify=false "docker://$WHARF/library/e2e-multi:$TAG" "dir:$d/fresh"
    expect_eq "outage: the cached image's digest matches" "${DIGEST[library/e2e-multi]}" "$(dir_digest "$d/fresh" 2>&1)"

    stale0=$(metric "$ttl_url" wharf_cache_results_total kind=manifest result=stale)
    check "outage: wharf serves an expired tag stale with the upstream down" timeout "$CLIENT_TIMEOUT" \
        skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$TTL_PORT/library/e2e-oci:$TAG" "dir:$d/stale"
    expect_eq "outage: the stale-served image's digest matches" "${DIGEST[library/e2e-oci]}" "$(dir_digest "$d/stale" 2>&1)"
    expect_cmp "outage: wharf counted the stale answer" \
        "$(($(metric "$ttl_url" wharf_cache_results_total kind=manifest result=stale) - stale0))" -gt 0
}
