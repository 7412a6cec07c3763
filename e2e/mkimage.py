#!/usr/bin/env python3
"""Write a small but real container image into an OCI image layout, offline.

Each layer is a gzip tar holding a text file and files of random bytes, so every run makes
images with fresh digests and nothing can be answered from a stale cache. The config carries
rootfs.diff_ids (sha256 of the uncompressed tars), architecture and os, which is what docker,
podman and containerd check before they unpack.

    mkimage.py LAYOUT TAG --name NAME --layers 4M,1M --platform linux/amd64 [--platform linux/arm64]

Layers are separated by commas; a layer given as sizes joined by "+" (e.g. 3M+1M+4K) holds one
random file per size, the shape of a real filesystem layer that a lazy puller reads file by file.

One --platform writes an image manifest; several write an image index over one manifest each.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
CREATED = "2024-01-01T00:00:00Z"


def parse_size(text):
    units = {"K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class Layout:
    """An OCI image layout directory: blobs by digest plus a top-level index.json."""

    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(root, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def put(self, data, media_type):
        """Store bytes as a blob and return its descriptor."""
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.root, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

    def put_json(self, obj, media_type):
        return self.put(json.dumps(obj, indent=2).encode(), media_type)

    def tag(self, descriptor, tag):
        path = os.path.join(self.root, "index.json")
        index = {"schemaVersion": 2, "manifests": []}
        if os.path.exists(path):
            with open(path) as f:
                index = json.load(f)
        ref = "org.opencontainers.image.ref.name"
        index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(ref) != tag]
        index["manifests"].append(dict(descriptor, annotations={ref: tag}))
        with open(path, "w") as f:
            json.dump(index, f, indent=2)


def layer_tar(name, number, sizes):
    """An uncompressed tar with a directory, a readable marker file and one file of random bytes
    per entry of `sizes` (random, so that no compressor can shrink them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(path, data=None):
            info = tarfile.TarInfo(path)
            info.mtime = 0
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))

        add("e2e")
        add(f"e2e/layer-{number}.txt", f"{name} layer {number}\n".encode())
        if len(sizes) == 1:
            add(f"e2e/layer-{number}.bin", os.urandom(sizes[0]))
        else:
            add(f"e2e/layer-{number}")
            for part, size in enumerate(sizes, start=1):
                add(f"e2e/layer-{number}/file-{part}.bin", os.urandom(size))
    return buf.getvalue()


def write_image(layout, name, sizes, os_name, arch, variant, compress=True):
    layers, diff_ids, history = [], [], []
    for number, files in enumerate(sizes, start=1):
        tar = layer_tar(name, number, files)
        size = sum(files)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        if compress:
            # mtime=0 keeps the gzip header free of the wall clock.
            layers.append(layout.put(gzip.compress(tar, compresslevel=1, mtime=0), OCI_LAYER_GZIP))
        else:
            layers.append(layout.put(tar, OCI_LAYER_TAR))
        history.append({"created": CREATED, "created_by": f"e2e layer {number} ({size} random bytes)"})
    config = {
        "created": CREATED,
        "architecture": arch,
        "os": os_name,
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/e2e/none"],
                   "Labels": {"e2e.name": name}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    if variant:
        config["variant"] = variant
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": layout.put_json(config, OCI_CONFIG),
        "layers": layers,
    }
    descriptor = layout.put_json(manifest, OCI_MANIFEST)
    platform = {"architecture": arch, "os": os_name}
    if variant:
        platform["variant"] = variant
    return descriptor, platform


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layout")
    parser.add_argument("tag")
    parser.add_argument("--name", required=True, help="written into the image, for humans")
    parser.add_argument("--layers", required=True,
                        help="comma-separated random-byte sizes, e.g. 8M,2M,4K; one layer's files joined by +")
    parser.add_argument("--platform", action="append", required=True, help="os/arch[/variant]")
    parser.add_argument("--uncompressed", action="store_true",
                        help="plain tar layers (fast to build when size, not realism, matters)")
    args = parser.parse_args()

    layout = Layout(args.layout)
    sizes = [[parse_size(f) for f in layer.split("+")] for layer in args.layers.split(",")]
    entries = []
    for platform in args.platform:
        os_name, arch, *variant = platform.split("/")
        entries.append(write_image(layout, args.name, sizes, os_name, arch, variant[0] if variant else None,
                                   compress=not args.uncompressed))

    if len(entries) == 1:
        top = entries[0][0]
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [dict(d, platform=p) for d, p in entries]}
        top = layout.put_json(index, OCI_INDEX)
    layout.tag(top, args.tag)
    print(top["digest"])


if __name__ == "__main__":
    main()
