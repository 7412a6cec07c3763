#!/usr/bin/env python3
"""Warm requests beside a thousand cold fills that wait on a stalled upstream.

Starts a fake upstream of its own (answers every cold blob's GET with its headers, then sends
nothing), a wharf with client authentication (bcrypt users from `htpasswd -B`) in front of it,
caches one warm blob, then measures, first on an idle wharf and then with 1,000 cold GETs held
open: the time to first byte of warm blob GETs (by a token, no bcrypt) and of requests by users
whose password wharf has not checked yet (one bcrypt check each, on a blocking thread).

    python3 benches/pressure.py --wharf target/release/wharf [--cold 1000]

Needs `htpasswd` (apache2-utils). Prints one line per row and writes JSON lines to --results.
"""

import argparse
import asyncio
import hashlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARM_GETS = 200
LOGINS = 10
TOKEN = "bench-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StalledUpstream:
    """Serves `warm` whole; answers any other blob's GET with headers and then nothing."""

    def __init__(self, warm_digest, warm):
        self.warm_digest, self.warm = warm_digest, warm
        self.stalled = 0

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if "/blobs/" not in path:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                elif path.endswith(self.warm_digest):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.warm))
                    writer.write(self.warm)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
                    await writer.drain()
                    self.stalled += 1
                    await asyncio.Event().wait()  # never sends the body
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


async def first_byte(port, path, auth):
    """Seconds from sending a GET to its first response byte; the body is read to its end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: wharf\r\nAuthorization: {auth}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    await reader.readexactly(1)
    ttfb = time.perf_counter() - started
    rest = await reader.read()
    writer.close()
    status = (b"H" + rest).split(b" ", 2)[1]
    assert status == b"200", (path, status)
    return ttfb


def basic(user, password):
    import base64
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def within(limit, request):
    """The first-byte time of `request`, or infinity past `limit` seconds."""
    try:
        return await asyncio.wait_for(request, limit)
    except asyncio.TimeoutError:
        return float("inf")


async def measure(port, warm_path, users):
    warm = [await within(10, first_byte(port, warm_path, basic("ci", TOKEN)))
            for _ in range(WARM_GETS)]
    logins = [await within(10, first_byte(port, warm_path, basic(user, "pw-" + user)))
              for user in users]
    return warm, logins


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args, work):
    warm = os.urandom(64 * 1024)
    warm_digest = "sha256:" + hashlib.sha256(warm).hexdigest()
    upstream = StalledUpstream(warm_digest, warm)
    up_port = free_port()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", up_port, backlog=4096)

    users = [f"u{n}" for n in range(2 * LOGINS)]
    htpasswd = work / "htpasswd"
    for n, user in enumerate(users):
        subprocess.run(["htpasswd", "-B", "-b"] + (["-c"] if n == 0 else [])
                       + [str(htpasswd), user, "pw-" + user], check=True, capture_output=True)
    tokens = work / "tokens"
    tokens.write_text(f"sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()} ci\n")
    port = free_port()
    config = work / "mirror.toml"
    config.write_text(f"""[server]
listen = "127.0.0.1:{port}"
[server.limits]
max_connections = 8192
[server.auth]
htpasswd = "{htpasswd}"
tokens = "{tokens}"
[cache]
dir = "{work / 'cache'}"
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:{up_port}"
""")
    wharf = subprocess.Popen([str(args.wharf), "serve", "--config", str(config)],
                             stderr=open(work / "wharf.log", "wb"))
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        warm_path = f"/v2/library/x/blobs/{warm_digest}"
        await first_byte(port, warm_path, basic("ci", TOKEN))  # cached from here on
        await asyncio.sleep(0.5)
        idle = await measure(port, warm_path, users[:LOGINS])

        held = []
        for n in range(args.cold):
            digest = "sha256:" + hashlib.sha256(b"cold %d" % n).hexdigest()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /v2/library/x/blobs/{digest} HTTP/1.1\r\nHost: wharf\r\n"
                         f"Authorization: {basic('ci', TOKEN)}\r\n\r\n".encode())
            held.append(writer)
        await asyncio.gather(*(w.drain() for w in held))
        deadline = time.monotonic() + 60
        while upstream.stalled < min(args.cold, 128) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # the rest wait for a place under max_fetches
        stalled = upstream.stalled
        loaded = await measure(port, warm_path, users[LOGINS:])
        for w in held:
            w.close()
        return idle, loaded, stalled
    finally:
        wharf.terminate()
        wharf.wait()
        server.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wharf", required=True, type=Path)
    parser.add_argument("--cold", type=int, default=1000)
    parser.add_argument("--results", type=Path, default=Path("benches/pressure.jsonl"))
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="wharf-pressure-") as work:
        idle, loaded, stalled = asyncio.run(run(args, Path(work)))
    rows = []
    for label, (warm, logins) in [("idle", idle), (f"beside {args.cold} cold fills", loaded)]:
        row = {
            "load": label,
            "warm_p50_ms": statistics.median(warm) * 1000,
            "warm_p99_ms": percentile(warm, 0.99) * 1000,
            "login_p50_ms": statistics.median(logins) * 1000,
            "login_max_ms": max(logins) * 1000,
        }
        rows.append(row)
        print(f"{label:>24}: warm GET first byte p50 {row['warm_p50_ms']:.2f} ms, "
              f"p99 {row['warm_p99_ms']:.2f} ms; bcrypt login p50 {row['login_p50_ms']:.1f} ms, "
              f"max {row['login_max_ms']:.1f} ms")
    print(f"(upstream GETs stalled when the loaded rows began: {stalled})")
    with open(args.results, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
