#!/usr/bin/env bash
# Install everything e2e/run.sh needs, from Debian 12 (bookworm) packages. Safe to run again.
set -euo pipefail

PACKAGES=(
    docker-registry # CNCF distribution: the upstream registry
    skopeo          # pushes the seed images; a client under test
    docker.io       # dockerd + docker CLI: a client under test (registry-mirrors)
    containerd      # containerd + ctr: a client under test (hosts.toml, ?ns=)
    stargz-snapshotter # ctr-remote: converts an image to eStargz for the lazy-pull checks
    runc            # runtime the daemons expect to find, even when only pulling
    podman          # a client under test (registries.conf mirrors)
    umoci           # cross-checks that the images built offline are valid
    apache2-utils   # htpasswd: the bcrypt credentials file of the authentication checks
    python3         # builds the OCI image layouts (standard library only)
    jq
    curl
    openssl         # a private CA for the HTTPS checks
    prometheus      # promtool: lints a live /metrics page
    procps          # ps: find the children a daemon started, to stop them
    mount           # umount: release anything a killed daemon left mounted
    coreutils       # timeout, sha256sum, mktemp
)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
# Recommends are not needed: nothing here runs a container, the suite only pulls and unpacks.
"${SUDO[@]}" apt-get install -y --no-install-recommends "${PACKAGES[@]}"

for tool in docker-registry skopeo dockerd docker containerd ctr ctr-remote podman umoci python3 jq curl openssl promtool htpasswd; do
    command -v "$tool" >/dev/null || { echo "install.sh: $tool is still missing" >&2; exit 1; }
done
echo "e2e dependencies installed"
