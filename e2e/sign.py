#!/usr/bin/env python3
"""Sign an image on a registry the way cosign's classic layout does, offline.

    sign.py REGISTRY REPO DIGEST KEY_PEM

Writes a simple-signing payload naming DIGEST, signs it with the ECDSA P-256 private key
KEY_PEM (openssl, SHA-256, ASN.1 DER: what cosign produces), and pushes the payload and a
manifest carrying the signature in the `dev.cosignproject.cosign/signature` annotation under the
tag `sha256-<hex>.sig` of REPO, over plain HTTP with the registry API.
"""

import base64
import hashlib
import json
import subprocess
import sys
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PAYLOAD = "application/vnd.dev.cosign.simplesigning.v1+json"


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as response:
        return response.status, response.headers


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


def main():
    registry, repo, digest, key = sys.argv[1:5]
    base = f"http://{registry}"
    payload = json.dumps({
        "critical": {
            "identity": {"docker-reference": f"{registry}/{repo}"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }, separators=(",", ":")).encode()
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=payload,
                               capture_output=True, check=True).stdout
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
    tag = digest.replace(":", "-") + ".sig"
    request("PUT", f"{base}/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST})


if __name__ == "__main__":
    main()
