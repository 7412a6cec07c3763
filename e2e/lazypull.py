#!/usr/bin/env python3
"""Replay an eStargz lazy pull against a registry, the way stargz-snapshotter does it.

    lazypull.py REGISTRY_URL REPO TAG

REGISTRY_URL is the mirror under test (http://127.0.0.1:PORT); its /metrics is read between
steps. For the layer of REPO:TAG that carries a `containerd.io/snapshot/stargz/toc.digest`
annotation, this asks for what stargz-snapshotter asks for before and while a container runs,
in the same shapes (its reads are aligned to its 50,000-byte chunks, neighbours merged, several
at once sent as one multi-range request):

  1. `GET Range: bytes=0-1` (its first look at the blob) and `HEAD` (its size probe);
  2. the footer: the blob's last 51 bytes, asked for as the last aligned chunk;
  3. the TOC: `[toc offset, footer)`, a gzip member holding one tar entry, stargz.index.json,
     whose JSON bytes must hash to the annotation;
  4. file chunks of several files in one multi-range request, each chunk's gzip member gunzipped
     and its bytes checked against the TOC's chunkDigest.

Every answer is checked byte for byte; the multipart body is parsed by hand, strictly, as RFC
9110 §14.6 frames it. Prints one `key value...` line per fact for the calling test to assert,
and exits non-zero (saying why) when a step cannot go on. Standard library only.

What the estargz spec (stargz-snapshotter docs/estargz.md, estargz/gzip.go) fixes:
- footer: an empty gzip member of 51 bytes whose FEXTRA field holds the subfield 'S','G' with
  the 22 bytes "%016x" % toc_offset + "STARGZ";
- toc.digest: sha256 of the uncompressed TOC JSON (not of the gzip member, not of the tar);
- a `reg` or `chunk` entry's bytes: the gzip member starting at its `offset` and running to the
  next entry's offset that starts a member (innerOffset 0), or to the end of the blob; in it,
  `innerOffset` bytes to skip, then `chunkSize` bytes (0 in a file's last chunk: the rest of
  the file); chunkDigest is the sha256 of those uncompressed bytes.
"""

import hashlib
import http.client
import io
import json
import re
import sys
import tarfile
import time
import urllib.parse
import zlib

FOOTER_SIZE = 51
STARGZ_CHUNK = 50000  # stargz-snapshotter's default fetch unit (fs/remote: defaultChunkSize)
TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
TOC_NAME = "stargz.index.json"
ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
TIMEOUT = 60


class Failed(Exception):
    pass


def report(key, *values):
    print(key, *values, flush=True)


class Registry:
    def __init__(self, url):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.conn = None

    def request(self, method, path, headers=None):
        """One request on a kept-alive connection (a new one if the last was closed)."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
            try:
                self.conn.request(method, path, headers=headers or {})
                resp = self.conn.getresponse()
                body = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        raise AssertionError("unreachable")

    def metric(self, name, **labels):
        """Sum of the samples of `name` whose labels include `labels`."""
        status, _, body = self.request("GET", "/metrics")
        if status != 200:
            raise Failed(f"/metrics answered {status}")
        total = 0.0
        for line in body.decode().splitlines():
            m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return int(total)


def aligned(first, last, size):
    """stargz-snapshotter's fetch region for bytes first..last (inclusive): whole chunks."""
    return (first - first % STARGZ_CHUNK, min((last // STARGZ_CHUNK + 1) * STARGZ_CHUNK, size) - 1)


def merge(regions):
    """Sorted, with overlapping and touching regions merged (as stargz's regionSet does)."""
    out = []
    for b, e in sorted(regions):
        if out and b <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((b, e))
    return out


def content_range(value):
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", (value or "").strip())
    if not m:
        raise Failed(f"bad Content-Range: {value!r}")
    return tuple(int(g) for g in m.groups())


def gunzip_member(data):
    """The uncompressed bytes of the gzip member at the start of data (what follows is left)."""
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(data)
    if not d.eof:
        raise Failed("the gzip member does not end within the bytes given")
    return out


def parse_footer(footer):
    """The TOC offset written in an eStargz footer."""
    if len(footer) != FOOTER_SIZE:
        raise Failed(f"footer is {len(footer)} bytes")
    id1, id2, cm, flg = footer[0], footer[1], footer[2], footer[3]
    if (id1, id2, cm) != (0x1F, 0x8B, 8) or not flg & 0x04:
        raise Failed(f"footer is not a gzip header with FEXTRA: {footer[:4].hex()}")
    xlen = int.from_bytes(footer[10:12], "little")
    extra = footer[12:12 + xlen]
    si1, si2, sublen, sub = extra[0:1], extra[1:2], int.from_bytes(extra[2:4], "little"), extra[4:]
    if xlen != 26 or (si1, si2) != (b"S", b"G") or sublen != 22 or sub[16:] != b"STARGZ":
        raise Failed(f"footer's extra field is not eStargz's: {extra!r}")
    if gunzip_member(footer) != b"":
        raise Failed("footer is not an empty gzip member")
    return int(sub[:16], 16)


def parse_multipart(body, boundary, size):
    """The parts of a multipart/byteranges body: [(first, last, bytes)], framed strictly."""
    delim = b"--" + boundary.encode()
    parts, pos = [], body.find(delim)
    if pos < 0:
        raise Failed("no boundary in the multipart body")
    while True:
        pos += len(delim)
        if body[pos:pos + 2] == b"--":
            break
        if body[pos:pos + 2] != b"\r\n":
            raise Failed(f"boundary not followed by CRLF at {pos}")
        end = body.find(b"\r\n\r\n", pos + 2)
        if end < 0:
            raise Failed("part headers do not end")
        headers = {}
        for line in body[pos + 2:end].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        first, last, total = content_range(headers.get("content-range"))
        if total != size:
            raise Failed(f"part's Content-Range total {total}, blob is {size}")
        start = end + 4
        data = body[start:start + last - first + 1]
        if len(data) != last - first + 1:
            raise Failed(f"part {first}-{last} is cut short")
        parts.append((first, last, data))
        pos = start + len(data)
        if body[pos:pos + 2 + len(delim)] != b"\r\n" + delim:
            raise Failed(f"part {first}-{last} is not followed by CRLF and the boundary")
        pos += 2
    return parts


def chunk_spans(entries, size):
    """For each entry holding file bytes: (entry, member start, member end, uncompressed len)."""
    spans, next_offset = [], size
    # Walking back, as estargz's reader does: an entry's member runs to the next member start.
    for e in reversed(entries):
        if e.get("type") in ("reg", "chunk") and e.get("chunkDigest"):
            spans.append([e, e["offset"], next_offset])
        if e.get("offset", 0) != 0 and e.get("innerOffset", 0) == 0:
            next_offset = e["offset"]
    spans.reverse()
    file_size = {}
    for e in entries:
        if e.get("type") == "reg":
            file_size[e["name"]] = e.get("size", 0)
    out = []
    for e, start, end in spans:
        length = e.get("chunkSize") or file_size[e["name"]] - e.get("chunkOffset", 0)
        out.append((e, start, end, length))
    return out


def main():
    url, repo, tag = sys.argv[1:4]
    reg = Registry(url)

    # The manifest, and in it the eStargz layer.
    status, _, body = reg.request("GET", f"/v2/{repo}/manifests/{tag}", {"Accept": ACCEPT})
    if status != 200:
        raise Failed(f"manifest: {status}")
    manifest = json.loads(body)
    layers = [l for l in manifest.get("layers", []) if TOC_ANNOTATION in l.get("annotations", {})]
    if len(layers) != 1:
        raise Failed(f"{len(layers)} layers carry {TOC_ANNOTATION}")
    layer = layers[0]
    digest, size, toc_digest = layer["digest"], layer["size"], layer["annotations"][TOC_ANNOTATION]
    report("layer", digest, size, toc_digest)
    blob = f"/v2/{repo}/blobs/{digest}"

    # 1. First look and size probe.
    status, headers, body = reg.request("GET", blob, {"Range": "bytes=0-1"})
    report("probe", status, content_range(headers.get("content-range"))[2] if status == 206 else "-",
           len(body))
    status, headers, _ = reg.request("HEAD", blob)
    report("head", status, headers.get("content-length"))

    # 2. The footer, as the last aligned chunk.
    fetched0 = reg.metric("wharf_side_fetches_total", result="fetched")
    first, last = aligned(size - FOOTER_SIZE, size - 1, size)
    t0 = time.monotonic()
    status, headers, tail = reg.request("GET", blob, {"Range": f"bytes={first}-{last}",
                                                      "Accept-Encoding": "identity"})
    footer_ms = int((time.monotonic() - t0) * 1000)
    fetched1 = reg.metric("wharf_side_fetches_total", result="fetched")
    got = content_range(headers.get("content-range")) if status == 206 else None
    report("footer_answer", status, "ok" if got == (first, last, size) and len(tail) == last - first + 1
           else f"asked {first}-{last}/{size}, got {headers.get('content-range')} with {len(tail)} bytes")
    report("footer_side_fetched", fetched1 - fetched0)
    report("footer_ms", footer_ms)
    if status != 206:
        raise Failed(f"footer: {status}")
    toc_offset = parse_footer(tail[-FOOTER_SIZE:])
    footer_start = size - FOOTER_SIZE
    if not 0 < toc_offset < footer_start:
        raise Failed(f"TOC offset {toc_offset} outside the blob")
    report("footer", "ok", toc_offset)

    # 3. The TOC.
    t0 = time.monotonic()
    status, headers, toc_member = reg.request("GET", blob, {"Range": f"bytes={toc_offset}-{footer_start - 1}",
                                                            "Accept-Encoding": "identity"})
    report("toc_ms", int((time.monotonic() - t0) * 1000))
    report("toc_answer", status, len(toc_member) == footer_start - toc_offset)
    if status != 206:
        raise Failed(f"TOC: {status}")
    if toc_offset >= first and tail[toc_offset - first:footer_start - first] != toc_member:
        raise Failed("the TOC bytes differ from the same bytes in the footer's answer")
    with tarfile.open(fileobj=io.BytesIO(gunzip_member(toc_member))) as tar:
        member = tar.next()
        if member is None or member.name != TOC_NAME:
            raise Failed(f"TOC tar entry is {member and member.name!r}")
        toc_json = tar.extractfile(member).read()
    report("toc_digest", "sha256:" + hashlib.sha256(toc_json).hexdigest())
    entries = json.loads(toc_json)["entries"]

    # 4. Chunks of several files, every other one in blob order so that they do not merge into
    # one range, in one multi-range request.
    spans = chunk_spans(entries, size)
    picked = spans[::2]
    files = sorted({e["name"] for e, *_ in picked})
    kinds = sorted({e["type"] for e, *_ in picked})
    regions = merge(aligned(start, end - 1, size) for _, start, end, _ in picked)
    report("chunks_picked", len(picked), len(files), ",".join(kinds), len(regions))
    side0 = reg.metric("wharf_side_fetches_total", result="fetched")
    ranges = ",".join(f"{b}-{e}" for b, e in regions)
    report("chunks_ranges", ranges)
    t0 = time.monotonic()
    status, headers, body = reg.request("GET", blob, {"Range": f"bytes={ranges}", "Accept-Encoding": "identity"})
    report("chunks_ms", int((time.monotonic() - t0) * 1000))
    ctype = headers.get("content-type", "")
    report("chunks_side_fetched", reg.metric("wharf_side_fetches_total", result="fetched") - side0)
    m = re.fullmatch(r'multipart/byteranges;\s*boundary="?([^";]+)"?', ctype)
    report("chunks_answer", status, ctype.split(";")[0])
    if status != 206 or not m:
        raise Failed(f"chunks: {status} {ctype}")
    parts = parse_multipart(body, m.group(1), size)
    report("chunks_parts", "ok" if [(b, e) for b, e, _ in parts] == regions
           else f"asked {regions}, got {[(b, e) for b, e, _ in parts]}")
    verified, bad = 0, []
    for e, start, end, length in picked:
        part = next((p for p in parts if p[0] <= start and end - 1 <= p[1]), None)
        if part is None:
            bad.append(f"{e['name']}@{e.get('chunkOffset', 0)}: no part holds it")
            continue
        data = gunzip_member(part[2][start - part[0]:end - part[0]])
        inner = e.get("innerOffset", 0)
        chunk = data[inner:inner + length]
        if len(chunk) == length and "sha256:" + hashlib.sha256(chunk).hexdigest() == e["chunkDigest"]:
            verified += 1
        else:
            bad.append(f"{e['name']}@{e.get('chunkOffset', 0)}: {len(chunk)} of {length} bytes, digest differs")
    report("chunks_verified", verified, "of", len(picked), *bad)


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print(f"lazy pull stopped: {e}", file=sys.stderr)
        sys.exit(1)
