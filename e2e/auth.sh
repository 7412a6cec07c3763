# shellcheck shell=bash
# Client authentication: a wharf with [server.auth] (an htpasswd user and a bearer token) and its
# metrics on a listener of their own. dockerd (credentials from the CLI's config.json), containerd
# (a static Authorization header in hosts.toml) and podman (auth.json) each pull through it with
# credentials, and are refused (401, nothing served) without them. Grants give each client its
# repositories: dockerd and podman, as two users, pull what theirs give and are refused the rest
# with the 403's message in their error. Sourced by run.sh, whose globals (WORK, UP, DIGEST,
# CLIENTS, ...) it uses.

AUTHED=127.0.0.1:$AUTH_PORT
AUTHED_OPS=127.0.0.1:$AUTH_OPS_PORT
AUTH_USER=puller
AUTH_PASSWORD=e2e-pass-$RANDOM$RANDOM
AUTH_TOKEN=e2e-token-$RANDOM$RANDOM
# A second user, whose grant gives another repository than the first's.
AUTH_USER2=limited
AUTH_PASSWORD2=e2e-pass2-$RANDOM$RANDOM

start_authed_wharf() {
    local d=$WORK/auth
    mkdir -p "$d"
    {
        htpasswd -nbB "$AUTH_USER" "$AUTH_PASSWORD"
        htpasswd -nbB "$AUTH_USER2" "$AUTH_PASSWORD2"
    } | grep . >"$d/htpasswd"
    echo "sha256:$(printf %s "$AUTH_TOKEN" | sha256sum | cut -d' ' -f1) containerd" >"$d/tokens"
    chmod 600 "$d/htpasswd" "$d/tokens"
    write_wharf_config "$WORK/authed.toml" "$AUTHED" "$WORK/cache-authed"
    # [server] is the config's first table: its keys go right after its header.
    sed -i "/^\[server\]/a metrics_listen = \"$AUTHED_OPS\"" "$WORK/authed.toml"
    cat >>"$WORK/authed.toml" <<EOF

[server.auth]
htpasswd = "$d/htpasswd"
tokens = "$d/tokens"

[[server.auth.grant]]
users = ["$AUTH_USER"]
repositories = ["library/e2e-oci", "library/e2e-multiarch"]

[[server.auth.grant]]
users = ["$AUTH_USER2"]
repositories = ["library/e2e-multi"]

[[server.auth.grant]]
token_labels = ["containerd"]
repositories = ["library/*"]
EOF
    launch_wharf authed "$WORK/authed.toml" "http://$AUTHED"
}

# refused LABEL CMD... — the pull fails for want of credentials (401).
refused() {
    local label=$1
    shift
    refused_with "$label" 401 "$@"
}

# not_granted LABEL USER CMD... — the pull fails with wharf's 403, whose message (USER may not
# pull ...) the client shows.
not_granted() {
    local label=$1 user=$2
    shift 2
    refused_with "$label" 403 "$@" || return 0
    if grep -q "$user may not pull" "$LOGS/refused.out"; then
        pass "$label: the client shows why ($user may not pull ...)"
    else
        fail "$label: the client shows why" "$(head -c 600 "$LOGS/refused.out")"
    fi
}

test_auth() {
    if ! command -v htpasswd >/dev/null; then
        fail "auth: the htpasswd tool is installed (e2e/install.sh)"
        return 0
    fi
    start_authed_wharf
    read_metrics_of "http://$AUTHED_OPS"
    local basic
    basic=$(printf %s "$AUTH_USER:$AUTH_PASSWORD" | base64 -w0)

    expect_eq "auth: /v2/ without credentials is 401 with a Basic challenge" \
        '401 Basic realm="wharf"' \
        "$(curl -s -o /dev/null -w '%{http_code} %header{www-authenticate}' "http://$AUTHED/v2/")"
    expect_eq "auth: /v2/ with the token is 200" 200 \
        "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $AUTH_TOKEN" "http://$AUTHED/v2/")"
    expect_eq "auth: /metrics answers on its own listener without credentials" 200 \
        "$(curl -s -o /dev/null -w '%{http_code}' "http://$AUTHED_OPS/metrics")"

    # dockerd sends its mirror the credentials the CLI hands it for Docker Hub.
    if start_dockerd "http://$AUTHED"; then
        local config=$WORK/docker-config
        mkdir -p "$config"
        echo '{}' >"$config/config.json"
        "${DOCKER_CLI[@]}" rmi -f "e2e-oci:$TAG" >/dev/null 2>&1 || true
        refused "auth: dockerd without credentials" \
            env DOCKER_CONFIG="$config" "${DOCKER_CLI[@]}" pull "e2e-oci:$TAG"
        jq -n --arg auth "$basic" '{auths: {"https://index.docker.io/v1/": {auth: $auth}}}' \
            >"$config/config.json"
        pull_through "auth: dockerd with credentials (config.json)" - \
            env DOCKER_CONFIG="$config" "${DOCKER_CLI[@]}" pull "e2e-oci:$TAG"
        expect_has "auth: dockerd: e2e-oci RepoDigest matches upstream" \
            "e2e-oci@${DIGEST[library/e2e-oci]}" "$(docker_repo_digests "e2e-oci:$TAG" 2>&1)"
        # The second user: its grant gives e2e-multi, not e2e-oci.
        jq -n --arg auth "$(printf %s "$AUTH_USER2:$AUTH_PASSWORD2" | base64 -w0)" --arg host "$AUTHED" \
            '{auths: {"https://index.docker.io/v1/": {auth: $auth}, ($host): {auth: $auth}}}' \
            >"$config/config.json"
        pull_through "auth: dockerd as $AUTH_USER2 pulls what its grant gives" - \
            env DOCKER_CONFIG="$config" "${DOCKER_CLI[@]}" pull "e2e-multi:$TAG"
        # As a mirror, dockerd hides a mirror's error behind its fallback's; named as the
        # registry (loopback needs no TLS), it shows wharf's.
        not_granted "auth: dockerd as $AUTH_USER2 is refused e2e-oci" "$AUTH_USER2" \
            env DOCKER_CONFIG="$config" "${DOCKER_CLI[@]}" pull "$AUTHED/library/e2e-oci:$TAG"
    fi

    # containerd: the shipped hosts.toml, and a static Authorization header for wharf.
    if ((${#CTR[@]} == 0)); then
        info "auth: containerd checks skipped (test_containerd did not start containerd)"
    else
        local hosts=$WORK/containerd/hosts-authed ref=docker.io/library/e2e-oci:$TAG
        render_hosts "$hosts" "http://$AUTHED"
        local pull=("${CTR[@]}" images pull --hosts-dir "$hosts" --plain-http --snapshotter native)
        "${CTR[@]}" images rm "$ref" >/dev/null 2>&1 || true
        refused "auth: ctr without credentials" "${pull[@]}" "$ref"
        printf '  [host."http://%s".header]\n    authorization = "Bearer %s"\n' \
            "$AUTHED" "$AUTH_TOKEN" >>"$hosts/docker.io/hosts.toml"
        pull_through "auth: ctr with a bearer token (hosts.toml header)" - "${pull[@]}" "$ref"
        expect_eq "auth: ctr: e2e-oci digest matches upstream" \
            "${DIGEST[library/e2e-oci]}" "$(ctr_digest "$ref")"
    fi

    # podman: credentials for the mirror's host in an auth file.
    local d=$WORK/podman-authed
    podman_in "$d" "$d/registries.conf"
    render_registries_conf "$d/registries.conf" "http://$AUTHED"
    echo '{}' >"$d/auth.json"
    local podman=("${PODMAN[@]}")
    local ref=docker.io/library/e2e-multiarch:$TAG
    refused "auth: podman without credentials" \
        "${podman[@]}" pull -q --authfile "$d/auth.json" --signature-policy "$WORK/policy.json" "$ref"
    jq -n --arg auth "$basic" --arg host "$AUTHED" '{auths: {($host): {auth: $auth}}}' >"$d/auth.json"
    pull_through "auth: podman with credentials (auth.json)" - \
        "${podman[@]}" pull -q --authfile "$d/auth.json" --signature-policy "$WORK/policy.json" "$ref"
    expect_eq "auth: podman: e2e-multiarch digest matches upstream" \
        "${DIGEST[library/e2e-multiarch]}" \
        "$("${podman[@]}" image inspect --format '{{.Digest}}' "$ref" 2>&1)"

    not_granted "auth: podman as $AUTH_USER is refused e2e-multi" "$AUTH_USER" \
        "${podman[@]}" pull -q --authfile "$d/auth.json" --signature-policy "$WORK/policy.json" \
        "docker.io/library/e2e-multi:$TAG"

    expect_cmp "auth: the access log names who pulled" \
        "$(cat "$LOGS/authed.out" "$LOGS/authed.err" | grep -c "user=\"\?$AUTH_USER" || true)" -gt 0
    if grep -qF -e "$AUTH_PASSWORD" -e "$AUTH_TOKEN" -e "$basic" "$LOGS/authed.out" "$LOGS/authed.err"; then
        fail "auth: no credential appears in wharf's log"
    else
        pass "auth: no credential appears in wharf's log"
    fi
    read_metrics_of "$WHARF_URL"
    stop_pid "${WHARF_PIDS[authed]}"
    unset 'WHARF_PIDS[authed]'
}
