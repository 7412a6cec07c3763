# shellcheck shell=bash
# The shared tier: Garage (an S3-compatible object store, three nodes, replication factor 3)
# below wharfs that share nothing else. skopeo copies an image through the first wharf, which
# puts each blob in the bucket; then through the second, with an empty disk, which fills from
# the bucket; then, with a Garage node stopped, through a third: each blob leaves the upstream
# once. Sourced by run.sh, whose globals (WORK, UP, TAG, ...) it uses.

GARAGE=${GARAGE:-$(command -v garage || true)}
GARAGE_NODES=(1 2 3)
# Names the files and logs of the Garage cluster the running phase starts.
GARAGE_NAME=garage

# garage_cli N ARGS... — the Garage CLI against the suite's Garage node N.
garage_cli() {
    local n=$1
    shift
    "$GARAGE" -c "$WORK/$GARAGE_NAME-$n.toml" "$@"
}

# start_garage — three Garage nodes on loopback, replication factor 3, one bucket and one key;
# their files and logs named after GARAGE_NAME.
start_garage() {
    declare -gA GARAGE_S3=() GARAGE_RPC=() GARAGE_PIDS=()
    [[ -n $GARAGE ]] || { echo "garage is not installed (cargo install --locked garage)"; return 1; }
    local ports secret n
    read -ra ports <<<"$(free_ports 6)"
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    for n in "${GARAGE_NODES[@]}"; do
        GARAGE_S3[$n]=${ports[$((n - 1))]}
        GARAGE_RPC[$n]=${ports[$((n + 2))]}
        mkdir -p "$WORK/$GARAGE_NAME-$n/meta" "$WORK/$GARAGE_NAME-$n/data"
        cat >"$WORK/$GARAGE_NAME-$n.toml" <<CONF
metadata_dir = "$WORK/$GARAGE_NAME-$n/meta"
data_dir = "$WORK/$GARAGE_NAME-$n/data"
db_engine = "lmdb"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:${GARAGE_RPC[$n]}"
rpc_public_addr = "127.0.0.1:${GARAGE_RPC[$n]}"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:${GARAGE_S3[$n]}"
root_domain = ".s3.garage.localhost"
CONF
        start_bg "$GARAGE_NAME-$n" "$GARAGE" -c "$WORK/$GARAGE_NAME-$n.toml" server
        GARAGE_PIDS[$n]=$STARTED_PID
    done
    for n in "${GARAGE_NODES[@]}"; do
        wait_until 30 garage_cli "$n" status >/dev/null || return 1
    done
    for n in 2 3; do
        garage_cli 1 node connect "$(garage_cli "$n" node id -q)" >/dev/null || return 1
    done
    wait_until 30 bash -c "[[ \$('$GARAGE' -c '$WORK/$GARAGE_NAME-1.toml' status 2>/dev/null | grep -cE '^[0-9a-f]{16}') -eq 3 ]]" || return 1
    local node
    for node in $(garage_cli 1 status 2>/dev/null | grep -oE '^[0-9a-f]{16}'); do
        garage_cli 1 layout assign -z dc1 -c 1G "$node" >/dev/null || return 1
    done
    garage_cli 1 layout apply --version 1 >/dev/null &&
        garage_cli 1 bucket create wharf >/dev/null &&
        garage_cli 1 key create wharf-key >"$WORK/$GARAGE_NAME-key.txt" &&
        garage_cli 1 bucket allow --read --write --owner wharf --key wharf-key >/dev/null
}

# write_garage_key_files — the bucket's key, as wharf reads it: one file per half.
write_garage_key_files() {
    local key_id secret
    key_id=$(awk '/Key ID:/ {print $NF; exit}' "$WORK/$GARAGE_NAME-key.txt")
    secret=$(awk '/Secret key:/ {print $NF; exit}' "$WORK/$GARAGE_NAME-key.txt")
    printf '%s\n' "$key_id" >"$WORK/$GARAGE_NAME-access-key"
    printf '%s\n' "$secret" >"$WORK/$GARAGE_NAME-secret"
    chmod 600 "$WORK/$GARAGE_NAME-secret"
}

# shared_toml N — the [cache.shared] section of a wharf on the bucket, through Garage node N.
shared_toml() {
    cat <<CONF
[cache.shared]
endpoint = "http://127.0.0.1:${GARAGE_S3[$1]}"
bucket = "wharf"
region = "garage"
access_key_file = "$WORK/$GARAGE_NAME-access-key"
secret_key_file = "$WORK/$GARAGE_NAME-secret"
CONF
}

# write_shared_node_config NAME PORT — a wharf in front of the suite's upstream, on the bucket.
write_shared_node_config() {
    cat >"$WORK/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$2"

[cache]
dir = "$WORK/cache-$1"

$(shared_toml 1)

[[upstream]]
name = "docker.io"
url = "http://$UP"
CONF
}

test_shared() {
    GARAGE_NAME=garage
    if start_garage >"$LOGS/garage-setup.log" 2>&1; then
        pass "shared: three Garage nodes start, with a bucket and a key"
    else
        local lines
        mapfile -t lines < <(tail -n 5 "$LOGS/garage-setup.log" "$LOGS/garage-1.err" 2>/dev/null)
        fail "shared: three Garage nodes start, with a bucket and a key" "${lines[@]}"
        return 0
    fi
    write_garage_key_files
    local one=127.0.0.1:$SHARED1_PORT two=127.0.0.1:$SHARED2_PORT three=127.0.0.1:$SHARED3_PORT
    write_shared_node_config shared1 "$SHARED1_PORT"
    write_shared_node_config shared2 "$SHARED2_PORT"
    launch_wharf shared1 "$WORK/shared1.toml" "http://$one"
    launch_wharf shared2 "$WORK/shared2.toml" "http://$two"
    check "shared: build and push library/e2e-shared" seed library/e2e-shared oci linux/amd64 12M,3M
    local manifest=$WORK/manifests/e2e-shared.json blobs mark
    skopeo inspect --raw --tls-verify=false "docker://$UP/library/e2e-shared:$TAG" >"$manifest" || true
    blobs=$(image_blobs "$manifest" | wc -l)
    mark=$(upstream_mark)

    check "shared: skopeo copies e2e-shared through the first wharf" \
        skopeo copy -q --src-tls-verify=false "docker://$one/library/e2e-shared:$TAG" "dir:$WORK/shared-one"
    check "shared: the first wharf put every blob in the bucket" wait_until 30 bash -c "
        [[ \$(curl -fsS 'http://$one/metrics' | awk '/^wharf_shared_requests_total\{.*op=\"put\".*result=\"uploaded\"/ {n += \$2} END {print n + 0}') -ge $blobs ]]"
    check "shared: skopeo copies e2e-shared through the second wharf (empty disk)" \
        skopeo copy -q --src-tls-verify=false "docker://$two/library/e2e-shared:$TAG" "dir:$WORK/shared-two"
    log_barrier "shared: upstream" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    expect_eq "shared: each blob left the upstream once for both wharfs" "$blobs 1" \
        "$(blob_fetches "$UPSTREAM_ACCESS_LOG" "$mark" "$UPSTREAM_DATA")"
    expect_eq "shared: the second wharf filled every blob from the bucket" "$blobs" \
        "$(metric "http://$two" wharf_shared_requests_total op=get result=found)"
    check "shared: both copies are byte for byte the same" diff -r "$WORK/shared-one" "$WORK/shared-two"

    # One Garage node goes away; the bucket still answers (two of three replicas).
    stop_pid "${GARAGE_PIDS[3]}"
    write_shared_node_config shared3 "$SHARED3_PORT"
    launch_wharf shared3 "$WORK/shared3.toml" "http://$three"
    check "shared: with a Garage node stopped, skopeo copies e2e-shared through a third wharf" \
        skopeo copy -q --src-tls-verify=false "docker://$three/library/e2e-shared:$TAG" "dir:$WORK/shared-three"
    log_barrier "shared: upstream, a Garage node down" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    expect_eq "shared: with a Garage node down, every blob came from the bucket" "$blobs" \
        "$(metric "http://$three" wharf_shared_requests_total op=get result=found)"
    expect_eq "shared: and each blob still left the upstream once" "$blobs 1" \
        "$(blob_fetches "$UPSTREAM_ACCESS_LOG" "$mark" "$UPSTREAM_DATA")"
    check "shared: 'wharf cache stats --shared' lists every blob in Garage" \
        bash -c "'$WORK/bin/wharf' cache stats --shared --config '$WORK/shared1.toml' | grep -Eq '^blobs +$blobs objects'"
    check "shared: 'wharf cache verify --shared' re-hashes them all" \
        bash -c "'$WORK/bin/wharf' cache verify --shared --config '$WORK/shared1.toml' | grep -q 'checked $blobs objects.*0 damaged'"
    check "shared: 'wharf cache prune --shared' spares blobs read minutes ago, even past --max-size" \
        bash -c "'$WORK/bin/wharf' cache prune --shared --config '$WORK/shared1.toml' --max-size 1 | grep -q '^spared  $blobs objects'"
    local name
    for name in shared1 shared2 shared3; do stop_pid "${WHARF_PIDS[$name]}"; done
    for name in 1 2; do stop_pid "${GARAGE_PIDS[$name]}"; done
}
