# shellcheck shell=bash
# Cluster: three wharf nodes in front of the suite's upstream act as one mirror. skopeo and
# containerd pull one image through different nodes at once; each blob and the manifest must
# leave the upstream once for the whole cluster. Then one node is killed (-9) and a new image
# pulled through the two others: no pull fails, and each blob still leaves the upstream once.
# Sourced by run.sh, whose globals (WORK, UP, TAG, CTR, ...) it uses.

CLUSTER_NODES=(a b c)

# peers_toml "NAME..." "PORT..." — the [[cluster.peer]] list of nodes NAME on loopback PORT.
peers_toml() {
    local names ports i
    read -ra names <<<"$1"
    read -ra ports <<<"$2"
    for i in "${!names[@]}"; do
        printf '\n[[cluster.peer]]\nname = "%s"\nurl = "http://127.0.0.1:%s"\n' "${names[$i]}" "${ports[$i]}"
    done
}

# write_cluster_node_config NODE — the config of one node; the nodes listen on CLUSTER_PORTS.
write_cluster_node_config() {
    local node=$1 peers
    peers=$(peers_toml "${CLUSTER_NODES[*]}" "${CLUSTER_PORTS[*]}")
    local index
    for index in "${!CLUSTER_NODES[@]}"; do
        [[ ${CLUSTER_NODES[$index]} == "$node" ]] && break
    done
    cat >"$WORK/cluster-$node.toml" <<CONF
[server]
listen = "127.0.0.1:${CLUSTER_PORTS[$index]}"

[cache]
dir = "$WORK/cache-cluster-$node"

[[upstream]]
name = "docker.io"
url = "http://$UP"

[cluster]
node = "$node"
peer_token_file = "$WORK/cluster-token"
probe_interval = "500ms"
$peers
CONF
}

# cluster_sum METRIC [LABEL...] — the metric summed over the nodes still running.
cluster_sum() {
    local total=0 i value
    for i in "${!CLUSTER_NODES[@]}"; do
        kill -0 "${WHARF_PIDS[cluster-${CLUSTER_NODES[$i]}]}" 2>/dev/null || continue
        value=$(metric "http://127.0.0.1:${CLUSTER_PORTS[$i]}" "$@") || value=0
        total=$((total + ${value%.*}))
    done
    echo "$total"
}

# upstream_manifest_gets_since MARK REPO — manifest GETs of REPO the upstream answered.
upstream_manifest_gets_since() {
    upstream_since "$1" | grep -cE "\"GET /v2/$2/manifests/" || true
}

test_cluster() {
    head -c 32 /dev/urandom | base64 | tr -d '\n=' >"$WORK/cluster-token"
    chmod 600 "$WORK/cluster-token"
    local node i
    for node in "${CLUSTER_NODES[@]}"; do
        write_cluster_node_config "$node"
    done
    for i in "${!CLUSTER_NODES[@]}"; do
        launch_wharf "cluster-${CLUSTER_NODES[$i]}" "$WORK/cluster-${CLUSTER_NODES[$i]}.toml" \
            "http://127.0.0.1:${CLUSTER_PORTS[$i]}"
    done
    local a=127.0.0.1:${CLUSTER_PORTS[0]} b=127.0.0.1:${CLUSTER_PORTS[1]} c=127.0.0.1:${CLUSTER_PORTS[2]}
    check "cluster: build and push library/e2e-cluster" seed library/e2e-cluster oci linux/amd64 6M,3M,1M
    check "cluster: build and push library/e2e-cluster2" seed library/e2e-cluster2 oci linux/amd64 5M,2M
    local manifest=$WORK/manifests/e2e-cluster.json
    skopeo inspect --raw --tls-verify=false "docker://$UP/library/e2e-cluster:$TAG" >"$manifest" || true
    local blobs
    blobs=$(image_blobs "$manifest" | wc -l)

    local mark
    mark=$(upstream_mark)
    # Three clients at once, each through another node.
    local pids=()
    skopeo copy -q --src-tls-verify=false "docker://$b/library/e2e-cluster:$TAG" "dir:$WORK/cluster-b" &
    pids+=($!)
    skopeo copy -q --src-tls-verify=false "docker://$c/library/e2e-cluster:$TAG" "dir:$WORK/cluster-c" &
    pids+=($!)
    if ((${#CTR[@]} > 0)); then
        render_hosts "$WORK/containerd/hosts-cluster" "http://$a"
        timeout "$CLIENT_TIMEOUT" "${CTR[@]}" images pull --hosts-dir "$WORK/containerd/hosts-cluster" \
            --plain-http --snapshotter native "docker.io/library/e2e-cluster:$TAG" >/dev/null &
        pids+=($!)
    fi
    local pid failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
    expect_eq "cluster: every client's pull through its node succeeds" 0 "$failed"
    log_barrier "cluster: upstream" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    expect_eq "cluster: each blob left the upstream once for the three nodes" "$blobs 1" \
        "$(blob_fetches "$UPSTREAM_ACCESS_LOG" "$mark" "$UPSTREAM_DATA")"
    expect_eq "cluster: the manifest was fetched from the upstream once (tags are HEADs per node)" 1 \
        "$(upstream_manifest_gets_since "$mark" library/e2e-cluster)"
    expect_eq "cluster: only wharf reached the upstream" "" "$(bypassers_since "$mark")"
    expect_cmp "cluster: nodes fetched from their owner peers" \
        "$(cluster_sum wharf_peer_fetches_total result=ok)" -ge 1
    expect_eq "cluster: no node passed a peer over" 0 "$(cluster_sum wharf_peer_fallbacks_total)"

    # Node a dies; the two others serve a new image, each blob still fetched once.
    kill -KILL "${WHARF_PIDS[cluster-a]}" 2>/dev/null || true
    wait "${WHARF_PIDS[cluster-a]}" 2>/dev/null || true
    local manifest2=$WORK/manifests/e2e-cluster2.json
    skopeo inspect --raw --tls-verify=false "docker://$UP/library/e2e-cluster2:$TAG" >"$manifest2" || true
    local blobs2
    blobs2=$(image_blobs "$manifest2" | wc -l)
    mark=$(upstream_mark)
    pids=()
    skopeo copy -q --src-tls-verify=false "docker://$b/library/e2e-cluster2:$TAG" "dir:$WORK/cluster2-b" &
    pids+=($!)
    skopeo copy -q --src-tls-verify=false "docker://$c/library/e2e-cluster2:$TAG" "dir:$WORK/cluster2-c" &
    pids+=($!)
    failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
    expect_eq "cluster: with node a killed, pulls through b and c succeed" 0 "$failed"
    log_barrier "cluster: upstream, node a dead" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    expect_eq "cluster: with node a dead, each blob still left the upstream once" "$blobs2 1" \
        "$(blob_fetches "$UPSTREAM_ACCESS_LOG" "$mark" "$UPSTREAM_DATA")"
    expect_eq "cluster: b and c show a down" "0 0" \
        "$(metric "http://$b" wharf_peer_up peer=a) $(metric "http://$c" wharf_peer_up peer=a)"
    check "cluster: /readyz of b shows a down and b as this node" bash -c "
        curl -fsS --max-time 5 'http://$b/readyz' |
            jq -e '[.cluster[] | select(.name == \"a\" and .up == false)] | length == 1' >/dev/null &&
        curl -fsS --max-time 5 'http://$b/readyz' | jq -e '.cluster[1].this_node' >/dev/null"
    for node in b c; do stop_pid "${WHARF_PIDS[cluster-$node]}"; done
}
