# shellcheck shell=bash
# wharf over HTTPS: a private CA made here, dockerd trusting it through
# /etc/docker/certs.d/<host:port>/ca.crt, containerd through `ca` in the shipped hosts.toml.
# Sourced by run.sh, whose globals (WORK, UP, DIGEST, CLIENTS, ...) it uses.

TLS_WHARF=127.0.0.1:$TLS_PORT
TLS_URL=https://$TLS_WHARF
DOCKER_CERTS_DIR=/etc/docker/certs.d/$TLS_WHARF

# make_ca DIR — a CA, and a server certificate it signed for 127.0.0.1: DIR/{ca,tls}.{crt,key}.
make_ca() {
    local dir=$1
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=wharf e2e CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=127.0.0.1" -keyout "$dir/tls.key" -out "$dir/tls.csr" &&
        printf 'subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n' >"$dir/ext.cnf" &&
        openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
            -CAcreateserial -days 2 -extfile "$dir/ext.cnf" -out "$dir/tls.crt"
}

# Removes what the phase put outside the scratch directory.
tls_cleanup() { rm -rf "$DOCKER_CERTS_DIR"; }

test_tls() {
    local pki=$WORK/pki
    check "TLS: make a CA and a certificate for 127.0.0.1 (openssl)" make_ca "$pki"
    write_wharf_config "$WORK/wharf-tls.toml" "$TLS_WHARF" "$WORK/cache-tls"
    cat >>"$WORK/wharf-tls.toml" <<EOF

[server.tls]
cert = "$pki/tls.crt"
key = "$pki/tls.key"
EOF
    # curl (health, metrics) trusts the CA too.
    export CURL_CA_BUNDLE=$pki/ca.crt
    launch_wharf wharf-tls "$WORK/wharf-tls.toml" "$TLS_URL"
    local protocols
    protocols=$(curl -sS --max-time 5 -o /dev/null -w '%{http_version}' "$TLS_URL/v2/" || true)
    protocols+=" $(curl -sS --max-time 5 --http1.1 -o /dev/null -w '%{http_version}' "$TLS_URL/v2/" || true)"
    expect_eq "TLS: /v2/ over HTTP/2 (ALPN) and HTTP/1.1" "2 1.1" "$protocols"

    read_metrics_of "$TLS_URL"
    # dockerd: the shipped daemon.json with an https:// mirror, the CA where dockerd looks.
    mkdir -p "$DOCKER_CERTS_DIR"
    cp "$pki/ca.crt" "$DOCKER_CERTS_DIR/ca.crt"
    if start_dockerd "$TLS_URL"; then
        pull_through "TLS: dockerd pull e2e-oci through https://" - "${DOCKER_CLI[@]}" pull "e2e-oci:$TAG"
        expect_has "TLS: dockerd: e2e-oci RepoDigest matches upstream" \
            "e2e-oci@${DIGEST[library/e2e-oci]}" "$(docker_repo_digests "e2e-oci:$TAG" 2>&1)"
    fi

    # containerd: the shipped hosts.toml with the https:// host and its `ca` line switched on.
    if ((${#CTR[@]} > 0)); then
        render_hosts "$WORK/containerd/hosts-tls" "$TLS_URL" "$pki/ca.crt"
        local ref=docker.io/library/e2e-multi:$TAG
        pull_through "TLS: ctr pull $ref through https:// (ca in hosts.toml)" docker.io \
            "${CTR[@]}" images pull --hosts-dir "$WORK/containerd/hosts-tls" --snapshotter native "$ref"
        expect_eq "TLS: ctr: e2e-multi digest matches upstream" \
            "${DIGEST[library/e2e-multi]}" "$(ctr_digest "$ref")"
    fi
    read_metrics_of "$WHARF_URL"
    tls_cleanup
}

# wharf in front of an HTTPS upstream: the suite's registry storage served by a second CNCF
# distribution with http.tls (Go's server then speaks HTTP/2, as registries and their CDNs do),
# its private CA handed to wharf with ca_file; skopeo pulls through it. Each blob leaves the
# upstream once, over HTTP/2, and what the fills held in buffers is in wharf's metrics.
test_https_upstream() {
    local pki=$WORK/pki-upstream up=127.0.0.1:$UP_TLS_PORT listen=127.0.0.1:$HTTPS_UP_WHARF_PORT
    local log=$LOGS/upstream-tls.out out=$WORK/skopeo-https-upstream
    check "HTTPS upstream: make a CA and a certificate for 127.0.0.1 (openssl)" make_ca "$pki"
    registry_config "$WORK/registry-tls.yml" "$up" "$UPSTREAM_DATA"
    printf '  tls:\n    certificate: %s\n    key: %s\n' "$pki/tls.crt" "$pki/tls.key" \
        >>"$WORK/registry-tls.yml"
    start_bg upstream-tls /usr/bin/docker-registry serve "$WORK/registry-tls.yml"
    local registry_pid=$STARTED_PID
    if ! wait_until 30 curl -fsS --max-time 2 --cacert "$pki/ca.crt" "https://$up/v2/"; then
        fail "HTTPS upstream: the registry with http.tls answers on $up" \
            "$(tail -n 5 "$LOGS/upstream-tls.err")"
        stop_pid "$registry_pid"
        return
    fi
    expect_eq "HTTPS upstream: the registry speaks HTTP/2" 2 \
        "$(curl -sS --max-time 5 --cacert "$pki/ca.crt" -o /dev/null -w '%{http_version}' "https://$up/v2/")"
    printf '[server]\nlisten = "%s"\n\n[cache]\ndir = "%s"\n\n[[upstream]]\nname = "docker.io"\nurl = "https://%s"\nca_file = "%s"\n' \
        "$listen" "$WORK/cache-https-upstream" "$up" "$pki/ca.crt" >"$WORK/wharf-https-upstream.toml"
    launch_wharf wharf-https-upstream "$WORK/wharf-https-upstream.toml" "http://$listen"
    local mark gets
    mark=$(wc -l <"$log")
    check "HTTPS upstream: skopeo pull library/e2e-multi through wharf" \
        timeout "$CLIENT_TIMEOUT" "${SKOPEO[@]}" copy -q --src-tls-verify=false \
        "docker://$listen/library/e2e-multi:$TAG" "dir:$out"
    expect_eq "HTTPS upstream: e2e-multi digest matches upstream" \
        "${DIGEST[library/e2e-multi]}" "$(dir_digest "$out")"
    CURL_CA_BUNDLE=$pki/ca.crt log_barrier "HTTPS upstream" "$log" "https://$up" || true
    gets=$(tail -n +"$((mark + 1))" "$log" | grep -E '"GET /v2/[^ ]+/blobs/sha256:' || true)
    expect_cmp "HTTPS upstream: wharf fetched the image's blobs from it" "$(grep -c . <<<"$gets")" -ge 5
    expect_eq "HTTPS upstream: every blob GET went over HTTP/2" 0 "$(grep -vc 'HTTP/2.0"' <<<"$gets")"
    expect_eq "HTTPS upstream: each blob left the upstream once" 1 \
        "$(blob_copies "$log" "$mark" "$UPSTREAM_DATA" | awk '{print $1}' | sort -u | paste -sd,)"
    expect_cmp "HTTPS upstream: wharf reports its fill buffers (wharf_fill_buffer_bytes)" \
        "$(curl -fsS --max-time 5 "http://$listen/metrics" | grep -c '^wharf_fill_buffer_bytes ')" -eq 1
    stop_pid "${WHARF_PIDS[wharf-https-upstream]}"
    stop_pid "$registry_pid"
}
