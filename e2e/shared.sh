# shellcheck shell=bash
# The shared tier: Garage (an S3-compatible object store) below two wharfs that share nothing
# else. skopeo copies an image through the first, which puts each blob in the bucket; then
# through the second, with an empty disk, which fills from the bucket: each blob leaves the
# upstream once. Sourced by run.sh, whose globals (WORK, UP, TAG, ...) it uses.

GARAGE=${GARAGE:-$(command -v garage || true)}

# garage_cli ARGS... — the Garage CLI against the suite's Garage.
garage_cli() { "$GARAGE" -c "$WORK/garage.toml" "$@"; }

start_garage() {
    [[ -n $GARAGE ]] || { echo "garage is not installed (cargo install --locked garage)"; return 1; }
    mkdir -p "$WORK/garage-meta" "$WORK/garage-data"
    cat >"$WORK/garage.toml" <<CONF
metadata_dir = "$WORK/garage-meta"
data_dir = "$WORK/garage-data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_public_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$GARAGE_S3_PORT"
root_domain = ".s3.garage.localhost"
CONF
    start_bg garage "$GARAGE" -c "$WORK/garage.toml" server
    GARAGE_PID=$STARTED_PID
    wait_until 30 garage_cli status >/dev/null || return 1
    local node
    node=$(garage_cli status 2>/dev/null | grep -oE '^[0-9a-f]{16}' | head -n 1)
    [[ -n $node ]] || return 1
    garage_cli layout assign -z dc1 -c 1G "$node" >/dev/null &&
        garage_cli layout apply --version 1 >/dev/null &&
        garage_cli bucket create wharf >/dev/null &&
        garage_cli key create wharf-key >"$WORK/garage-key.txt" &&
        garage_cli bucket allow --read --write --owner wharf --key wharf-key >/dev/null
}

# write_shared_node_config NAME PORT — a wharf in front of the suite's upstream, on the bucket.
write_shared_node_config() {
    local key_id secret
    key_id=$(awk '/Key ID:/ {print $NF; exit}' "$WORK/garage-key.txt")
    secret=$(awk '/Secret key:/ {print $NF; exit}' "$WORK/garage-key.txt")
    printf '%s\n' "$key_id" >"$WORK/garage-access-key"
    printf '%s\n' "$secret" >"$WORK/garage-secret"
    chmod 600 "$WORK/garage-secret"
    cat >"$WORK/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$2"

[cache]
dir = "$WORK/cache-$1"

[cache.shared]
endpoint = "http://127.0.0.1:$GARAGE_S3_PORT"
bucket = "wharf"
region = "garage"
access_key_file = "$WORK/garage-access-key"
secret_key_file = "$WORK/garage-secret"

[[upstream]]
name = "docker.io"
url = "http://$UP"
CONF
}

test_shared() {
    if start_garage >"$LOGS/garage-setup.log" 2>&1; then
        pass "shared: Garage starts with a bucket and a key"
    else
        local lines
        mapfile -t lines < <(tail -n 5 "$LOGS/garage-setup.log" "$LOGS/garage.err" 2>/dev/null)
        fail "shared: Garage starts with a bucket and a key" "${lines[@]}"
        return 0
    fi
    local one=127.0.0.1:$SHARED1_PORT two=127.0.0.1:$SHARED2_PORT
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
    stop_pid "${WHARF_PIDS[shared1]}"
    stop_pid "${WHARF_PIDS[shared2]}"
    stop_pid "$GARAGE_PID"
}
