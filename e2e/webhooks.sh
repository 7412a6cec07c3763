# shellcheck shell=bash
# Webhooks and the admin API against a real registry: a docker-registry of its own, whose
# notifications go to a wharf (tag_ttl of an hour). An image pushed over a tag a client pulled
# through wharf is served by wharf soon after the push (the delay is reported), and the
# registry's log shows wharf's refresh; a purge through the admin API makes the next pull fetch
# again. Sourced by run.sh, whose globals (WORK, TAG, LOGS, ...) it uses.

# hooked_registry_config FILE — the registry, with notifications to the wharf of this phase.
hooked_registry_config() {
    registry_config "$1" "127.0.0.1:$HOOK_UP_PORT" "$WORK/hooked-registry"
    cat >>"$1" <<EOF
notifications:
  endpoints:
    - name: wharf
      url: http://127.0.0.1:$HOOK_WHARF_PORT/admin/v1/webhooks/distribution
      headers:
        Authorization: [Bearer $(cat "$WORK/hook-secret")]
      timeout: 5s
      threshold: 3
      backoff: 1s
EOF
}

# hooked_digest — the digest of myorg/hooked:v1 as wharf serves it.
hooked_digest() {
    skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$HOOK_WHARF_PORT/myorg/hooked:v1" |
        digest_of_stdin
}

# hooked_gets_since LINE — manifest GETs of myorg/hooked:v1 the registry answered after LINE.
hooked_gets_since() {
    tail -n +"$(($1 + 1))" "$LOGS/hooked-registry.out" |
        grep -c '"GET /v2/myorg/hooked/manifests/v1 HTTP' || true
}

test_webhooks() {
    local hooked=127.0.0.1:$HOOK_UP_PORT wharf=127.0.0.1:$HOOK_WHARF_PORT
    head -c 24 /dev/urandom | base64 | tr -d '\n=/+' >"$WORK/hook-secret"
    local admin_token
    admin_token=$(head -c 24 /dev/urandom | base64 | tr -d '\n=/+')
    printf 'sha256:%s e2e-operator\n' "$(printf %s "$admin_token" | sha256sum | cut -d' ' -f1)" \
        >"$WORK/hook-admin-tokens"
    hooked_registry_config "$WORK/hooked-registry.yml"
    start_bg hooked-registry /usr/bin/docker-registry serve "$WORK/hooked-registry.yml"
    local registry_pid=$STARTED_PID
    if ! wait_until 30 curl -fsS --max-time 2 "http://$hooked/v2/"; then
        fail "webhooks: the notifying registry starts" "$(tail -n 5 "$LOGS/hooked-registry.err")"
        return 0
    fi
    cat >"$WORK/hooked-wharf.toml" <<EOF
[server]
listen = "$wharf"

[cache]
dir = "$WORK/cache-hooked"
tag_ttl = "1h"

[[upstream]]
name = "docker.io"
url = "http://$hooked"

[admin]
tokens = "$WORK/hook-admin-tokens"
webhook_secret_file = "$WORK/hook-secret"
EOF
    launch_wharf hooked-wharf "$WORK/hooked-wharf.toml" "http://$wharf"
    local copy=(skopeo copy -q --all --format oci --dest-tls-verify=false)
    check "webhooks: push myorg/hooked:v1 to the notifying registry" \
        "${copy[@]}" "oci:$WORK/layouts/library_e2e-oci:$TAG" "docker://$hooked/myorg/hooked:v1"
    expect_eq "webhooks: skopeo pulls myorg/hooked:v1 through wharf" \
        "$(skopeo inspect --raw --tls-verify=false "docker://$hooked/myorg/hooked:v1" | digest_of_stdin)" \
        "$(hooked_digest)"

    # Another image over the same tag: with a tag_ttl of an hour, only the webhook can show it.
    local mark
    mark=$(wc -l <"$LOGS/hooked-registry.out")
    check "webhooks: push another image over myorg/hooked:v1" \
        "${copy[@]}" "oci:$WORK/layouts/acme_tools_e2e-app:$TAG" "docker://$hooked/myorg/hooked:v1"
    local pushed_at second
    pushed_at=$(now_ms)
    second=$(skopeo inspect --raw --tls-verify=false "docker://$hooked/myorg/hooked:v1" | digest_of_stdin)
    if wait_until 30 bash -c "[[ \$(skopeo inspect --raw --tls-verify=false 'docker://$wharf/myorg/hooked:v1' | sha256sum | cut -d' ' -f1) == ${second#sha256:} ]]"; then
        pass "webhooks: wharf serves the pushed image $(($(now_ms) - pushed_at)) ms after the push"
    else
        fail "webhooks: wharf serves the pushed image within 30 s" "still $(hooked_digest)"
    fi
    expect_cmp "webhooks: the registry's log shows wharf's refresh of the tag" \
        "$(hooked_gets_since "$mark")" -ge 1
    expect_cmp "webhooks: wharf counted the registry's webhook calls" \
        "$(metric "http://$wharf" wharf_http_requests_total route=webhook status=200)" -ge 1

    # A purge through the admin API: the next pull fetches the tag again.
    local refused
    refused=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$wharf/admin/v1/purge?image=myorg/hooked:v1")
    expect_eq "webhooks: a purge without the admin token is refused" 401 "$refused"
    check "webhooks: the admin API purges myorg/hooked:v1" \
        curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $admin_token" \
        "http://$wharf/admin/v1/purge?image=myorg/hooked:v1"
    mark=$(wc -l <"$LOGS/hooked-registry.out")
    expect_eq "webhooks: after the purge skopeo still gets the image" "$second" "$(hooked_digest)"
    expect_cmp "webhooks: and wharf fetched the tag again" "$(hooked_gets_since "$mark")" -ge 1
    stop_pid "${WHARF_PIDS[hooked-wharf]}"
    stop_pid "$registry_pid"
}
