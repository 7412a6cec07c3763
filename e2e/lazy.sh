# shellcheck shell=bash
# A lazy pull of an eStargz image through a cold wharf. ctr-remote (stargz-snapshotter) converts
# an image built offline to eStargz and pushes it to the upstream; lazypull.py then asks wharf
# for what stargz-snapshotter asks for, in its shapes: the size probe, the footer, the TOC and
# file chunks in one multi-range request, each checked against the digests the manifest pins.
# Last, containerd pulls the whole image through the same wharf: a cache hit, no upstream bytes.
# Sourced by run.sh, whose globals (WORK, UP, TAG, CTR, ...) it uses.

LAZY_REPO=library/e2e-lazy
# One layer of real files, random so that gzip cannot shrink them: ~7.5 MiB in all, the larger
# files spanning several eStargz chunks of LAZY_CHUNK bytes, plus small ones.
LAZY_FILES=3M+2M+1536K+1M+4K+300
LAZY_CHUNK=1048576
# The link between this phase's wharf and the upstream, in bytes per second (see throttle.py).
# The local registry alone sends the layer in milliseconds, so no range could be ahead of the
# fill; at 1 MiB/s, with range_lookahead = 1s (set below; the default is 100ms), a range is
# side-fetched while it lies more than ~1 MiB beyond what the fill has written. The footer, 7.5 MiB in, stays that far ahead for the
# first ~6 s of the fill; lazypull.py asks for it within milliseconds of starting the fill.
LAZY_RATE=1048576
# The namespace of the private containerd where the image is converted; its images are removed
# before the full pull, which must fetch every blob through wharf.
LAZY_BUILD_NS=e2e-lazy-build

# lazy_fact KEY — the values lazypull.py reported for KEY.
lazy_fact() { awk -v k="$1" '$1 == k {$1 = ""; sub(/^ /, ""); print}' "$WORK/lazypull.out"; }

# build_lazy_image — an eStargz image at $UP/$LAZY_REPO:$TAG, made offline: an OCI layout from
# mkimage.py, imported into the private containerd, converted by ctr-remote, pushed; then gone
# from containerd again. Sets LAZY_MANIFEST (the pushed manifest's file).
build_lazy_image() {
    local layout=$WORK/layouts/lazy gzip_ref=$UP/$LAZY_REPO-gzip:$TAG ref=$UP/$LAZY_REPO:$TAG
    local build=(ctr -a "$WORK/containerd/containerd.sock" -n "$LAZY_BUILD_NS")
    python3 "$HERE/mkimage.py" "$layout" "$TAG" --name "$LAZY_REPO" --layers "$LAZY_FILES" \
        --platform linux/amd64 &&
        tar -C "$layout" -cf "$WORK/lazy-oci.tar" . &&
        "${build[@]}" images import --no-unpack --base-name "$UP/$LAZY_REPO-gzip" "$WORK/lazy-oci.tar" &&
        ctr-remote -a "$WORK/containerd/containerd.sock" -n "$LAZY_BUILD_NS" images convert \
            --estargz --oci --estargz-chunk-size "$LAZY_CHUNK" "$gzip_ref" "$ref" &&
        "${build[@]}" images push --plain-http "$ref" || return 1
    LAZY_MANIFEST=$WORK/manifests/lazy.json
    # Straight from the upstream, as the other seeds' manifests were read: before any mark.
    curl -fsS --max-time 10 -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$UP/v2/$LAZY_REPO/manifests/$TAG" >"$LAZY_MANIFEST" || return 1
    # Removing the images lets containerd's collector delete their content, so that the full
    # pull below cannot find the layer already there.
    "${build[@]}" images rm --sync "$gzip_ref" "$ref"
}

# containerd_has DIGEST — whether the private containerd's content store holds that blob, in
# any namespace (the store keeps one file per digest).
containerd_has() {
    [[ -e $WORK/containerd/root/io.containerd.content.v1.content/blobs/sha256/${1#sha256:} ]]
}

containerd_lacks() { ! containerd_has "$1"; }

# fills_done URL — whether the wharf at URL has no fill running.
fills_done() { (($(metric "$1" wharf_fills_in_flight) == 0)); }

test_lazy() {
    local began=$SECONDS
    check "lazy: lazypull.py and throttle.py compile" \
        env PYTHONPYCACHEPREFIX="$WORK/pycache" python3 -m py_compile "$HERE/lazypull.py" "$HERE/throttle.py"
    if ((${#CTR[@]} == 0)); then
        start_containerd || return 0
    fi
    LAZY_MANIFEST=
    check "lazy: build an eStargz image offline (mkimage.py, ctr-remote convert) and push it" \
        build_lazy_image
    if [[ ! -s $LAZY_MANIFEST ]]; then
        fail "lazy: (the rest not run: no eStargz image)"
        return 0
    fi
    local layer size toc image
    read -r layer size toc < <(jq -r '.layers[] | select(.annotations["containerd.io/snapshot/stargz/toc.digest"])
        | "\(.digest) \(.size) \(.annotations["containerd.io/snapshot/stargz/toc.digest"])"' "$LAZY_MANIFEST") || true
    image=$(digest_of_stdin <"$LAZY_MANIFEST")
    info "lazy: $LAZY_REPO:$TAG = $image; eStargz layer $layer, $size bytes, TOC $toc"
    if wait_until 10 containerd_lacks "$layer"; then
        pass "lazy: the converted layer is gone from containerd before the pulls"
    else
        fail "lazy: the converted layer is gone from containerd before the pulls" \
            "containerd still holds $layer: the full pull would not ask wharf for it"
    fi

    # A wharf of its own, with an empty cache, behind the slow link.
    local link_port port
    read -r link_port port <<<"$(free_ports 2)"
    start_bg lazy-link python3 "$HERE/throttle.py" "$link_port" "$UP_PORT" "$LAZY_RATE"
    local link_pid=$STARTED_PID
    if ! wait_until 10 curl -fsS --max-time 2 "http://127.0.0.1:$link_port/v2/"; then
        fail "lazy: the slow link to the upstream answers" "$(tail -n 5 "$LOGS/lazy-link.out")"
        stop_pid "$link_pid"
        return 0
    fi
    local url=http://127.0.0.1:$port
    cat >"$WORK/wharf-lazy.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[cache]
dir = "$WORK/cache-lazy"
# The window the timing above is worked out with (longer than the default 100ms, so that the
# check does not depend on how fast this machine is).
range_lookahead = "1s"

[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:$link_port"
EOF
    launch_wharf wharf-lazy "$WORK/wharf-lazy.toml" "$url"

    # The lazy pull, on the cold blob.
    local mark fetched0 fell0 side_bytes0 t0 ms
    mark=$(upstream_mark)
    fetched0=$(metric "$url" wharf_side_fetches_total result=fetched)
    fell0=$(metric "$url" wharf_side_fetches_total result=fell_back)
    side_bytes0=$(metric "$url" wharf_side_fetch_bytes_total)
    t0=$(now_ms)
    if timeout 90 python3 "$HERE/lazypull.py" "$url" "$LAZY_REPO" "$TAG" \
        >"$WORK/lazypull.out" 2>"$LOGS/lazypull.err"; then
        pass "lazy: lazypull.py replays stargz-snapshotter's requests to the end"
    else
        local lines
        mapfile -t lines < <(cat "$LOGS/lazypull.err" "$WORK/lazypull.out" | tail -n 15)
        fail "lazy: lazypull.py replays stargz-snapshotter's requests to the end" "${lines[@]}"
    fi
    ms=$(($(now_ms) - t0))
    expect_eq "lazy: wharf serves the manifest naming the eStargz layer, its size and toc.digest" \
        "$layer $size $toc" "$(lazy_fact layer)"
    expect_eq "lazy: first look (bytes=0-1) at the cold blob: 206, the whole length in Content-Range" \
        "206 $size 2" "$(lazy_fact probe)"
    expect_eq "lazy: HEAD gives the layer's length" "200 $size" "$(lazy_fact head)"
    expect_eq "lazy: the footer (the last 50,000-byte-aligned chunk) is answered 206, exactly" \
        "206 ok" "$(lazy_fact footer_answer)"
    expect_eq "lazy: its last 51 bytes are an eStargz footer naming the TOC offset" ok \
        "$(lazy_fact footer | cut -d' ' -f1)"
    expect_cmp "lazy: the footer was side-fetched while the cold fill ran (wharf_side_fetches_total{result=\"fetched\"} rose)" \
        "$(lazy_fact footer_side_fetched)" -ge 1
    expect_eq "lazy: the TOC, [toc offset, footer), is answered 206 with all its bytes" "206 True" \
        "$(lazy_fact toc_answer)"
    expect_eq "lazy: the TOC JSON hashes to the manifest's toc.digest" "$toc" "$(lazy_fact toc_digest)"
    local picked=0 files=0 kinds=- regions=0 shape=ok
    read -r picked files kinds regions <<<"$(lazy_fact chunks_picked)"
    if ! ((files >= 3 && regions >= 2)) || [[ $kinds != chunk,reg ]]; then
        shape="$picked chunks of $files files in $regions ranges, entry types $kinds"
    fi
    expect_eq "lazy: the chunks asked for are reg and chunk entries of several files, in several ranges" \
        ok "$shape"
    expect_eq "lazy: $regions ranges in one request: 206 multipart/byteranges" "206 multipart/byteranges" \
        "$(lazy_fact chunks_answer)"
    expect_eq "lazy: the multipart body holds one part per range asked, each whole" ok \
        "$(lazy_fact chunks_parts)"
    expect_eq "lazy: each of the $picked chunks gunzips to the bytes its chunkDigest names" \
        "$picked of $picked" "$(lazy_fact chunks_verified)"
    info "lazy: the lazy pull took $ms ms: the footer $(lazy_fact footer_ms) ms, the TOC" \
        "$(lazy_fact toc_ms) ms, the chunks $(lazy_fact chunks_ms) ms with" \
        "$(lazy_fact chunks_side_fetched) side fetches (bytes=$(lazy_fact chunks_ranges))"

    # The one fill goes on to the end and is what the upstream sent, besides the side fetches.
    if wait_until 60 fills_done "$url"; then
        pass "lazy: the cold fill ran to the end"
    else
        fail "lazy: the cold fill ran to the end" "wharf_fills_in_flight = $(metric "$url" wharf_fills_in_flight)"
    fi
    log_barrier "lazy" "$UPSTREAM_ACCESS_LOG" "http://$UP" || true
    local sent side side_bytes bound
    sent=$(upstream_bytes_since "$mark" "$layer")
    side=$(($(metric "$url" wharf_side_fetches_total result=fetched) - fetched0 +
        $(metric "$url" wharf_side_fetches_total result=fell_back) - fell0))
    side_bytes=$(($(metric "$url" wharf_side_fetch_bytes_total) - side_bytes0))
    # Each side fetch asks for exactly its range; the 5% allows for what a GET cut short (a
    # client gone, a resume) sent that was not relayed.
    bound=$((size + size / 20 + side_bytes))
    if ((sent >= size && sent <= bound)); then
        pass "lazy: the upstream sent the layer once (1.05 × its size), besides $side side-fetched ranges"
    else
        fail "lazy: the upstream sent the layer once (1.05 × its size), besides $side side-fetched ranges" \
            "sent $sent bytes of a $size-byte layer; at most $bound were expected ($side_bytes side-fetched)"
    fi
    info "lazy: the upstream sent $sent bytes for the layer: the fill's $size and $((sent - size))" \
        "for $side side fetches, of which $side_bytes bytes were relayed"

    # The whole image, pulled by containerd through the same wharf: the layer is a cache hit.
    render_hosts "$WORK/containerd/hosts-lazy" "$url"
    read_metrics_of "$url"
    local ref=docker.io/$LAZY_REPO:$TAG hits0
    hits0=$(wmetric wharf_cache_results_total kind=blob result=hit)
    mark=$(upstream_mark)
    pull_through "lazy: ctr pull $ref through the same wharf" - \
        "${CTR[@]}" images pull --hosts-dir "$WORK/containerd/hosts-lazy" --plain-http \
        --snapshotter native "$ref"
    expect_eq "lazy: ctr: the image digest matches the upstream" "$image" "$(ctr_digest "$ref")"
    # This wharf was never asked for the image's config before, so only the layer can be a hit.
    expect_cmp "lazy: the layer was a cache hit (wharf_cache_results_total{kind=\"blob\",result=\"hit\"})" \
        "$(($(wmetric wharf_cache_results_total kind=blob result=hit) - hits0))" -ge 1
    expect_eq "lazy: the upstream sent no byte of the layer for the full pull" 0 \
        "$(upstream_bytes_since "$mark" "$layer")"
    expect_eq "lazy: containerd holds the layer now (so it came from wharf)" yes \
        "$(containerd_has "$layer" && echo yes || echo no)"
    local errors
    errors=$(curl -fsS --max-time 5 "$url/metrics" | grep -E '^wharf_http_requests_total\{' |
        grep -E 'status="5[0-9][0-9]"' || true)
    expect_eq "lazy: wharf answered no request with 5xx" "" "$errors"
    read_metrics_of "$WHARF_URL"
    stop_pid "${WHARF_PIDS[wharf-lazy]}"
    stop_pid "$link_pid"
    info "lazy: the phase took $((SECONDS - began)) s"
}
