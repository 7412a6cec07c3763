#!/usr/bin/env python3
"""wharf side by side with the mirrors people run today, against one upstream, in one run.

    bash benches/compare.sh            # installs what it needs, builds wharf, runs this

A CNCF distribution registry is the upstream, seeded offline with a 1 GiB single-layer image, an
8-layer image (4-32 MiB layers), a 1 MiB-layer image and small layers for time-to-first-byte.
Against it, each with an empty cache and its own port:
  - wharf (release build);
  - CNCF distribution in proxy mode (proxy.remoteurl);
  - nginx proxy_cache configured as docker-registry-proxy does it (blobs keyed by digest,
    proxy_cache_lock on with its 880 s timeout, sendfile on, tag manifests cached 5 min);
  - and, as a ceiling, nginx serving the same files statically from local disk.

Every client here is the same for every mirror: raw HTTP/1.1 over a socket, reading with
recv_into into a 1 MiB buffer (which releases the GIL), or wrk. Results go to stdout as a table
and to --results as JSON lines.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MKIMAGE = HERE.parent / "e2e" / "mkimage.py"
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
TAG = "v1"
# What dockerd sends when it pulls by tag.
ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json, "
          "application/vnd.oci.image.index.v1+json, "
          "application/vnd.oci.image.manifest.v1+json")
MIRRORS = ["wharf", "distribution", "nginx"]
TESTS = ["ttfb", "fanin", "warm", "wrk", "skopeo", "slow", "cold", "lazy", "resume", "segments"]
TTFB_PAIRS = 12  # cold layers per mirror for the time-to-first-byte test
COLD_BLOBS = 5  # fresh 256 MiB blobs per mirror for the cold single-stream test
LAZY_CHUNK = 50_000  # stargz's chunk size: its footer read is the blob's last such chunk
LAZY_READS = 8  # scattered file-chunk reads of a lazy pull, after the footer and the TOC
LAZY_FOOTERS = 5  # footers asked direct and through a fresh wharf, for the footer's overhead


def log(*args):
    print("....", *args, file=sys.stderr, flush=True)


# ---- processes -------------------------------------------------------------------------------

class Processes:
    """Every process started, stopped by PID (and its process group) at exit."""

    def __init__(self, logs):
        self.logs = logs
        self.started = []

    def start(self, name, argv, env=None):
        out = open(self.logs / f"{name}.out", "wb")
        err = open(self.logs / f"{name}.err", "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
        self.started.append(p)
        return p

    def stop(self, p):
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop_all(self):
        for p in reversed(self.started):
            self.stop(p)


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_http(port, path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_get(port, path, timeout=2).status < 500:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


# ---- the HTTP client -------------------------------------------------------------------------

class Response:
    def __init__(self):
        self.status = 0
        self.headers = {}
        self.length = 0  # body bytes received
        self.ttfb = None  # seconds from sending the request to the first response byte
        self.elapsed = None  # seconds from sending the request to the last body byte
        self.body = None
        self.finished_at = None  # time.monotonic() at the last byte


def http_get(port, path, headers=(), keep_body=False, timeout=900, method="GET"):
    """One request on a fresh connection, the body read (and counted) to its end."""
    r = Response()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        buf = bytearray(MIB)
        view = memoryview(buf)
        started = time.perf_counter()
        s.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            n = s.recv_into(buf)
            if r.ttfb is None:
                r.ttfb = time.perf_counter() - started
            if n == 0:
                raise OSError(f"connection closed in the headers of {path}")
            head += bytes(view[:n])
        head, _, rest = head.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        r.status = int(status_line.split()[1])
        for line in header_lines:
            k, _, v = line.partition(":")
            r.headers[k.strip().lower()] = v.strip()
        chunks = [rest] if keep_body else None
        received = len(rest)
        if method != "HEAD":
            expected = int(r.headers.get("content-length", -1))
            while expected < 0 or received < expected:
                n = s.recv_into(buf)
                if n == 0:
                    break
                received += n
                if keep_body:
                    chunks.append(bytes(view[:n]))
        r.elapsed = time.perf_counter() - started
        r.finished_at = time.monotonic()
        r.length = received
        if keep_body:
            r.body = b"".join(chunks)
            if r.headers.get("transfer-encoding", "").lower() == "chunked":
                r.body = dechunk(r.body)
                r.length = len(r.body)
        return r


def dechunk(data):
    out, pos = [], 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


# ---- /proc -------------------------------------------------------------------------------------

def process_tree(pid):
    """pid and every descendant (nginx's workers, a registry's children)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = [pid], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        tree += children
        frontier = children
    return tree


def curl_into_new_file(port, path, file):
    """Seconds `curl -o` takes to download `path` into the new file `file`. The caller removes
    it once the paired run is done: pages just freed are written several times faster than new
    ones, and should help neither side."""
    seconds = subprocess.run(
        ["curl", "-sSf", "-o", str(file), "-w", "%{time_total}", f"http://127.0.0.1:{port}{path}"],
        check=True, capture_output=True, text=True).stdout
    return float(seconds)


def cpu_times(pids):
    """User and system CPU seconds of the processes `pids`."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def cpu_seconds(pids):
    return sum(cpu_times(pids))


def reset_peak_rss(pids):
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def peak_rss(pids):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * KIB
        except OSError:
            pass
    return total


# ---- the upstream and its content ------------------------------------------------------------

class Upstream:
    def __init__(self, procs, work, port):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = work / "registry.yml"
        config.write_text(f"""version: 0.1
log: {{level: warn, formatter: text}}
storage:
  filesystem: {{rootdirectory: {work / 'registry-data'}}}
http: {{addr: 127.0.0.1:{port}}}
""")
        self.proc = procs.start("upstream", ["docker-registry", "serve", str(config)])
        # Its access log (Apache combined, with the bytes of each response) goes to stdout.
        self.access_log = procs.logs / "upstream.out"
        if not wait_http(port, "/v2/"):
            sys.exit("the upstream registry did not start")

    def mark(self):
        return self.access_log.read_bytes().count(b"\n")

    def blob_bytes_since(self, mark, digest):
        """Body bytes the upstream sent for GETs of `digest` after `mark`."""
        time.sleep(0.3)  # a request is logged just after it is answered
        lines = self.access_log.read_text(errors="replace").splitlines()[mark:]
        total = 0
        for line in lines:
            m = re.search(r'"GET (\S+) HTTP/[\d.]+" \d+ (\d+)', line)
            if m and digest in m.group(1):
                total += int(m.group(2))
        return total


def send(port, method, path, headers=(), body=None):
    """A request with a body (bytes, or a file streamed with sendfile); the response, kept."""
    with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
        length = 0 if body is None else (len(body) if isinstance(body, bytes) else body.stat().st_size)
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
                 f"Content-Length: {length}", *[f"{k}: {v}" for k, v in headers]]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if isinstance(body, bytes):
            s.sendall(body)
        elif body is not None:
            with open(body, "rb") as f:
                s.sendfile(f)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, content = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in header_lines)}
    return int(status_line.split()[1]), headers, content


def push_blob(port, repo, path, digest):
    status, headers, _ = send(port, "POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202, (status, headers)
    location = re.sub(r"^https?://[^/]+", "", headers["location"])
    separator = "&" if "?" in location else "?"
    status, headers, body = send(port, "PUT", f"{location}{separator}digest={digest}",
                                 [("Content-Type", "application/octet-stream")], path)
    assert status == 201, (status, body[:200])


def seed(work, upstream, repo, layers):
    """Builds an image offline and pushes its layout's exact blobs through the registry API."""
    layout = work / "layouts" / repo.replace("/", "_")
    subprocess.run([sys.executable, str(MKIMAGE), str(layout), TAG, "--name", repo,
                    "--layers", layers, "--platform", "linux/amd64", "--uncompressed"],
                   check=True, stdout=subprocess.DEVNULL)
    top = json.loads((layout / "index.json").read_text())["manifests"][0]
    blobs = layout / "blobs" / "sha256"
    manifest_bytes = (blobs / top["digest"].split(":", 1)[1]).read_bytes()
    manifest = json.loads(manifest_bytes)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        push_blob(upstream.port, repo, blobs / descriptor["digest"].split(":", 1)[1],
                  descriptor["digest"])
    status, _, body = send(upstream.port, "PUT", f"/v2/{repo}/manifests/{TAG}",
                           [("Content-Type", top["mediaType"])], manifest_bytes)
    assert status == 201, (status, body[:200])
    return {
        "repo": repo,
        "digest": top["digest"],
        "layers": [(l["digest"], l["size"]) for l in manifest["layers"]],
        "layout": layout,
    }


def blob_file(image, digest):
    return image["layout"] / "blobs" / "sha256" / digest.split(":", 1)[1]


# ---- the mirrors -------------------------------------------------------------------------------

class Mirror:
    def __init__(self, name, port, proc):
        self.name, self.port, self.proc = name, port, proc

    def pids(self):
        return process_tree(self.proc.pid)


def start_wharf(procs, work, binary, name, port, upstream_url, max_size="100GiB", ca=None):
    """wharf with an empty cache; `ca`: a private CA the upstream's certificate is checked with."""
    cache = work / f"{name}-cache"
    config = work / f"{name}.toml"
    config.write_text(f"""[server]
listen = "127.0.0.1:{port}"
[cache]
dir = "{cache}"
max_size = "{max_size}"
[[upstream]]
name = "docker.io"
url = "{upstream_url}"
{f'ca_file = "{ca}"' if ca else ''}
""")
    proc = procs.start(name, [str(binary), "serve", "--config", str(config)])
    return Mirror(name, port, proc)


def start_distribution(procs, work, name, port, upstream_url, ca=None):
    """distribution's proxy with an empty store; `ca`: a private CA it trusts (Go reads
    SSL_CERT_FILE)."""
    config = work / f"{name}.yml"
    config.write_text(f"""version: 0.1
log: {{level: warn, formatter: text}}
storage:
  filesystem: {{rootdirectory: {work / (name + '-data')}}}
  cache: {{blobdescriptor: inmemory}}
http: {{addr: 127.0.0.1:{port}}}
proxy: {{remoteurl: "{upstream_url}"}}
""")
    env = {**os.environ, "SSL_CERT_FILE": str(ca)} if ca else None
    proc = procs.start(name, ["docker-registry", "serve", str(config)], env=env)
    return Mirror(name, port, proc)


NGINX_COMMON = """
daemon off;
master_process on;
user root;
worker_processes auto;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
events {{ worker_connections 4096; }}
"""


# Both nginx servers log every request (as wharf does), send files with sendfile, and keep
# connections open for wrk.
NGINX_HTTP_COMMON = """    access_log {work}/{name}-access.log;
    sendfile on;
    keepalive_requests 100000;
    client_body_temp_path {work}/{name}-body;
"""


def start_nginx_proxy(procs, work, name, port, upstream_port):
    """nginx as docker-registry-proxy configures it, over plain HTTP to the upstream."""
    config = work / f"{name}.conf"
    http_common = NGINX_HTTP_COMMON.format(work=work, name=name)
    config.write_text(NGINX_COMMON.format(work=work, name=name) + f"""
http {{
{http_common}    proxy_temp_path {work}/{name}-proxy-temp;
    proxy_cache_path {work}/{name}-cache levels=1:2 max_size=100g inactive=60d keys_zone=cache:10m use_temp_path=off;
    upstream registry {{ server 127.0.0.1:{upstream_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        chunked_transfer_encoding on;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_read_timeout 900;
        proxy_cache_lock on;
        proxy_cache_lock_timeout 880s;
        proxy_cache_valid 200 206 60d;
        proxy_force_ranges on;
        proxy_ignore_client_abort on;
        proxy_cache_revalidate on;
        proxy_hide_header Set-Cookie;
        proxy_ignore_headers X-Accel-Expires Expires Cache-Control Set-Cookie;
        location ~ ^/v2/(.*)/blobs/sha256:(.*) {{
            set $cache_key $2;
            proxy_pass http://registry;
            proxy_cache cache;
            proxy_cache_key $cache_key;
        }}
        location ~ ^/v2/(.*)/manifests/sha256:(.*) {{
            set $cache_key $uri;
            proxy_pass http://registry;
            proxy_cache cache;
            proxy_cache_key $cache_key;
        }}
        # ENABLE_MANIFEST_CACHE=true: tags cached by URI, here as long as wharf's tag_ttl.
        location ~ ^/v2/(.*)/manifests/ {{
            set $cache_key $uri;
            proxy_pass http://registry;
            proxy_cache cache;
            proxy_cache_key $cache_key;
            proxy_cache_valid 200 5m;
        }}
        location / {{
            proxy_pass http://registry;
            proxy_cache off;
        }}
    }}
}}
""")
    for d in ["body", "proxy-temp"]:
        (work / f"{name}-{d}").mkdir(exist_ok=True)
    proc = procs.start(name, ["nginx", "-c", str(config), "-p", str(work)])
    return Mirror(name, port, proc)


def start_nginx_static(procs, work, port, root):
    name = "static"
    config = work / f"{name}.conf"
    http_common = NGINX_HTTP_COMMON.format(work=work, name=name)
    config.write_text(NGINX_COMMON.format(work=work, name=name) + f"""
http {{
{http_common}    server {{
        listen 127.0.0.1:{port};
        location /blobs/ {{ root {root}; default_type application/octet-stream; }}
        location /manifests/ {{
            root {root};
            default_type application/vnd.oci.image.manifest.v1+json;
        }}
    }}
}}
""")
    (work / f"{name}-body").mkdir(exist_ok=True)
    proc = procs.start(name, ["nginx", "-c", str(config), "-p", str(work)])
    return Mirror(name, port, proc)


# ---- a throttling proxy, for the slow-upstream test ------------------------------------------

class Throttle:
    """A TCP proxy in a background thread that sends upstream bytes downstream at `rate` bytes/s
    per connection (None: as fast as they come), and counts them; with `cut_every`, it closes a
    connection once that many bytes went down it, as a WAN link that breaks does."""

    def __init__(self, port, upstream_port, rate, cut_every=None):
        self.port, self.upstream_port, self.rate = port, upstream_port, rate
        self.cut_every = cut_every
        self.sent = 0
        self.cuts = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _serve(self, client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pipe(client_r, up_w, False), self._pipe(up_r, client_w, True),
                             return_exceptions=True)

    async def _pipe(self, reader, writer, downstream):
        started, moved = time.monotonic(), 0
        try:
            while data := await reader.read(64 * KIB):
                if downstream and self.cut_every and moved + len(data) > self.cut_every:
                    data = data[:self.cut_every - moved]
                    writer.write(data)
                    self.sent += len(data)
                    self.cuts += 1
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
                if downstream:
                    self.sent += len(data)
                    moved += len(data)
                    ahead = moved / self.rate - (time.monotonic() - started) if self.rate else 0
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            writer.close()



# ---- measurements ------------------------------------------------------------------------------

def _client(barrier, out, i, port, path, timeout):
    barrier.wait()
    try:
        r = http_get(port, path, timeout=timeout)
        out.put((i, (r.status, r.length, r.ttfb, r.elapsed, r.finished_at)))
    except Exception as e:  # reported, not raised: one failed client must not hide the rest
        out.put((i, e))


def parallel_gets(n, port, path, timeout=900):
    """n GETs from n processes started together (processes, not threads: a client's time to first
    byte must not include waiting for another client's turn at the interpreter lock). A client
    that waits `timeout` seconds for a byte fails."""
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(barrier, out, i, port, path, timeout))
             for i in range(n)]
    for p in procs:
        p.start()
    results = [None] * n
    for _ in range(n):
        i, value = out.get()
        if isinstance(value, Exception):
            results[i] = value
        else:
            r = Response()
            r.status, r.length, r.ttfb, r.elapsed, r.finished_at = value
            results[i] = r
    for p in procs:
        p.join()
    return results


def blob_path(image, digest):
    return f"/v2/{image['repo']}/blobs/{digest}"


def first_byte(port, path):
    """Seconds from sending a GET to the first response byte; the body is not read."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        started = time.perf_counter()
        s.sendall(request.encode())
        s.recv(1)
        return time.perf_counter() - started


def fan_in(mirror, path, size, clients, upstream=None, digest=None, throttle=None):
    pids = mirror.pids()
    reset_peak_rss(pids)
    cpu0 = cpu_seconds(pids)
    mark = upstream.mark() if upstream else None
    sent0 = throttle.sent if throttle else None
    started = time.monotonic()
    results = parallel_gets(clients, mirror.port, path)
    wall = time.monotonic() - started
    failed = [r for r in results if isinstance(r, Exception) or r.status != 200 or r.length != size]
    if throttle:
        time.sleep(0.5)
        fetched = throttle.sent - sent0
    else:
        fetched = upstream.blob_bytes_since(mark, digest)
    ok = [r for r in results if r not in failed]
    finishes = sorted(r.finished_at - started for r in ok)
    return {
        "wall_s": wall,
        "slowest_ttfb_ms": max(r.ttfb for r in ok) * 1000 if ok else None,
        "amplification": fetched / size,
        "failed_clients": len(failed),
        "first_done_s": finishes[0] if finishes else None,
        "last_done_s": finishes[-1] if finishes else None,
        "peak_rss_mb": peak_rss(mirror.pids()) / 1e6,
        "cpu_s_per_gib": (cpu_seconds(mirror.pids()) - cpu0) / (size * clients / GIB),
    }


def wrk(port, path, seconds, accept=None):
    argv = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency"]
    if accept:
        argv += ["-H", f"Accept: {accept}"]
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}{path}"], capture_output=True,
                         text=True, check=True).stdout

    def latency(pct):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency(50),
        "p99_ms": latency(99),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def timed(argv):
    started = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


# ---- the run -------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wharf", required=True, type=Path, help="the wharf binary")
    parser.add_argument("--results", type=Path, default=Path("benches/results.jsonl"))
    parser.add_argument("--rounds", type=int, default=5, help="warm 1 GiB runs per mirror")
    parser.add_argument("--wrk-seconds", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--mirrors", default=",".join(MIRRORS),
                        help="a subset of wharf,distribution,nginx, for quicker iterations")
    parser.add_argument("--tests", default=",".join(TESTS),
                        help=f"a subset of {','.join(TESTS)}, for quicker iterations")
    args = parser.parse_args()
    args.mirrors = [m for m in MIRRORS if m in args.mirrors.split(",")]
    args.tests = set(args.tests.split(","))

    work = Path(tempfile.mkdtemp(prefix="wharf-bench-"))
    logs = work / "logs"
    logs.mkdir()
    procs = Processes(logs)
    results = []

    def record(metric, mirror, value, unit, **extra):
        results.append(dict(metric=metric, mirror=mirror, value=value, unit=unit, **extra))

    try:
        run(args, work, procs, record)
    finally:
        procs.stop_all()
        if args.keep:
            log(f"scratch directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    report(results)
    log(f"results written to {args.results}")


def run(args, work, procs, record):
    (up_port, wharf_port, dist_port, nginx_port, static_port, throttle_port,
     slow_wharf, slow_dist, slow_nginx) = free_ports(9)
    policy = work / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    upstream = Upstream(procs, work, up_port)

    log("seeding the upstream (1 GiB, 8 layers of 4-32 MiB, 1 MiB, 36 x 256 KiB, 64 MiB)")
    big = seed(work, upstream, "bench/big", "1G")
    seed(work, upstream, "bench/eight", "4M,8M,12M,16M,20M,24M,28M,32M")
    small = seed(work, upstream, "bench/small", "1M")
    ttfb = seed(work, upstream, "bench/ttfb", ",".join(["256K"] * TTFB_PAIRS * len(MIRRORS)))
    slow = seed(work, upstream, "bench/slow", "64M")
    big_digest, big_size = big["layers"][0]
    small_digest, small_size = small["layers"][0]

    static_root = work / "static"
    (static_root / "blobs").mkdir(parents=True)
    (static_root / "manifests").mkdir()
    os.link(blob_file(big, big_digest), static_root / "blobs" / "big")
    os.link(blob_file(small, small_digest), static_root / "blobs" / "small")
    manifest_body = http_get(up_port, f"/v2/bench/small/manifests/{TAG}", [("Accept", ACCEPT)],
                             keep_body=True).body
    (static_root / "manifests" / "small").write_bytes(manifest_body)

    starters = {
        "wharf": lambda: start_wharf(procs, work, args.wharf, "wharf", wharf_port, upstream.url),
        "distribution": lambda: start_distribution(procs, work, "distribution", dist_port,
                                                   upstream.url),
        "nginx": lambda: start_nginx_proxy(procs, work, "nginx", nginx_port, up_port),
    }
    mirrors = {name: starters[name]() for name in args.mirrors}
    static = start_nginx_static(procs, work, static_port, static_root)
    for m in [*mirrors.values(), static]:
        path = "/blobs/small" if m is static else "/v2/"
        if not wait_http(m.port, path):
            sys.exit(f"{m.name} did not start; see {procs.logs}")

    # 6. Time to first byte of a cold blob. Each mirror gets its own uncached layers; each is
    # asked directly from the upstream and then through the mirror, back to back, so both see
    # the upstream in the same state. The overhead is the median of the paired differences.
    ttfb_layers = [d for d, _ in ttfb["layers"]]
    for i, name in enumerate(mirrors if "ttfb" in args.tests else []):
        direct, through, overhead = [], [], []
        for d in ttfb_layers[i * TTFB_PAIRS:(i + 1) * TTFB_PAIRS]:
            direct.append(http_get(up_port, blob_path(ttfb, d)).ttfb * 1000)
            through.append(http_get(mirrors[name].port, blob_path(ttfb, d)).ttfb * 1000)
            overhead.append(through[-1] - direct[-1])
        record("cold_ttfb", name, statistics.median(through), "ms")
        record("cold_ttfb", "direct", statistics.median(direct), "ms", paired_with=name)
        record("cold_ttfb_overhead", name, statistics.median(overhead), "ms")

    # 4. Cold fan-in: 16 clients on the uncached 1 GiB blob (this also warms it for 1.).
    for name in mirrors if "fanin" in args.tests else []:
        # What any mirror must wait for before it can answer: the upstream's own first byte.
        direct = statistics.median(first_byte(up_port, blob_path(big, big_digest)) for _ in range(3))
        record("fanin_upstream_ttfb", name, direct * 1000, "ms")
        log(f"cold fan-in, 16 x 1 GiB: {name}")
        r = fan_in(mirrors[name], blob_path(big, big_digest), big_size, 16, upstream, big_digest)
        record("fanin_wall", name, r["wall_s"], "s", failed_clients=r["failed_clients"])
        record("fanin_slowest_ttfb", name, r["slowest_ttfb_ms"], "ms")
        record("fanin_amplification", name, r["amplification"], "x")
        record("fanin_peak_rss", name, r["peak_rss_mb"], "MB")
        record("fanin_cpu_per_gib", name, r["cpu_s_per_gib"], "s/GiB")

    # 1. Warm 1 GiB single stream, mirrors alternating round by round.
    everyone = [*mirrors, "static"]
    servers = {**mirrors, "static": static}
    if "fanin" not in args.tests:
        for name in mirrors:  # the fan-in would have warmed it
            http_get(mirrors[name].port, blob_path(big, big_digest))
    for m in servers.values():
        reset_peak_rss(m.pids())
    cpu0 = {n: cpu_seconds(servers[n].pids()) for n in everyone}
    speeds = {n: [] for n in everyone}
    for round_ in range(args.rounds if "warm" in args.tests else 0):
        order = everyone[round_ % len(everyone):] + everyone[:round_ % len(everyone)]
        for name in order:
            path = "/blobs/big" if name == "static" else blob_path(big, big_digest)
            r = http_get(servers[name].port, path)
            assert r.status == 200 and r.length == big_size, (name, r.status, r.length)
            speeds[name].append(big_size / r.elapsed)
    for name in everyone if "warm" in args.tests else []:
        record("warm_1g_median", name, statistics.median(speeds[name]) / 1e9, "GB/s",
               runs=[round(s / 1e9, 3) for s in speeds[name]])
        record("warm_1g_best", name, max(speeds[name]) / 1e9, "GB/s")
        record("warm_1g_peak_rss", name, peak_rss(servers[name].pids()) / 1e6, "MB")
        cpu = cpu_seconds(servers[name].pids()) - cpu0[name]
        record("warm_1g_cpu_per_gib", name, cpu / (args.rounds * big_size / GIB), "s/GiB")

    # 2. and 3. Warm manifests (by tag and by digest) and warm 1 MiB blobs, with wrk.
    for name in everyone if "wrk" in args.tests else []:
        port = servers[name].port
        if name == "static":
            cases = [("manifest_by_tag", "/manifests/small"), ("blob_1m", "/blobs/small")]
        else:
            tag_path = f"/v2/bench/small/manifests/{TAG}"
            digest_path = f"/v2/bench/small/manifests/{small['digest']}"
            small_blob = blob_path(small, small_digest)
            for p in [tag_path, digest_path, small_blob]:  # warm them
                http_get(port, p, [("Accept", ACCEPT)])
            cases = [("manifest_by_tag", tag_path), ("manifest_by_digest", digest_path),
                     ("blob_1m", small_blob)]
        for metric, path in cases:
            log(f"wrk {metric}: {name}")
            r = wrk(port, path, args.wrk_seconds, ACCEPT)
            record(f"{metric}_rps", name, r["rps"], "req/s", non_2xx=r["non_2xx"])
            record(f"{metric}_p50", name, r["p50_ms"], "ms")
            record(f"{metric}_p99", name, r["p99_ms"], "ms")

    # 7. Cold and warm skopeo copy of the 8-layer image.
    for name in ["direct", *mirrors] if "skopeo" in args.tests else []:
        port = up_port if name == "direct" else mirrors[name].port
        for temperature in ["cold", "warm"]:
            dest = work / f"skopeo-{name}-{temperature}"
            seconds = timed(["skopeo", "copy", "-q", "--policy", str(policy), "--src-tls-verify=false",
                             f"docker://127.0.0.1:{port}/bench/eight:{TAG}", f"dir:{dest}"])
            record(f"skopeo_{temperature}", name, seconds, "s")
            shutil.rmtree(dest, ignore_errors=True)
            if name == "direct":
                break

    cold_paths(args, work, procs, record, upstream, mirrors, big, slow)

    # 5. Slow upstream: ~8 MiB/s per connection, 8 clients on one uncached 64 MiB blob, each
    # mirror a fresh instance behind the throttle.
    if "slow" not in args.tests:
        return
    throttle = Throttle(throttle_port, up_port, 8 * MIB)
    slow_url = f"http://127.0.0.1:{throttle_port}"
    slow_starters = {
        "wharf": lambda: start_wharf(procs, work, args.wharf, "wharf-slow", slow_wharf, slow_url),
        "distribution": lambda: start_distribution(procs, work, "distribution-slow", slow_dist,
                                                   slow_url),
        "nginx": lambda: start_nginx_proxy(procs, work, "nginx-slow", slow_nginx, throttle_port),
    }
    slow_mirrors = {name: slow_starters[name]() for name in mirrors}
    slow_digest, slow_size = slow["layers"][0]
    for name in slow_mirrors:
        m = slow_mirrors[name]
        if not wait_http(m.port, "/v2/"):
            sys.exit(f"{m.name} did not start")
        log(f"slow-upstream fan-in, 8 x 64 MiB at 8 MiB/s: {name}")
        r = fan_in(m, blob_path(slow, slow_digest), slow_size, 8, throttle=throttle)
        record("slow_amplification", name, r["amplification"], "x", failed_clients=r["failed_clients"])
        record("slow_finish_spread", name, r["last_done_s"] / r["first_done_s"], "x",
               first_s=r["first_done_s"], last_s=r["last_done_s"])
        procs.stop(m.proc)


def behind(procs, work, names, args, tag, throttle):
    """Fresh instances of the mirrors `names` (empty caches) whose upstream is `throttle`."""
    starters = {
        "wharf": lambda port: start_wharf(procs, work, args.wharf, f"wharf-{tag}", port,
                                          f"http://127.0.0.1:{throttle.port}"),
        "distribution": lambda port: start_distribution(procs, work, f"distribution-{tag}", port,
                                                        f"http://127.0.0.1:{throttle.port}"),
        "nginx": lambda port: start_nginx_proxy(procs, work, f"nginx-{tag}", port, throttle.port),
    }
    started = {name: starters[name](port) for name, port in zip(names, free_ports(len(names)))}
    for m in started.values():
        if not wait_http(m.port, "/v2/"):
            sys.exit(f"{m.name} did not start; see {procs.logs}")
    return started


def settled_upstream(throttle, timeout=300):
    """The throttle's byte count once it has stopped moving for a second (a mirror's fill may go
    on after the client is done)."""
    deadline = time.monotonic() + timeout
    last = throttle.sent
    while time.monotonic() < deadline:
        time.sleep(1)
        if throttle.sent == last:
            return last
        last = throttle.sent
    return last


def lazy_pull(port, path, size, reads=2 + LAZY_READS):
    """What stargz-snapshotter does on a cold layer: the last 50,000-byte chunk (the footer), the
    TOC before it, then scattered file chunks, one Range GET each (the first `reads` of these).
    The footer's first byte, the whole sequence's time, and the statuses."""
    footer = size - (size % LAZY_CHUNK or LAZY_CHUNK)
    toc = max(0, footer - MIB)
    chunks = [(footer, size), (toc, footer)]
    chunks += [((size * (k + 1)) // (LAZY_READS + 2), (size * (k + 1)) // (LAZY_READS + 2) + 256 * KIB)
              for k in range(LAZY_READS)]
    started = time.perf_counter()
    statuses, footer_ttfb = [], None
    for start, end in chunks[:reads]:
        r = http_get(port, path, [("Range", f"bytes={start}-{end - 1}")])
        footer_ttfb = r.ttfb if footer_ttfb is None else footer_ttfb
        statuses.append(r.status)
    return footer_ttfb, time.perf_counter() - started, statuses


def cold_paths(args, work, procs, record, upstream, mirrors, big, slow):
    """The cold-path rows: a single cold stream from a fast upstream, a lazy pull, a fill whose
    upstream connection breaks, and a segmented fill from a per-connection-limited upstream."""
    # 8. Cold single stream from the local registry, fresh 256 MiB blobs for every mirror. A
    # mirror stores what it streams, and on these machines writing pages new to the page cache
    # is what limits a cold stream: each blob is downloaded directly into a new file (the store
    # ceiling) and, in the same minute, through the mirror, which of the two goes first
    # alternating (whichever writes first gets the pages the kernel freed last, which are
    # written faster); the mirror's user and system CPU per GiB apart.
    if "cold" in args.tests:
        log(f"seeding {COLD_BLOBS} x 256 MiB per mirror")
        cold = seed(work, upstream, "bench/cold", ",".join(["256M"] * COLD_BLOBS * len(mirrors)))
        for i, name in enumerate(mirrors):
            m = mirrors[name]
            direct, through, user, system, size = [], [], 0.0, 0.0, 0

            def store_direct(path):
                stored = work / f"direct-{name}-{len(direct)}"
                direct.append(size / curl_into_new_file(upstream.port, path, stored))

            def fill(path):
                nonlocal user, system
                cpu0 = cpu_times(m.pids())
                r = http_get(m.port, path)
                assert r.status == 200 and r.length == size, (name, r.status, r.length)
                through.append(size / r.elapsed)
                time.sleep(0.5)  # the fill's commit comes just after the last byte
                cpu1 = cpu_times(m.pids())
                user += cpu1[0] - cpu0[0]
                system += cpu1[1] - cpu0[1]

            for k, (d, size) in enumerate(cold["layers"][i * COLD_BLOBS:(i + 1) * COLD_BLOBS]):
                path = blob_path(cold, d)
                for run_one in ([store_direct, fill] if k % 2 == 0 else [fill, store_direct]):
                    run_one(path)
            for stored in work.glob(f"direct-{name}-*"):
                stored.unlink()
            gib = COLD_BLOBS * size / GIB
            record("cold_256m", name, statistics.median(through) / 1e6, "MB/s",
                   runs=[round(x / 1e6) for x in through])
            record("cold_256m", "direct", statistics.median(direct) / 1e6, "MB/s",
                   paired_with=name, into="a new file, curl -o",
                   runs=[round(x / 1e6) for x in direct])
            record("cold_256m_ratio", name, statistics.median(through) / statistics.median(direct),
                   "x")
            # Each pair ran in the same minute, in the same state of the page cache.
            record("cold_256m_paired_ratio", name,
                   statistics.median(t / d for t, d in zip(through, direct)), "x")
            record("cold_user_cpu_per_gib", name, user / gib, "s/GiB")
            record("cold_system_cpu_per_gib", name, system / gib, "s/GiB")

    # 9. Lazy pull, cold, from an upstream limited to 16 MiB/s per connection (each range asked
    # directly gets its own 16 MiB/s). 64 MiB for every mirror, 1 GiB for wharf (the others fetch
    # the whole blob before they answer a range: minutes per read at this rate).
    if "lazy" in args.tests:
        throttle = Throttle(free_ports(1)[0], upstream.port, 16 * MIB)
        for blob, label, names in [(slow, "64m", list(mirrors)),
                                   (big, "1g", [n for n in mirrors if n == "wharf"])]:
            digest, size = blob["layers"][0]
            path = blob_path(blob, digest)
            fresh = behind(procs, work, names, args, f"lazy-{label}", throttle)
            for name in ["direct", *names]:
                port = throttle.port if name == "direct" else fresh[name].port
                log(f"lazy pull of a cold {label} blob at 16 MiB/s: {name}")
                sent0 = throttle.sent
                ttfb, seconds, statuses = lazy_pull(port, path, size)
                record(f"lazy_{label}_footer_ttfb", name, ttfb * 1000, "ms")
                record(f"lazy_{label}_sequence", name, seconds, "s", statuses=statuses)
                record(f"lazy_{label}_upstream", name, (settled_upstream(throttle) - sent0) / size,
                       "x")
            for m in fresh.values():
                procs.stop(m.proc)
            # One footer is one sample of a few milliseconds: the overhead is the median of
            # LAZY_FOOTERS pairs, each a direct footer then one through a fresh wharf.
            if "wharf" in names:
                overheads = []
                for k in range(LAZY_FOOTERS):
                    tag = f"lazy-{label}-footer-{k}"
                    direct = lazy_pull(throttle.port, path, size, reads=1)[0]
                    m = behind(procs, work, ["wharf"], args, tag, throttle)["wharf"]
                    through = lazy_pull(m.port, path, size, reads=1)[0]
                    procs.stop(m.proc)
                    shutil.rmtree(work / f"wharf-{tag}-cache", ignore_errors=True)
                    overheads.append((through - direct) * 1000)
                record(f"lazy_{label}_footer_overhead", "wharf", statistics.median(overheads),
                       "ms", runs=[round(x, 2) for x in overheads])

    # 10. Resume: 4 clients on a cold 1 GiB blob whose upstream connection is cut every
    # 128 MiB. Direct, each client would fail at the first cut. A client that gets no byte for
    # a minute counts as failed.
    if "resume" in args.tests:
        throttle = Throttle(free_ports(1)[0], upstream.port, None, cut_every=128 * MIB)
        digest, size = big["layers"][0]
        fresh = behind(procs, work, list(mirrors), args, "resume", throttle)
        for name, m in fresh.items():
            log(f"resume: 4 x 1 GiB, the upstream connection cut every 128 MiB: {name}")
            sent0 = throttle.sent
            # nginx's waiters sit on its cache lock (880 s) after the one fetching is cut.
            results = parallel_gets(4, m.port, blob_path(big, digest), timeout=60)
            ok = sum(1 for r in results if not isinstance(r, Exception)
                     and r.status == 200 and r.length == size)
            record("resume_complete_clients", name, ok, "of 4")
            record("resume_upstream", name, (settled_upstream(throttle) - sent0) / size, "x")
            procs.stop(m.proc)

    # 11. Segmented fill: one client, a cold 256 MiB blob, the upstream limited to 8 MiB/s per
    # connection (as registries' CDNs limit each one).
    if "segments" in args.tests and "wharf" in mirrors:
        seg = seed(work, upstream, "bench/segments", "256M")
        digest, size = seg["layers"][0]
        path = blob_path(seg, digest)
        throttle = Throttle(free_ports(1)[0], upstream.port, 8 * MIB)
        log("segmented fill, 256 MiB at 8 MiB/s per connection: direct")
        direct = http_get(throttle.port, path)
        fresh = behind(procs, work, ["wharf"], args, "segments", throttle)["wharf"]
        reset_peak_rss(fresh.pids())
        sent0 = throttle.sent
        log("segmented fill, 256 MiB at 8 MiB/s per connection: wharf")
        through = http_get(fresh.port, path)
        assert through.status == 200 and through.length == size
        record("segments_256m", "direct", direct.elapsed, "s")
        record("segments_256m", "wharf", through.elapsed, "s")
        record("segments_speedup", "wharf", direct.elapsed / through.elapsed, "x")
        record("segments_upstream", "wharf", (settled_upstream(throttle) - sent0) / size, "x")
        record("segments_peak_rss", "wharf", peak_rss(fresh.pids()) / 1e6, "MB")
        procs.stop(fresh.proc)


# ---- the report ----------------------------------------------------------------------------------

# metric, label, whether higher is better
ROWS = [
    ("warm_1g_median", "warm 1 GiB GET, median (GB/s)", True),
    ("warm_1g_best", "warm 1 GiB GET, best (GB/s)", True),
    ("manifest_by_tag_rps", "warm manifest by tag (req/s)", True),
    ("manifest_by_tag_p50", "  p50 (ms)", False),
    ("manifest_by_tag_p99", "  p99 (ms)", False),
    ("manifest_by_digest_rps", "warm manifest by digest (req/s)", True),
    ("manifest_by_digest_p50", "  p50 (ms)", False),
    ("manifest_by_digest_p99", "  p99 (ms)", False),
    ("blob_1m_rps", "warm 1 MiB blob (req/s)", True),
    ("blob_1m_p99", "  p99 (ms)", False),
    ("fanin_wall", "cold fan-in 16 x 1 GiB, wall (s)", False),
    ("fanin_slowest_ttfb", "  slowest first byte (ms)", False),
    ("fanin_upstream_ttfb", "  (the upstream's own first byte, ms)", False),
    ("fanin_amplification", "  upstream amplification (x)", False),
    ("slow_amplification", "slow upstream 8 x 64 MiB, amplification (x)", False),
    ("slow_finish_spread", "  last / first client done (x)", False),
    ("cold_ttfb", "cold blob time to first byte (ms)", False),
    ("cold_256m", "cold 256 MiB single stream, fast upstream (MB/s; direct: into a new file)", True),
    ("cold_256m_ratio", "  through / store ceiling (x)", True),
    ("cold_256m_paired_ratio", "  through / store ceiling, paired median (x)", True),
    ("cold_user_cpu_per_gib", "  mirror user CPU per GiB (s)", False),
    ("cold_system_cpu_per_gib", "  mirror system CPU per GiB (s)", False),
    ("lazy_64m_footer_ttfb", "lazy pull 64 MiB at 16 MiB/s: footer first byte (ms)", False),
    ("lazy_64m_footer_overhead", "  footer overhead over direct, median of 5 pairs (ms)", False),
    ("lazy_64m_sequence", "  footer, TOC, 8 chunks (s)", False),
    ("lazy_64m_upstream", "  upstream bytes / blob (x)", False),
    ("lazy_1g_footer_ttfb", "lazy pull 1 GiB at 16 MiB/s: footer first byte (ms)", False),
    ("lazy_1g_footer_overhead", "  footer overhead over direct, median of 5 pairs (ms)", False),
    ("lazy_1g_sequence", "  footer, TOC, 8 chunks (s)", False),
    ("lazy_1g_upstream", "  upstream bytes / blob (x)", False),
    ("resume_complete_clients", "resume: 4 x 1 GiB cut every 128 MiB, clients complete", True),
    ("resume_upstream", "  upstream bytes / blob (x)", False),
    ("segments_256m", "segmented fill 256 MiB at 8 MiB/s per connection (s)", False),
    ("segments_speedup", "  direct / through (x)", True),
    ("segments_upstream", "  upstream bytes / blob (x)", False),
    ("segments_peak_rss", "  peak RSS (MB)", False),
    ("cold_ttfb_overhead", "  overhead over direct, paired median (ms)", False),
    ("skopeo_cold", "skopeo copy 8 layers, cold (s)", False),
    ("skopeo_warm", "skopeo copy 8 layers, warm (s)", False),
    ("warm_1g_peak_rss", "peak RSS during warm GETs (MB)", False),
    ("fanin_peak_rss", "peak RSS during fan-in (MB)", False),
    ("warm_1g_cpu_per_gib", "CPU per GiB, warm GETs (s)", False),
    ("fanin_cpu_per_gib", "CPU per GiB, fan-in (s)", False),
]


def report(results):
    by = {(r["metric"], r["mirror"]): r["value"] for r in results}
    columns = ["wharf", "distribution", "nginx", "static", "direct"]

    def cell(v):
        if v is None:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"

    header = f"{'':46}" + "".join(f"{c:>13}" for c in columns) + f"{'wharf/dist':>12}{'wharf/nginx':>12}"
    print(header)
    for metric, label, _higher in ROWS:
        values = [by.get((metric, c)) for c in columns]
        if all(v is None for v in values):
            continue
        ratios = []
        for peer in ["distribution", "nginx"]:
            w, p = by.get((metric, "wharf")), by.get((metric, peer))
            ratios.append(f"{w / p:.2f}" if w is not None and p else "-")
        print(f"{label:46}" + "".join(f"{cell(v):>13}" for v in values) +
              "".join(f"{r:>12}" for r in ratios))


if __name__ == "__main__":
    main()
