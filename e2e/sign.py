#!/usr/bin/env python3
"""Sign an image on a registry the way cosign does, offline.

    sign.py REGISTRY REPO DIGEST KEY_PEM            # classic layout
    sign.py REGISTRY REPO DIGEST KEY_PEM --bundle   # a sigstore bundle under the fallback tag

Classic: writes a simple-signing payload naming DIGEST, signs it with the ECDSA P-256 private
key KEY_PEM (openssl, SHA-256, ASN.1 DER: what cosign produces), and pushes the payload and a
manifest carrying the signature in the `dev.cosignproject.cosign/signature` annotation under the
tag `sha256-<hex>.sig` of REPO.

Bundle: signs the manifest's own bytes (a sigstore message signature, as `cosign sign
--new-bundle-format` with a key makes), pushes the bundle as the layer of a referrer manifest
whose subject is DIGEST, and lists that referrer in an index under the referrers fallback tag
`sha256-<hex>`, as cosign does on registries without the referrers API.

Both go over plain HTTP with the registry API.
"""

import base64
import hashlib
import json
import subprocess
import sys
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
PAYLOAD = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY = "application/vnd.oci.empty.v1+json"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as response:
        return response.read(), response.headers


def sign(key, message):
    return subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=message,
                          capture_output=True, check=True).stdout


def put_manifest(base, repo, reference, manifest, media_type):
    request("PUT", f"{base}/v2/{repo}/manifests/{reference}", manifest, {"Content-Type": media_type})


def push_blob(base, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _, headers = request("POST", f"{base}/v2/{repo}/blobs/uploads/", b"")
    location = headers["Location"]
    if location.startswith("/"):
        location = base + location
    joiner = "&" if "?" in location else "?"
    request("PUT", f"{location}{joiner}digest={digest}", data,
            {"Content-Type": "application/octet-stream"})
    return {"digest": digest, "size": len(data)}


def bundle(base, repo, digest, key):
    manifest, headers = request("GET", f"{base}/v2/{repo}/manifests/{digest}", None, {"Accept": ACCEPT})
    bundle = json.dumps({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": "e2e"}},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256",
                              "digest": base64.b64encode(hashlib.sha256(manifest).digest()).decode()},
            "signature": base64.b64encode(sign(key, manifest)).decode(),
        },
    }).encode()
    layer = push_blob(base, repo, bundle)
    empty = push_blob(base, repo, b"{}")
    referrer = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE,
        "config": dict(empty, mediaType=EMPTY),
        "layers": [dict(layer, mediaType=BUNDLE)],
        "subject": {"mediaType": headers["Content-Type"], "digest": digest, "size": len(manifest)},
    }).encode()
    referrer_digest = "sha256:" + hashlib.sha256(referrer).hexdigest()
    put_manifest(base, repo, referrer_digest, referrer, OCI_MANIFEST)
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": referrer_digest, "size": len(referrer),
                       "artifactType": BUNDLE}],
    }).encode()
    put_manifest(base, repo, digest.replace(":", "-"), index, OCI_INDEX)


def main():
    registry, repo, digest, key = sys.argv[1:5]
    base = f"http://{registry}"
    if sys.argv[5:] == ["--bundle"]:
        bundle(base, repo, digest, key)
        return
    payload = json.dumps({
        "critical": {
            "identity": {"docker-reference": f"{registry}/{repo}"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }, separators=(",", ":")).encode()
    signature = sign(key, payload)
    layer = push_blob(base, repo, payload)
    config = push_blob(base, repo, json.dumps({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    }).encode())
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"),
        "layers": [dict(layer, mediaType=PAYLOAD, annotations={
            "dev.cosignproject.cosign/signature": base64.b64encode(signature).decode(),
        })],
    }).encode()
    put_manifest(base, repo, digest.replace(":", "-") + ".sig", manifest, OCI_MANIFEST)


if __name__ == "__main__":
    main()
