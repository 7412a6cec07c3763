# shellcheck shell=bash
# Pulls through wharf with real clients: skopeo, dockerd, containerd (ctr) and podman, in the URL
# shape each one uses. Sourced by run.sh, whose globals (WORK, UP, WHARF, DIGEST, ...) it uses.

# ---- one pull through wharf, with the checks that it really went through wharf ---------------

# pull_through LABEL UPSTREAM_NAME CMD... — run the pull, then check that wharf answered manifests
# for it, that nothing but wharf reached the upstream meanwhile, and, when UPSTREAM_NAME is not
# "-", that wharf fetched from the upstream under that configured name (which proves it resolved
# the URL shape — ?ns= or path prefix — to the right upstream).
pull_through() {
    local label=$1 upstream_name=$2
    shift 2
    local manifests_before mark upstream_before=0
    manifests_before=$(wmetric wharf_http_requests_total route=manifest status=200)
    if [[ $upstream_name != - ]]; then
        upstream_before=$(wmetric wharf_upstream_requests_total upstream="$upstream_name")
    fi
    mark=$(upstream_mark)

    check "$label: pull succeeds" timeout "$CLIENT_TIMEOUT" "$@"
    log_barrier "$label" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true

    expect_cmp "$label: wharf answered its manifest requests (200)" \
        "$(($(wmetric wharf_http_requests_total route=manifest status=200) - manifests_before))" -gt 0
    local bypass
    bypass=$(bypassers_since "$mark")
    if [[ -z $bypass ]]; then
        pass "$label: no request went around wharf to the upstream"
    else
        mapfile -t lines <<<"$bypass"
        fail "$label: the client reached the upstream directly (fallback?)" "${lines[@]}"
    fi
    if [[ $upstream_name != - ]]; then
        expect_cmp "$label: wharf fetched via upstream \"$upstream_name\"" \
            "$(($(wmetric wharf_upstream_requests_total upstream="$upstream_name") - upstream_before))" -gt 0
    fi
}

# ---- skopeo ----------------------------------------------------------------------------------

# render_registries_conf DEST URL — a registries.conf holding only the shipped drop-in
# (deploy/clients/podman) pointed at the wharf at URL: docker.io in the bare-host shape
# (requests arrive as /v2/<repo>/... at wharf's default upstream) and ghcr.io in the
# path-prefix shape (/v2/ghcr.io/<repo>/...).
render_registries_conf() {
    render "$CLIENTS/podman/registries.conf.d/50-wharf.conf" "$1.drop-in" "$2"
    {
        echo 'unqualified-search-registries = []'
        cat "$1.drop-in"
    } >"$1"
}

write_registries_conf() {
    render_registries_conf "$WORK/registries.conf" "$WHARF_URL"
    echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$WORK/policy.json"
    # Client command lines are arrays, not functions, so that `timeout` can run them.
    # skopeo takes registries.conf from its flag (CONTAINERS_REGISTRIES_CONF is not read by all
    # versions).
    SKOPEO=(skopeo --registries-conf "$WORK/registries.conf" --policy "$WORK/policy.json")
}

# dir: keeps the manifest byte for byte (oci: would convert Docker schema 2 to OCI).
dir_digest() { digest_of_stdin <"$1/manifest.json"; }

test_skopeo() {
    local out=$WORK/skopeo
    mkdir -p "$out"

    pull_through "skopeo plain docker://wharf/library/e2e-multi" docker.io \
        "${SKOPEO[@]}" copy -q --src-tls-verify=false \
        "docker://$WHARF/library/e2e-multi:$TAG" "dir:$out/multi"
    expect_eq "skopeo plain: e2e-multi digest matches upstream" \
        "${DIGEST[library/e2e-multi]}" "$(dir_digest "$out/multi")"

    pull_through "skopeo plain --all library/e2e-multiarch" docker.io \
        "${SKOPEO[@]}" copy -q --all --src-tls-verify=false \
        "docker://$WHARF/library/e2e-multiarch:$TAG" "dir:$out/multiarch"
    expect_eq "skopeo plain --all: e2e-multiarch index digest matches upstream" \
        "${DIGEST[library/e2e-multiarch]}" "$(dir_digest "$out/multiarch")"
    expect_eq "skopeo plain --all: the linux/amd64 manifest matches upstream" "$AMD64_DIGEST" \
        "$(digest_of_stdin <"$out/multiarch/${AMD64_DIGEST#sha256:}.manifest.json" 2>&1)"

    pull_through "skopeo mirror, bare-host shape (docker.io/library/e2e-oci)" docker.io \
        "${SKOPEO[@]}" copy -q "docker://docker.io/library/e2e-oci:$TAG" "dir:$out/oci"
    expect_eq "skopeo mirror, bare-host shape: e2e-oci digest matches upstream" \
        "${DIGEST[library/e2e-oci]}" "$(dir_digest "$out/oci")"

    pull_through "skopeo mirror, path-prefix shape ($PREFIX_NAME/acme/tools/e2e-app)" "$PREFIX_NAME" \
        "${SKOPEO[@]}" copy -q "docker://$PREFIX_NAME/acme/tools/e2e-app:$TAG" "dir:$out/app"
    expect_eq "skopeo mirror, path-prefix shape: e2e-app digest matches upstream" \
        "${DIGEST[acme/tools/e2e-app]}" "$(dir_digest "$out/app")"
}

# ---- dockerd ---------------------------------------------------------------------------------

DOCKER_CLI=()
DOCKERD_PID=

# start_dockerd MIRROR_URL — (re)start the private dockerd with the shipped daemon.json's
# registry-mirrors pointing at MIRROR_URL. Its images survive a restart.
start_dockerd() {
    local d=$WORK/dockerd mirror=$1
    mkdir -p "$d"
    local sock=$d/docker.sock
    DOCKER_CLI=("$DOCKER" -H "unix://$sock")
    if [[ -n $DOCKERD_PID ]]; then
        stop_pid "$DOCKERD_PID"
    fi
    render "$CLIENTS/docker/daemon.json" "$d/mirrors.json" "$mirror"
    # vfs and no networking: works without overlayfs or iptables; the mirror list is the point.
    jq -s '.[0] * .[1]' - "$d/mirrors.json" >"$d/daemon.json" <<'JSON'
{
  "storage-driver": "vfs",
  "iptables": false,
  "ip-masq": false,
  "ip-forward": false,
  "bridge": "none"
}
JSON
    start_bg dockerd dockerd --config-file "$d/daemon.json" --data-root "$d/data" \
        --exec-root "$d/exec" -H "unix://$sock" --pidfile "$d/docker.pid"
    DOCKERD_PID=$STARTED_PID
    if wait_until 60 "${DOCKER_CLI[@]}" version; then
        pass "private dockerd is up (registry-mirrors = $mirror)"
    else
        fail "private dockerd did not start" "$(tail -n 5 "$LOGS/dockerd.err")"
        return 1
    fi
}

# The digests dockerd recorded for IMAGE, space-separated "name@sha256:..." entries.
docker_repo_digests() { "${DOCKER_CLI[@]}" image inspect --format '{{join .RepoDigests " "}}' "$1"; }

# expect_has NAME NEEDLE HAYSTACK
expect_has() {
    if [[ " $3 " == *"$2"* ]]; then pass "$1"; else fail "$1" "expected to contain: $2" "actual: $3"; fi
}

test_dockerd() {
    start_dockerd "$WHARF_URL" || return 0
    # docker.io/library/e2e-multi: the daemon asks its mirror for /v2/library/e2e-multi/...
    pull_through "dockerd pull e2e-multi" - "${DOCKER_CLI[@]}" pull "e2e-multi:$TAG"
    expect_has "dockerd: e2e-multi RepoDigest matches upstream" \
        "e2e-multi@${DIGEST[library/e2e-multi]}" "$(docker_repo_digests "e2e-multi:$TAG" 2>&1)"

    pull_through "dockerd pull e2e-multiarch" - "${DOCKER_CLI[@]}" pull "e2e-multiarch:$TAG"
    expect_has "dockerd: e2e-multiarch RepoDigest matches upstream index" \
        "e2e-multiarch@${DIGEST[library/e2e-multiarch]}" "$(docker_repo_digests "e2e-multiarch:$TAG" 2>&1)"
    expect_eq "dockerd: picked the linux/amd64 image from the index" amd64 \
        "$("${DOCKER_CLI[@]}" image inspect --format '{{.Os}}/{{.Architecture}}' "e2e-multiarch:$TAG" 2>&1 | cut -d/ -f2)"
}

# ---- containerd ------------------------------------------------------------------------------

CTR=()

start_containerd() {
    local d=$WORK/containerd
    mkdir -p "$d"
    local sock=$d/containerd.sock
    CTR=(ctr -a "$sock" -n e2e)
    # Own root, state and sockets; no CRI (it would want CNI and kubelet things); the "opt"
    # plugin would otherwise install into /opt/containerd.
    cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$sock"
[ttrpc]
  address = "$d/containerd.ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
EOF
    # The shipped hosts.toml files (deploy/clients/containerd): docker.io and _default (every
    # other registry), wharf first. containerd adds ?ns=<registry>.
    render_hosts "$d/hosts" "$WHARF_URL"
    start_bg containerd containerd --config "$d/config.toml"
    if wait_until 30 "${CTR[@]}" version; then
        pass "private containerd is up (hosts.toml mirror = $WHARF_URL)"
    else
        fail "private containerd did not start" "$(tail -n 5 "$LOGS/containerd.err")"
        return 1
    fi
}

# render_hosts DIR URL [CA] — the shipped certs.d tree, pointing at the wharf at URL.
render_hosts() {
    local registry
    for registry in docker.io _default; do
        render "$CLIENTS/containerd/certs.d/$registry/hosts.toml" "$1/$registry/hosts.toml" "$2" "${3:-}"
    done
}

# The target digest containerd recorded for REF.
ctr_digest() { "${CTR[@]}" images ls | awk -v ref="$1" '$1 == ref {print $3}'; }

test_containerd() {
    start_containerd || return 0
    local pull=("${CTR[@]}" images pull --hosts-dir "$WORK/containerd/hosts" --plain-http --snapshotter native)
    local ref=docker.io/library/e2e-multiarch:$TAG
    pull_through "ctr pull $ref (?ns=docker.io)" - "${pull[@]}" "$ref"
    expect_eq "ctr: e2e-multiarch index digest matches upstream" \
        "${DIGEST[library/e2e-multiarch]}" "$(ctr_digest "$ref")"

    # Not yet asked for under this name, so wharf must fetch its tag through upstream "ghcr.io".
    ref=$PREFIX_NAME/library/e2e-multi:$TAG
    pull_through "ctr pull $ref (_default hosts.toml, ?ns=$PREFIX_NAME)" "$PREFIX_NAME" "${pull[@]}" "$ref"
    expect_eq "ctr: e2e-multi digest matches upstream" \
        "${DIGEST[library/e2e-multi]}" "$(ctr_digest "$ref")"

    expect_cmp "ctr: layers were unpacked into snapshots" \
        "$("${CTR[@]}" snapshots --snapshotter native ls 2>/dev/null | tail -n +2 | wc -l)" -gt 0
}

# ---- podman ----------------------------------------------------------------------------------

# podman_in DIR REGISTRIES_CONF — sets PODMAN to a rootful podman with private storage under
# DIR that reads REGISTRIES_CONF (from the environment) and no host settings.
podman_in() {
    local d=$1
    mkdir -p "$d"
    : >"$d/containers.conf"
    PODMAN=(env CONTAINERS_CONF="$d/containers.conf" CONTAINERS_REGISTRIES_CONF="$2"
        podman --root "$d/root" --runroot "$d/run" --storage-driver vfs --tmpdir "$d/tmp"
        --cgroup-manager cgroupfs --events-backend file)
}

test_podman() {
    # The same registries.conf as skopeo.
    podman_in "$WORK/podman" "$WORK/registries.conf"
    local podman=("${PODMAN[@]}")
    local ref=docker.io/library/e2e-multi:$TAG
    pull_through "podman pull $ref (bare-host mirror)" - \
        "${podman[@]}" pull -q --signature-policy "$WORK/policy.json" "$ref"
    expect_eq "podman: e2e-multi digest matches upstream" \
        "${DIGEST[library/e2e-multi]}" "$("${podman[@]}" image inspect --format '{{.Digest}}' "$ref" 2>&1)"

    ref=$PREFIX_NAME/library/e2e-oci:$TAG
    pull_through "podman pull $ref (path-prefix mirror)" "$PREFIX_NAME" \
        "${podman[@]}" pull -q --signature-policy "$WORK/policy.json" "$ref"
    expect_eq "podman: e2e-oci digest matches upstream" \
        "${DIGEST[library/e2e-oci]}" "$("${podman[@]}" image inspect --format '{{.Digest}}' "$ref" 2>&1)"
}
