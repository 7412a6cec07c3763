# shellcheck shell=bash
# The datacenter: three wharf nodes in a cluster, on a shared bucket (three Garage nodes,
# replication factor 3). dockerd, containerd and skopeo pull a multi-layer and a multi-arch
# image at once, each through another node: each blob leaves the upstream once for the whole
# datacenter, and lands in the bucket. Then one Garage node is stopped, and the wharf that owns
# a large layer is killed (-9) while dockerd pulls it through another node: the pull succeeds,
# the rest of the layer coming from the upstream from where the owner stopped. Sourced by
# run.sh, whose globals (WORK, UP, TAG, CTR, DOCKER_CLI, ...) it uses.

DC_NODES=(dc-a dc-b dc-c)

# write_dc_node_config INDEX — the config of node DC_NODES[INDEX], on DC_PORTS[INDEX]. The
# upstream is capped at 16 MiB/s, so that a large layer takes seconds to fill: long enough to
# kill its owner in the middle.
write_dc_node_config() {
    local index=$1 node=${DC_NODES[$1]} peers
    peers=$(peers_toml "${DC_NODES[*]}" "${DC_PORTS[*]}")
    cat >"$WORK/$node.toml" <<CONF
[server]
listen = "127.0.0.1:${DC_PORTS[$index]}"

[cache]
dir = "$WORK/cache-$node"

$(shared_toml $((index + 1)))

[[upstream]]
name = "docker.io"
url = "http://$UP"
max_bandwidth = "16MiB"

[cluster]
node = "$node"
peer_token_file = "$WORK/dc-token"
probe_interval = "500ms"
$peers
CONF
}

# dc_owner DIGEST — the node that owns DIGEST: the highest rendezvous score, the first 8 bytes
# of SHA-256 over the node's name, a zero byte and the digest (as wharf's ring computes it).
dc_owner() {
    python3 - "$1" "${DC_NODES[@]}" <<'EOF'
import hashlib, sys
digest, nodes = sys.argv[1], sys.argv[2:]
score = lambda n: int.from_bytes(hashlib.sha256(n.encode() + b"\0" + digest.encode()).digest()[:8], "big")
print(max(nodes, key=score))
EOF
}

# dc_index NODE — NODE's index in DC_NODES.
dc_index() {
    local i
    for i in "${!DC_NODES[@]}"; do
        if [[ ${DC_NODES[$i]} == "$1" ]]; then echo "$i"; fi
    done
}

# platform_manifest REPO — the linux/amd64 manifest of REPO:TAG's index, as the upstream has it.
platform_manifest() {
    local digest
    digest=$(skopeo inspect --raw --tls-verify=false "docker://$UP/$1:$TAG" |
        jq -r '.manifests[] | select(.platform.architecture == "amd64") | .digest')
    skopeo inspect --raw --tls-verify=false "docker://$UP/$1@$digest"
}

test_datacenter() {
    GARAGE_NAME=garage-dc
    if start_garage >"$LOGS/$GARAGE_NAME-setup.log" 2>&1; then
        pass "datacenter: three Garage nodes start, with a bucket and a key"
    else
        fail "datacenter: three Garage nodes start, with a bucket and a key" \
            "$(tail -n 5 "$LOGS/$GARAGE_NAME-setup.log")"
        return 0
    fi
    write_garage_key_files
    head -c 32 /dev/urandom | base64 | tr -d '\n=' >"$WORK/dc-token"
    chmod 600 "$WORK/dc-token"
    check "datacenter: build and push library/e2e-dc (5 layers)" \
        seed library/e2e-dc v2s2 linux/amd64 8M,6M,4M,2M,64K
    check "datacenter: build and push library/e2e-dc-arch (linux/amd64 + linux/arm64)" \
        seed library/e2e-dc-arch oci "linux/amd64 linux/arm64/v8" 3M,1M
    check "datacenter: build and push library/e2e-dc-big (a 64 MiB layer)" \
        seed library/e2e-dc-big v2s2 linux/amd64 64M
    local m=$WORK/manifests big_layer
    skopeo inspect --raw --tls-verify=false "docker://$UP/library/e2e-dc:$TAG" >"$m/e2e-dc.json" || true
    platform_manifest library/e2e-dc-arch >"$m/e2e-dc-arch-amd64.json" || true
    skopeo inspect --raw --tls-verify=false "docker://$UP/library/e2e-dc-big:$TAG" >"$m/e2e-dc-big.json" || true
    skopeo inspect --raw --tls-verify=false "docker://$UP/library/e2e-dc-arch:$TAG" >"$m/e2e-dc-arch.json" || true
    big_layer=$(jq -r '.layers[0].digest' "$m/e2e-dc-big.json")

    # dockerd pulls through a node that does not own the large layer; containerd and skopeo
    # through the two others.
    local owner owner_index via_docker via_ctr via_skopeo i
    owner=$(dc_owner "$big_layer")
    owner_index=$(dc_index "$owner")
    via_docker=$(((owner_index + 1) % 3))
    via_ctr=$(((owner_index + 2) % 3))
    via_skopeo=$owner_index
    local url=()
    for i in "${!DC_NODES[@]}"; do
        write_dc_node_config "$i"
        url[i]=127.0.0.1:${DC_PORTS[$i]}
        launch_wharf "${DC_NODES[$i]}" "$WORK/${DC_NODES[$i]}.toml" "http://${url[$i]}"
    done
    start_dockerd "http://${url[$via_docker]}" || return 0
    render_hosts "$WORK/containerd/hosts-dc" "http://${url[$via_ctr]}"

    local blobs mark pids=() image failed=0 pid
    blobs=$(cat <(image_blobs "$m/e2e-dc.json") <(image_blobs "$m/e2e-dc-arch-amd64.json") | sort -u | wc -l)
    mark=$(upstream_mark)
    for image in e2e-dc e2e-dc-arch; do
        timeout "$CLIENT_TIMEOUT" "${DOCKER_CLI[@]}" pull "$image:$TAG" >/dev/null &
        pids+=($!)
        if ((${#CTR[@]} > 0)); then
            timeout "$CLIENT_TIMEOUT" "${CTR[@]}" images pull --hosts-dir "$WORK/containerd/hosts-dc" \
                --plain-http --snapshotter native "docker.io/library/$image:$TAG" >/dev/null &
            pids+=($!)
        fi
        skopeo copy -q --src-tls-verify=false "docker://${url[$via_skopeo]}/library/$image:$TAG" \
            "dir:$WORK/dc-$image" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
    expect_eq "datacenter: dockerd, containerd and skopeo, each through its own node, all succeed" \
        0 "$failed"
    expect_has "datacenter: dockerd: e2e-dc-arch RepoDigest matches upstream index" \
        "e2e-dc-arch@sha256:$(sha256sum <"$m/e2e-dc-arch.json" | cut -d' ' -f1)" \
        "$(docker_repo_digests "e2e-dc-arch:$TAG" 2>&1)"
    log_barrier "datacenter: upstream" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    expect_eq "datacenter: each blob left the upstream once for the whole datacenter" "$blobs 1" \
        "$(blob_fetches "$UPSTREAM_ACCESS_LOG" "$mark" "$UPSTREAM_DATA")"
    expect_eq "datacenter: only wharf reached the upstream" "" "$(bypassers_since "$mark")"
    check "datacenter: the owners put every blob in the bucket" wait_until 30 bash -c "
        total=0
        for u in ${url[*]}; do
            n=\$(curl -fsS \"http://\$u/metrics\" | awk '/^wharf_shared_requests_total\{.*op=\"put\".*result=\"uploaded\"/ {n += \$2} END {print n + 0}')
            total=\$((total + n))
        done
        [[ \$total -ge $blobs ]]"

    # A Garage node goes away, and the owner of the large layer dies while dockerd pulls it.
    stop_pid "${GARAGE_PIDS[3]}"
    mark=$(upstream_mark)
    timeout "$CLIENT_TIMEOUT" "${DOCKER_CLI[@]}" pull "e2e-dc-big:$TAG" >"$LOGS/dc-big-pull.log" 2>&1 &
    pid=$!
    if wait_until 60 bash -c "curl -fsS 'http://${url[$owner_index]}/metrics' | grep -qE '^wharf_fills_in_flight [1-9]'"; then
        kill -KILL "${WHARF_PIDS[$owner]}" 2>/dev/null || true
        wait "${WHARF_PIDS[$owner]}" 2>/dev/null || true
        pass "datacenter: the owner of the large layer ($owner) is killed in the middle of its fill"
    else
        fail "datacenter: the owner of the large layer ($owner) is killed in the middle of its fill" \
            "its fill was never seen running"
    fi
    failed=0
    wait "$pid" || failed=1
    expect_eq "datacenter: with a Garage node stopped and the owner killed, dockerd's pull succeeds" \
        0 "$failed"
    expect_has "datacenter: dockerd: e2e-dc-big RepoDigest matches upstream" \
        "e2e-dc-big@sha256:$(sha256sum <"$m/e2e-dc-big.json" | cut -d' ' -f1)" \
        "$(docker_repo_digests "e2e-dc-big:$TAG" 2>&1)"
    expect_cmp "datacenter: the node dockerd pulled through passed the dead owner over" \
        "$(metric "http://${url[$via_docker]}" wharf_peer_fallbacks_total | cut -d. -f1)" -ge 1
    log_barrier "datacenter: upstream, owner killed" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    expect_cmp "datacenter: the large layer left the upstream at most twice (the rest was resumed)" \
        "$(upstream_copies_since "$mark" "$big_layer")" -le 2
    for i in "${!DC_NODES[@]}"; do
        ((i == owner_index)) || stop_pid "${WHARF_PIDS[${DC_NODES[$i]}]}"
    done
    for i in 1 2; do stop_pid "${GARAGE_PIDS[$i]}"; done
}
