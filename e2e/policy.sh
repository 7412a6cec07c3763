# shellcheck shell=bash
# Signed images only: a wharf with a [[policy]] rule over myorg/* trusting one key (made here with
# openssl, as `cosign generate-key-pair` makes one). An image signed in cosign's classic layout
# (e2e/sign.py) is pulled by skopeo, dockerd, containerd and podman; an unsigned one is refused
# with 403 DENIED naming the rule; the signature tag itself passes; and a warm pull does no
# signature work. Sourced by run.sh, whose globals (WORK, UP, TAG, CTR, DOCKER_CLI, ...) it uses.

GUARDED=127.0.0.1:$POLICY_PORT

start_guarded_wharf() {
    local d=$WORK/policy
    mkdir -p "$d"
    openssl ecparam -genkey -name prime256v1 -noout -out "$d/cosign.key" 2>/dev/null &&
        openssl ec -in "$d/cosign.key" -pubout -out "$d/cosign.pub" 2>/dev/null || return 1
    write_wharf_config "$WORK/guarded.toml" "$GUARDED" "$WORK/cache-guarded"
    cat >>"$WORK/guarded.toml" <<EOF

[[policy]]
name = "myorg-signed"
repositories = ["myorg/*"]
keys = ["$d/cosign.pub"]
mode = "enforce"
EOF
    launch_wharf guarded "$WORK/guarded.toml" "http://$GUARDED"
}

# denied LABEL CMD... — the pull fails, and wharf refused it by policy: more 403s and more
# refusals by the rule, no manifest served.
denied() {
    local label=$1
    shift
    local refusals
    refusals=$(wmetric wharf_policy_refusals_total rule=myorg-signed mode=enforce)
    refused_with "$label" 403 "$@" || return 0
    expect_cmp "$label: rule myorg-signed refused it" \
        "$(($(wmetric wharf_policy_refusals_total rule=myorg-signed mode=enforce) - refusals))" -gt 0
}

test_policy() {
    check "policy: build and push myorg/e2e-signed (OCI index: linux/amd64 + linux/arm64)" \
        seed myorg/e2e-signed oci "linux/amd64 linux/arm64/v8" 1M,64K
    check "policy: build and push myorg/e2e-unsigned" \
        seed myorg/e2e-unsigned oci linux/amd64 1M
    check "policy: build and push myorg/e2e-bundled" \
        seed myorg/e2e-bundled oci linux/amd64 512K
    if ! start_guarded_wharf; then
        fail "policy: a key pair is made and the guarded wharf starts"
        return 0
    fi
    local signed unsigned
    signed=$(skopeo inspect --raw --tls-verify=false "docker://$UP/myorg/e2e-signed:$TAG" | digest_of_stdin)
    unsigned=$(skopeo inspect --raw --tls-verify=false "docker://$UP/myorg/e2e-unsigned:$TAG" | digest_of_stdin)
    check "policy: sign myorg/e2e-signed's index in cosign's classic layout" \
        python3 "$HERE/sign.py" "$UP" myorg/e2e-signed "$signed" "$WORK/policy/cosign.key"
    local bundled
    bundled=$(skopeo inspect --raw --tls-verify=false "docker://$UP/myorg/e2e-bundled:$TAG" | digest_of_stdin)
    check "policy: sign myorg/e2e-bundled with a sigstore bundle under the referrers fallback tag" \
        python3 "$HERE/sign.py" "$UP" myorg/e2e-bundled "$bundled" "$WORK/policy/cosign.key" --bundle
    read_metrics_of "http://$GUARDED"

    local sk=(skopeo inspect --raw --tls-verify=false)
    expect_eq "policy: skopeo gets the signed index" "$signed" \
        "$("${sk[@]}" "docker://$GUARDED/myorg/e2e-signed:$TAG" | digest_of_stdin)"
    "${sk[@]}" "docker://$GUARDED/myorg/e2e-unsigned:$TAG" >/dev/null 2>"$LOGS/policy-skopeo.err" || true
    # skopeo quotes the registry's message inside its own, escaping its quotes.
    if grep -q 'denied: refused by policy .*myorg-signed.*: no signature' "$LOGS/policy-skopeo.err"; then
        pass "policy: skopeo is told the unsigned image is refused by myorg-signed: no signature"
    else
        fail "policy: skopeo is told why the unsigned image is refused" "$(head -c 400 "$LOGS/policy-skopeo.err")"
    fi
    # The registry has no referrers API: wharf finds the bundle through the fallback tag.
    expect_eq "policy: skopeo gets the image signed with a bundle" "$bundled" \
        "$("${sk[@]}" "docker://$GUARDED/myorg/e2e-bundled:$TAG" | digest_of_stdin)"
    local sig_tag=${signed/:/-}.sig
    check "policy: the signature tag passes to clients (cosign verify reads it)" \
        "${sk[@]}" "docker://$GUARDED/myorg/e2e-signed:$sig_tag"
    expect_eq "policy: images no rule covers are served" "${DIGEST[library/e2e-oci]}" \
        "$("${sk[@]}" "docker://$GUARDED/library/e2e-oci:$TAG" | digest_of_stdin)"

    if start_dockerd "http://$GUARDED"; then
        pull_through "policy: dockerd pull myorg/e2e-signed" - "${DOCKER_CLI[@]}" pull "myorg/e2e-signed:$TAG"
        expect_has "policy: dockerd: RepoDigest is the signed index" \
            "myorg/e2e-signed@$signed" "$(docker_repo_digests "myorg/e2e-signed:$TAG" 2>&1)"
        denied "policy: dockerd pull myorg/e2e-unsigned" "${DOCKER_CLI[@]}" pull "myorg/e2e-unsigned:$TAG"
    fi
    if ((${#CTR[@]} > 0)); then
        render_hosts "$WORK/containerd/hosts-guarded" "http://$GUARDED"
        local pull=("${CTR[@]}" images pull --hosts-dir "$WORK/containerd/hosts-guarded" --plain-http
            --snapshotter native)
        pull_through "policy: ctr pull myorg/e2e-signed (index, then its platform manifest)" - \
            "${pull[@]}" "docker.io/myorg/e2e-signed:$TAG"
        expect_eq "policy: ctr: the signed index" "$signed" "$(ctr_digest "docker.io/myorg/e2e-signed:$TAG")"
        denied "policy: ctr pull myorg/e2e-unsigned" "${pull[@]}" "docker.io/myorg/e2e-unsigned:$TAG"
        denied "policy: ctr pull myorg/e2e-unsigned by digest" "${pull[@]}" "docker.io/myorg/e2e-unsigned@$unsigned"
    fi
    render_registries_conf "$WORK/registries-guarded.conf" "http://$GUARDED"
    podman_in "$WORK/podman-guarded" "$WORK/registries-guarded.conf"
    pull_through "policy: podman pull myorg/e2e-signed" - \
        "${PODMAN[@]}" pull -q --signature-policy "$WORK/policy.json" "docker.io/myorg/e2e-signed:$TAG"
    expect_cmp "policy: platform manifests passed through their signed index" \
        "$(wmetric wharf_policy_verifications_total rule=myorg-signed result=through_index)" -ge 1

    check "policy: skopeo copies myorg/e2e-signed, every platform" \
        skopeo copy -q --all --src-tls-verify=false "docker://$GUARDED/myorg/e2e-signed:$TAG" \
        "dir:$WORK/policy/all"
    # Warm: every verdict is reused, so no signature is looked up or checked again.
    local checks
    checks=$(wmetric wharf_policy_verifications_total rule=myorg-signed)
    check "policy: the same copy again, warm" \
        skopeo copy -q --all --src-tls-verify=false "docker://$GUARDED/myorg/e2e-signed:$TAG" \
        "dir:$WORK/policy/warm"
    expect_eq "policy: the warm copy did no signature work" "$checks" \
        "$(wmetric wharf_policy_verifications_total rule=myorg-signed)"
    read_metrics_of "$WHARF_URL"
    policy_in_a_cluster "$signed"
}

# policy_in_a_cluster INDEX — two guarded nodes of one cluster: a client resolves the signed
# index INDEX on p, p dies, and the client gets its platform manifests from q, which never saw
# the index (p told q which index lists them; q verifies that index itself).
policy_in_a_cluster() {
    local signed=$1 node port
    local ports=("$POLICY_P_PORT" "$POLICY_Q_PORT") names=(p q)
    head -c 32 /dev/urandom | base64 | tr -d '\n=' >"$WORK/policy-token"
    chmod 600 "$WORK/policy-token"
    for node in 0 1; do
        port=${ports[$node]}
        write_wharf_config "$WORK/policy-${names[$node]}.toml" "127.0.0.1:$port" \
            "$WORK/cache-policy-${names[$node]}"
        cat >>"$WORK/policy-${names[$node]}.toml" <<EOF

[[policy]]
name = "myorg-signed"
repositories = ["myorg/*"]
keys = ["$WORK/policy/cosign.pub"]

[cluster]
node = "${names[$node]}"
peer_token_file = "$WORK/policy-token"
probe_interval = "500ms"
$(peers_toml "${names[*]}" "${ports[*]}")
EOF
        launch_wharf "policy-${names[$node]}" "$WORK/policy-${names[$node]}.toml" \
            "http://127.0.0.1:$port"
    done
    local p=127.0.0.1:$POLICY_P_PORT q=127.0.0.1:$POLICY_Q_PORT
    local sk=(skopeo inspect --raw --tls-verify=false)
    "${sk[@]}" "docker://$p/myorg/e2e-signed:$TAG" >"$WORK/policy/cluster-index.json" || true
    expect_eq "policy cluster: skopeo resolves the signed index on p" "$signed" \
        "$(digest_of_stdin <"$WORK/policy/cluster-index.json")"
    local platforms
    mapfile -t platforms < <(jq -r '.manifests[].digest' "$WORK/policy/cluster-index.json")
    check "policy cluster: q holds p's record of which index lists them" \
        wait_until 10 bash -c "(( \$(find '$WORK/cache-policy-q/parents' -type f | wc -l) >= ${#platforms[@]} ))"
    kill -KILL "${WHARF_PIDS[policy-p]}" 2>/dev/null || true
    wait "${WHARF_PIDS[policy-p]}" 2>/dev/null || true
    local platform
    for platform in "${platforms[@]}"; do
        check "policy cluster: with p dead, skopeo copies platform manifest ${platform:7:12} from q" \
            skopeo copy -q --src-tls-verify=false "docker://$q/myorg/e2e-signed@$platform" \
            "dir:$WORK/policy/cluster-${platform:7:12}"
    done
    expect_cmp "policy cluster: q let them through the index it verified itself" \
        "$(metric "http://$q" wharf_policy_verifications_total rule=myorg-signed result=through_index)" \
        -ge "${#platforms[@]}"
    stop_pid "${WHARF_PIDS[policy-q]}"
}
