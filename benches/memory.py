#!/usr/bin/env python3
"""What a mirror holds in memory while it fills, side by side: wharf and CNCF distribution's proxy.

    python3 benches/memory.py --wharf target/release/wharf     # as root, after compare.sh's installs

Two rows, each against an empty cache of a fresh mirror, peak RSS (VmHWM of the mirror's
processes) per run:
  - cold fills: 10 clients at once, each on its own uncached blob (4 MiB to 1 GiB, 1.7 GiB in
    all), from the same CNCF distribution storage served twice: over plain HTTP/1.1, and with
    http.tls (Go's server then speaks HTTP/2, whose DATA frames are at most 16 KiB, as registries
    and their CDNs do). Wall time, and every client's bytes checked.
  - churn: 32 clients over 48 distinct 2 MiB blobs through a cache of 32 MiB (wharf's max_size;
    distribution's proxy has no size bound), 12 requests each in a random order, one in four
    abandoned halfway.
Results go to stdout and to --results as JSON lines, like compare.py's.
"""

import argparse
import json
import multiprocessing
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import compare
from compare import Processes, http_get, log, peak_rss, reset_peak_rss, seed, wait_http

COLD_LAYERS = "4M,8M,16M,32M,64M,96M,128M,160M,256M,1G"
CHURN_BLOBS = 48
CHURN_CLIENTS = 32
CHURN_REQUESTS = 12


def make_ca(work):
    """A private CA and a certificate for 127.0.0.1 signed by it: (ca.crt, tls.crt, tls.key)."""
    d = work / "pki"
    d.mkdir()
    run = lambda *argv: subprocess.run(argv, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench CA",
        "-keyout", d / "ca.key", "-out", d / "ca.crt")
    run("openssl", "req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", d / "tls.key",
        "-out", d / "tls.csr")
    (d / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
    run("openssl", "x509", "-req", "-in", d / "tls.csr", "-CA", d / "ca.crt", "-CAkey",
        d / "ca.key", "-CAcreateserial", "-days", "2", "-extfile", d / "ext.cnf",
        "-out", d / "tls.crt")
    return d / "ca.crt", d / "tls.crt", d / "tls.key"


def start_tls_registry(procs, work, port, cert, key):
    """The upstream's storage served again, with http.tls."""
    config = work / "registry-tls.yml"
    config.write_text(f"""version: 0.1
log: {{level: warn, formatter: text}}
storage:
  filesystem: {{rootdirectory: {work / 'registry-data'}}}
http:
  addr: 127.0.0.1:{port}
  tls: {{certificate: {cert}, key: {key}}}
""")
    procs.start("upstream-tls", ["docker-registry", "serve", str(config)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"https://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    sys.exit("the HTTPS upstream did not start")


def start_mirror(procs, work, binary, kind, name, upstream_url, ca=None, max_size="100GiB"):
    port = compare.free_ports(1)[0]
    if kind == "wharf":
        mirror = compare.start_wharf(procs, work, binary, name, port, upstream_url, max_size, ca)
    else:
        mirror = compare.start_distribution(procs, work, name, port, upstream_url, ca)
    if not wait_http(port, "/v2/"):
        sys.exit(f"{name} did not start; see {procs.logs}")
    return mirror


def one_get(port, path, abandon_at=None):
    """(status, bytes) of a whole GET; ("abandoned", bytes) of one closed after `abandon_at`
    bytes; ("error", why) of one that failed."""
    try:
        if abandon_at is None:
            r = http_get(port, path, timeout=600)
            return r.status, r.length
        with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            got = 0
            while got < abandon_at and (data := s.recv(256 * 1024)):
                got += len(data)
        return "abandoned", got
    except Exception as e:  # reported, not raised
        return "error", str(e)


def _get(barrier, out, i, port, path):
    barrier.wait()
    out.put((i, one_get(port, path)))


def cold_fills(mirror, image):
    """Every layer of `image` asked for at once, one client process each."""
    layers = image["layers"]
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(len(layers)), ctx.Queue()
    reset_peak_rss(mirror.pids())
    started = time.monotonic()
    procs = [ctx.Process(target=_get, args=(barrier, out, i, mirror.port,
                                            compare.blob_path(image, d)))
             for i, (d, _) in enumerate(layers)]
    for p in procs:
        p.start()
    results = dict(out.get() for _ in layers)
    wall = time.monotonic() - started
    for p in procs:
        p.join()
    failed = [i for i, (d, size) in enumerate(layers) if results[i] != (200, size)]
    return wall, peak_rss(mirror.pids()) / 1e6, len(failed)


def _churner(out, i, port, paths, seed_):
    rng = random.Random(seed_)
    failed = 0
    for path, size in rng.sample(paths, CHURN_REQUESTS):
        abandon_at = size // 2 if rng.random() < 0.25 else None
        status, got = one_get(port, path, abandon_at)
        failed += not (status == 200 and got == size or status == "abandoned")
    out.put(failed)


def churn(mirror, image):
    paths = [(compare.blob_path(image, d), size) for d, size in image["layers"]]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    reset_peak_rss(mirror.pids())
    started = time.monotonic()
    procs = [ctx.Process(target=_churner, args=(out, i, mirror.port, paths, 1000 + i))
             for i in range(CHURN_CLIENTS)]
    for p in procs:
        p.start()
    failed = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return time.monotonic() - started, peak_rss(mirror.pids()) / 1e6, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wharf", required=True, type=Path, help="the wharf binary")
    parser.add_argument("--results", type=Path, default=Path("benches/memory.jsonl"))
    parser.add_argument("--mirrors", default="wharf,distribution")
    parser.add_argument("--tests", default="cold,churn")
    args = parser.parse_args()
    mirrors = args.mirrors.split(",")
    tests = args.tests.split(",")

    work = Path(tempfile.mkdtemp(prefix="wharf-memory-"))
    (work / "logs").mkdir()
    procs = Processes(work / "logs")
    results = []
    try:
        up_port, tls_port = compare.free_ports(2)
        upstream = compare.Upstream(procs, work, up_port)
        ca, cert, key = make_ca(work)
        https_url = start_tls_registry(procs, work, tls_port, cert, key)
        n = 0
        if "cold" in tests:
            for scheme, url, trust in [("http1", upstream.url, None), ("h2", https_url, ca)]:
                for kind in mirrors:
                    n += 1
                    log(f"seeding 10 fresh blobs (1.7 GiB) for {kind} over {scheme}")
                    image = seed(work, upstream, f"bench/cold{n}", COLD_LAYERS)
                    mirror = start_mirror(procs, work, args.wharf, kind, f"{kind}-{scheme}", url, trust)
                    log(f"10 cold fills at once, {kind} over {scheme}")
                    wall, rss, failed = cold_fills(mirror, image)
                    results.append(dict(metric=f"cold10_{scheme}_peak_rss", mirror=kind,
                                        value=rss, unit="MB", wall_s=wall, failed=failed))
                    procs.stop(mirror.proc)
        if "churn" in tests:
            image = seed(work, upstream, "bench/churn",
                         ",".join(["2M"] * CHURN_BLOBS))
            for kind in mirrors:
                mirror = start_mirror(procs, work, args.wharf, kind, f"{kind}-churn",
                                      upstream.url, max_size="32MiB")
                log(f"churn: {CHURN_CLIENTS} clients, {CHURN_BLOBS} x 2 MiB, {kind}")
                wall, rss, failed = churn(mirror, image)
                results.append(dict(metric="churn_peak_rss", mirror=kind, value=rss, unit="MB",
                                    wall_s=wall, failed=failed))
                procs.stop(mirror.proc)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    with open(args.results, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    for r in results:
        extra = f"  wall {r['wall_s']:.1f} s, failed {r['failed']}"
        print(f"{r['metric']:26} {r['mirror']:13} {r['value']:8.1f} {r['unit']}{extra}")


if __name__ == "__main__":
    main()
