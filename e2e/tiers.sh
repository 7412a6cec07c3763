# shellcheck shell=bash
# Tiers: an edge wharf whose upstream is a regional wharf (pass_ns), which mirrors two
# registries: the suite's upstream as docker.io, and a second CNCF distribution as
# registry.two.test. dockerd and containerd pull through the edge; each blob must be fetched
# from its registry exactly once across both tiers, and a second edge must cost the registries
# nothing. Sourced by run.sh, whose globals (WORK, UP, DIGEST, CLIENTS, ...) it uses.

UP2=127.0.0.1:$UP2_PORT
REGIONAL=127.0.0.1:$REGIONAL_PORT
EDGE=127.0.0.1:$EDGE_PORT
EDGE2=127.0.0.1:$EDGE2_PORT
TWO_NAME=registry.two.test
UP2_DATA=$WORK/registry2-data

start_second_registry() {
    registry_config "$WORK/registry2.yml" "$UP2" "$UP2_DATA"
    start_bg upstream2 /usr/bin/docker-registry serve "$WORK/registry2.yml"
    wait_until 30 curl -fsS --max-time 2 "http://$UP2/v2/"
}

# blob_fetches LOG MARK DATA — "DISTINCT MOST": how many distinct blobs the registry whose
# access log is LOG (and storage DATA) sent after line MARK, and the most times the bytes of any
# one of them were sent (see blob_copies: bytes, not requests).
blob_fetches() {
    blob_copies "$1" "$2" "$3" |
        awk '{n++; if ($1 == "?") q = 1; else if ($1 + 0 > m) m = $1 + 0} END {print n + 0, q ? "?" : m + 0}'
}

# The digests of every blob (config and layers) of a single-platform image's manifest file.
image_blobs() { jq -r '.config.digest, .layers[].digest' "$1"; }

# write_tier_config FILE LISTEN CACHE DOCKER_IO_URL TWO_URL PASS_NS
write_tier_config() {
    cat >"$1" <<EOF
[server]
listen = "$2"

[cache]
dir = "$3"

[[upstream]]
name = "docker.io"
url = "$4"
pass_ns = $6

[[upstream]]
name = "$TWO_NAME"
url = "$5"
pass_ns = $6
EOF
}

test_tiers() {
    # Not `check`, which records the outcome and always returns 0: nothing below can run
    # without this registry.
    if start_second_registry; then
        pass "tiers: a second registry ($TWO_NAME) starts"
    else
        local lines
        mapfile -t lines < <(tail -n 5 "$LOGS/upstream2.err")
        fail "tiers: a second registry ($TWO_NAME) starts" "${lines[@]}"
        return 0
    fi
    local two_log=$LOGS/upstream2.out
    check "tiers: build and push team/e2e-two to $TWO_NAME" bash -c "
        python3 '$HERE/mkimage.py' '$WORK/layouts/two' '$TAG' --name team/e2e-two --layers 3M,1M --platform linux/amd64 &&
        skopeo copy -q --format v2s2 --dest-tls-verify=false 'oci:$WORK/layouts/two:$TAG' 'docker://$UP2/team/e2e-two:$TAG'"
    local two_manifest=$WORK/manifests/team_e2e-two.json
    skopeo inspect --raw --tls-verify=false "docker://$UP2/team/e2e-two:$TAG" >"$two_manifest" || true
    local two_digest
    two_digest=$(digest_of_stdin <"$two_manifest")

    write_tier_config "$WORK/regional.toml" "$REGIONAL" "$WORK/cache-regional" \
        "http://$UP" "http://$UP2" false
    launch_wharf regional "$WORK/regional.toml" "http://$REGIONAL"
    write_tier_config "$WORK/edge.toml" "$EDGE" "$WORK/cache-edge" \
        "http://$REGIONAL" "http://$REGIONAL" true
    launch_wharf edge "$WORK/edge.toml" "http://$EDGE"

    local mark1 mark2
    mark1=$(upstream_mark)
    mark2=$(wc -l <"$two_log")
    read_metrics_of "http://$EDGE"

    # dockerd (Docker Hub names, no ns) through the edge.
    if start_dockerd "http://$EDGE"; then
        "${DOCKER_CLI[@]}" rmi -f "e2e-multi:$TAG" >/dev/null 2>&1 || true
        pull_through "tiers: dockerd pull e2e-multi through edge → regional" - \
            "${DOCKER_CLI[@]}" pull "e2e-multi:$TAG"
        expect_has "tiers: dockerd: e2e-multi RepoDigest matches upstream" \
            "e2e-multi@${DIGEST[library/e2e-multi]}" "$(docker_repo_digests "e2e-multi:$TAG" 2>&1)"
    fi
    # containerd (?ns=registry.two.test) through the edge: the shipped _default hosts.toml.
    if ((${#CTR[@]} > 0)); then
        render_hosts "$WORK/containerd/hosts-edge" "http://$EDGE"
        local ref=$TWO_NAME/team/e2e-two:$TAG
        pull_through "tiers: ctr pull $ref through edge → regional" "$TWO_NAME" \
            "${CTR[@]}" images pull --hosts-dir "$WORK/containerd/hosts-edge" --plain-http \
            --snapshotter native "$ref"
        expect_eq "tiers: ctr: e2e-two digest matches $TWO_NAME" "$two_digest" "$(ctr_digest "$ref")"
    fi
    log_barrier "tiers: docker.io registry" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    log_barrier "tiers: $TWO_NAME" "$two_log" "http://$UP2" || true
    local multi_blobs two_blobs
    multi_blobs=$(image_blobs "$(manifest_file library/e2e-multi)" | wc -l)
    two_blobs=$(image_blobs "$two_manifest" | wc -l)
    # dockerd skips layers it still has, so the first count may be lower; never higher.
    local most
    read -r _ most <<<"$(blob_fetches "$UPSTREAM_ACCESS_LOG" "$mark1" "$UPSTREAM_DATA")"
    expect_cmp "tiers: docker.io registry sent no blob twice" "$most" -le 1
    expect_eq "tiers: $TWO_NAME sent each e2e-two blob once" "$two_blobs 1" \
        "$(blob_fetches "$two_log" "$mark2" "$UP2_DATA")"
    expect_eq "tiers: only wharf reached $TWO_NAME" "" "$(bypassers "$two_log" "$mark2")"
    expect_cmp "tiers: regional fetched under the name the edge passed on (?ns=$TWO_NAME)" \
        "$(metric "http://$REGIONAL" wharf_upstream_requests_total upstream="$TWO_NAME" kind=blob)" -ge "$two_blobs"

    # A second edge with an empty cache: everything comes from the regional tier.
    write_tier_config "$WORK/edge2.toml" "$EDGE2" "$WORK/cache-edge2" \
        "http://$REGIONAL" "http://$REGIONAL" true
    launch_wharf edge2 "$WORK/edge2.toml" "http://$EDGE2"
    check "tiers: skopeo copies both images through a second edge" bash -c "
        skopeo copy -q --src-tls-verify=false 'docker://$EDGE2/library/e2e-multi:$TAG' 'dir:$WORK/edge2-multi' &&
        skopeo copy -q --src-tls-verify=false 'docker://$EDGE2/$TWO_NAME/team/e2e-two:$TAG' 'dir:$WORK/edge2-two'"
    log_barrier "tiers: second edge, docker.io registry" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    log_barrier "tiers: second edge, $TWO_NAME" "$two_log" "http://$UP2" || true
    expect_eq "tiers: across both edges, each blob left its registry exactly once" \
        "$multi_blobs 1 $two_blobs 1" \
        "$(blob_fetches "$UPSTREAM_ACCESS_LOG" "$mark1" "$UPSTREAM_DATA") $(blob_fetches "$two_log" "$mark2" "$UP2_DATA")"
    read_metrics_of "$WHARF_URL"
}
